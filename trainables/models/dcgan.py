"""DCGAN (Radford et al. 2016) as used by S1 (one unconditional DCGAN per class, 64x64x1)
and S4 (128x128, minority class only, upsampling + conv generator).

Variant "s1": G = z -> (1x1 -> base x base transposed conv, i.e. the "FC" layer) -> transposed
convs k4 s2, BN + ReLU except the tanh output, no biases; D = strided convs k4 s2, BN except
on the first, LeakyReLU(0.2), dropout after every conv but the second (p is not given in S1:
0.25 is a guess), final conv to one logit.  At 64 px and width 1 this is exactly S1's
3,574,656 / 2,763,520 parameters.
Variant "s4": G starts at 8x8 and doubles with nearest upsampling + conv k3 + BN (a guess) +
LeakyReLU(0.2), i.e. four conv layers at 128 px as S4 states; D = four stride-2 convs with
LeakyReLU and a final logit, no BN and no dropout (S4 names none).

`PerClassGenerator` / `PerClassDiscriminator` hold one network per trained class and route
each sample by its label, so a per-class DCGAN offers the same `G(z, labels)` call as the
conditional families.
"""
from __future__ import annotations

import math
from typing import Sequence

import torch
from torch import nn

from trainables.models.init import center_crop, init_normal_, scaled

DCGAN_VARIANTS = ("s1", "s4")
_BASE = {"s1": 4, "s4": 8}


def _stages(resolution: int, base: int) -> tuple[int, int]:
    """(number of doublings, base side) reaching at least `resolution` from about `base`."""
    if resolution < 2 * base:
        raise ValueError(f"DCGAN resolution {resolution} is below the minimum {2 * base}")
    n = int(math.floor(math.log2(resolution / base)))
    return n, math.ceil(resolution / 2 ** n)


class DCGANGenerator(nn.Module):
    """Unconditional G(z) -> images in [-1, 1]."""

    def __init__(self, *, resolution: int = 64, channels: int = 1, latent_dim: int = 100,
                 width: float = 1.0, variant: str = "s1"):
        super().__init__()
        if variant not in DCGAN_VARIANTS:
            raise ValueError(f"unknown DCGAN variant {variant!r}; choose one of {DCGAN_VARIANTS}")
        self.latent_dim, self.resolution = latent_dim, resolution
        n, base = _stages(resolution, _BASE[variant])
        chans = [scaled(64, width) * 2 ** (n - 1 - i) for i in range(n)] + [channels]
        act = (lambda: nn.ReLU(True)) if variant == "s1" else (lambda: nn.LeakyReLU(0.2, True))
        layers: list[nn.Module] = [nn.ConvTranspose2d(latent_dim, chans[0], base, 1, 0, bias=False),
                                   nn.BatchNorm2d(chans[0]), act()]
        for i in range(n):
            last = i == n - 1
            if variant == "s1":
                layers.append(nn.ConvTranspose2d(chans[i], chans[i + 1], 4, 2, 1, bias=False))
            else:
                layers += [nn.Upsample(scale_factor=2, mode="nearest"),
                           nn.Conv2d(chans[i], chans[i + 1], 3, 1, 1, bias=last)]
            if not last:
                layers += [nn.BatchNorm2d(chans[i + 1]), act()]
        layers.append(nn.Tanh())
        self.body = nn.Sequential(*layers)
        init_normal_(self)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return center_crop(self.body(z[:, :, None, None]), self.resolution)


class DCGANDiscriminator(nn.Module):
    """Unconditional D(x) -> real/fake logit (N,)."""

    def __init__(self, *, resolution: int = 64, channels: int = 1, width: float = 1.0,
                 variant: str = "s1", dropout: float = 0.25):
        super().__init__()
        if variant not in DCGAN_VARIANTS:
            raise ValueError(f"unknown DCGAN variant {variant!r}; choose one of {DCGAN_VARIANTS}")
        n, _ = _stages(resolution, _BASE[variant])
        s1 = variant == "s1"
        layers: list[nn.Module] = []
        c_in, side = channels, resolution
        for i in range(n):
            c = scaled(64, width) * 2 ** i
            layers.append(nn.Conv2d(c_in, c, 4, 2, 1, bias=not s1))
            if s1 and i > 0:
                layers.append(nn.BatchNorm2d(c))
            layers.append(nn.LeakyReLU(0.2, True))
            if s1 and i != 1:
                layers.append(nn.Dropout(dropout))
            c_in, side = c, side // 2
        # The output "FC" is a conv covering the whole remaining map (S1: 512x4x4 -> 1).
        layers.append(nn.Conv2d(c_in, 1, side, 1, 0, bias=not s1))
        self.body = nn.Sequential(*layers)
        init_normal_(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x).flatten(1).squeeze(1)


def _route(nets: nn.ModuleList, class_indices: Sequence[int], class_names: Sequence[str] | None,
           labels: torch.Tensor, inputs: torch.Tensor) -> torch.Tensor:
    """Apply nets[k] to the samples whose label is class_indices[k]; output in input order."""
    known = torch.tensor(list(class_indices), device=labels.device)
    unknown = labels[~torch.isin(labels, known)]
    if unknown.numel():
        bad = int(unknown[0])
        name = f" ({class_names[bad]!r})" if class_names and 0 <= bad < len(class_names) else ""
        raise ValueError(f"this per-class DCGAN has no network for class {bad}{name}; it was "
                         f"trained on classes {list(class_indices)} only (see dcgan_classes)")
    out = None
    for net, c in zip(nets, class_indices):
        idx = (labels == c).nonzero(as_tuple=True)[0]
        if idx.numel() == 0:
            continue
        y = net(inputs[idx])
        if out is None:
            out = y.new_zeros((inputs.shape[0],) + tuple(y.shape[1:]))
        out = out.index_copy(0, idx, y)  # out of place: keeps autograd happy
    if out is None:
        raise ValueError("empty batch given to a per-class DCGAN")
    return out


class PerClassGenerator(nn.Module):
    """One DCGAN generator per trained class: G(z, labels) routes each label to its own G."""

    def __init__(self, class_indices: Sequence[int], class_names: Sequence[str] | None = None, *,
                 resolution: int = 64, channels: int = 1, latent_dim: int = 100,
                 width: float = 1.0, variant: str = "s1"):
        super().__init__()
        if not class_indices:
            raise ValueError("a per-class DCGAN needs at least one class to train")
        self.class_indices = tuple(int(c) for c in class_indices)
        self.class_names = tuple(class_names) if class_names else None
        self.latent_dim = latent_dim
        self.nets = nn.ModuleList(
            DCGANGenerator(resolution=resolution, channels=channels, latent_dim=latent_dim,
                           width=width, variant=variant) for _ in self.class_indices)

    def forward(self, z: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        return _route(self.nets, self.class_indices, self.class_names, labels, z)


class PerClassDiscriminator(nn.Module):
    """One DCGAN discriminator per trained class: D(x, labels) -> (logit, None)."""

    def __init__(self, class_indices: Sequence[int], class_names: Sequence[str] | None = None, *,
                 resolution: int = 64, channels: int = 1, width: float = 1.0,
                 variant: str = "s1"):
        super().__init__()
        self.class_indices = tuple(int(c) for c in class_indices)
        self.class_names = tuple(class_names) if class_names else None
        self.nets = nn.ModuleList(
            DCGANDiscriminator(resolution=resolution, channels=channels, width=width,
                               variant=variant) for _ in self.class_indices)

    def forward(self, x: torch.Tensor, labels: torch.Tensor):
        return _route(self.nets, self.class_indices, self.class_names, labels, x), None
