"""DCGAN (Radford et al. 2016) as used by S1 (one unconditional DCGAN per class, 64x64x1)
and S4 (128x128x3, the minority class only; its authors' `DCGAN.py`).

Variant "s1": G = z -> (1x1 -> base x base transposed conv, i.e. the "FC" layer) -> transposed
convs k4 s2, BN + ReLU except the tanh output, no biases; D = strided convs k4 s2, BN except
on the first, LeakyReLU(0.2), dropout after every conv but the second (p is not given in S1:
0.25 is a guess), final conv to one logit.  At 64 px and width 1 this is exactly S1's
3,574,656 / 2,763,520 parameters.
Variant "s4" (korasagar/DCGAN-ChestXray `DCGAN.py`, Keras): G = Dense(z -> 8x8x1024) +
LeakyReLU(0.2), transposed convs k4 s2 to 512, 256, 128, 64 channels each + LeakyReLU(0.2),
conv k5 to the image channels, tanh; D = conv k5 64 (stride 1), convs k5 stride 2 to 128,
256, 512, 1024, each + LeakyReLU(0.2), flatten, dropout 0.4, dense -> one logit.  No
BatchNorm anywhere; Keras' default Glorot-uniform weights and zero biases.  At 128x128x3 and
width 1: G 17,766,019 and D 17,480,321 parameters, as the Keras models.  Other resolutions
keep the 8x8 start and drop/add doublings (the last channel counts are kept).

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


def _check_variant(variant: str) -> None:
    if variant not in DCGAN_VARIANTS:
        raise ValueError(f"unknown DCGAN variant {variant!r}; choose one of {DCGAN_VARIANTS}")


def _glorot_(module: nn.Module) -> nn.Module:
    """Keras' defaults (S4's code): Glorot-uniform weights, zero biases."""
    for m in module.modules():
        if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d, nn.Linear)):
            nn.init.xavier_uniform_(m.weight)
            nn.init.zeros_(m.bias)
    return module


def _s1_generator(resolution: int, channels: int, latent_dim: int, width: float) -> nn.Sequential:
    n, base = _stages(resolution, _BASE["s1"])
    chans = [scaled(64, width) * 2 ** (n - 1 - i) for i in range(n)] + [channels]
    layers: list[nn.Module] = [nn.ConvTranspose2d(latent_dim, chans[0], base, 1, 0, bias=False),
                               nn.BatchNorm2d(chans[0]), nn.ReLU(True)]
    for i in range(n):
        layers.append(nn.ConvTranspose2d(chans[i], chans[i + 1], 4, 2, 1, bias=False))
        if i < n - 1:
            layers += [nn.BatchNorm2d(chans[i + 1]), nn.ReLU(True)]
    return init_normal_(nn.Sequential(*layers, nn.Tanh()))


def _s4_generator(resolution: int, channels: int, latent_dim: int, width: float) -> nn.Sequential:
    n, base = _stages(resolution, _BASE["s4"])
    c0 = scaled(1024, width)
    chans = [c0] + [scaled(64, width) * 2 ** (n - 1 - i) for i in range(n)]
    layers: list[nn.Module] = [nn.Linear(latent_dim, c0 * base * base), nn.LeakyReLU(0.2, True),
                               nn.Unflatten(1, (c0, base, base))]
    for i in range(n):
        layers += [nn.ConvTranspose2d(chans[i], chans[i + 1], 4, 2, 1), nn.LeakyReLU(0.2, True)]
    layers += [nn.Conv2d(chans[-1], channels, 5, 1, 2), nn.Tanh()]
    return _glorot_(nn.Sequential(*layers))


def _s1_discriminator(resolution: int, channels: int, width: float, dropout: float) -> nn.Sequential:
    n, _ = _stages(resolution, _BASE["s1"])
    layers: list[nn.Module] = []
    c_in, side = channels, resolution
    for i in range(n):
        c = scaled(64, width) * 2 ** i
        layers.append(nn.Conv2d(c_in, c, 4, 2, 1, bias=False))
        if i > 0:
            layers.append(nn.BatchNorm2d(c))
        layers.append(nn.LeakyReLU(0.2, True))
        if i != 1:
            layers.append(nn.Dropout(dropout))
        c_in, side = c, side // 2
    # The output "FC" is a conv covering the whole remaining map (S1: 512x4x4 -> 1).
    layers.append(nn.Conv2d(c_in, 1, side, 1, 0, bias=False))
    return init_normal_(nn.Sequential(*layers, nn.Flatten()))


def _s4_discriminator(resolution: int, channels: int, width: float, dropout: float) -> nn.Sequential:
    n, _ = _stages(resolution, _BASE["s4"])
    c_in = scaled(64, width)
    layers: list[nn.Module] = [nn.Conv2d(channels, c_in, 5, 1, 2), nn.LeakyReLU(0.2, True)]
    side = resolution
    for i in range(n):
        c = scaled(128, width) * 2 ** i
        layers += [nn.Conv2d(c_in, c, 5, 2, 2), nn.LeakyReLU(0.2, True)]
        c_in, side = c, (side + 1) // 2
    layers += [nn.Flatten(), nn.Dropout(dropout), nn.Linear(c_in * side * side, 1)]
    return _glorot_(nn.Sequential(*layers))


_GENERATORS = {"s1": _s1_generator, "s4": _s4_generator}
_DISCRIMINATORS = {"s1": (_s1_discriminator, 0.25), "s4": (_s4_discriminator, 0.4)}


class DCGANGenerator(nn.Module):
    """Unconditional G(z) -> images in [-1, 1]."""

    def __init__(self, *, resolution: int = 64, channels: int = 1, latent_dim: int = 100,
                 width: float = 1.0, variant: str = "s1"):
        super().__init__()
        _check_variant(variant)
        self.latent_dim, self.resolution = latent_dim, resolution
        # S1's "FC" layer is a transposed conv on a 1x1 map; S4's is a Dense layer.
        self.z_as_map = variant == "s1"
        self.body = _GENERATORS[variant](resolution, channels, latent_dim, width)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        x = self.body(z[:, :, None, None] if self.z_as_map else z)
        return center_crop(x, self.resolution)


class DCGANDiscriminator(nn.Module):
    """Unconditional D(x) -> real/fake logit (N,).  `dropout` None = the variant's own."""

    def __init__(self, *, resolution: int = 64, channels: int = 1, width: float = 1.0,
                 variant: str = "s1", dropout: float | None = None):
        super().__init__()
        _check_variant(variant)
        build, default_p = _DISCRIMINATORS[variant]
        self.body = build(resolution, channels, width, default_p if dropout is None else dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x).squeeze(1)


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
