"""Positional augmentation on batches (S0): translation, rotation, zoom, shear, intensity, flip.

Horizontal flip is off unless asked for: chest X-rays have laterality (the heart is on the
left), so a flipped image is not a plausible chest X-ray of the same class.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


class PositionalAugment(nn.Module):
    """Random affine + intensity shift of an NCHW float batch, one draw per image.

    translate: max shift as a fraction of width/height; degrees: max rotation; zoom: max
    relative scale change; shear: max shear angle in degrees (S0's GAN-side augmentation);
    intensity: max additive shift as a fraction of ``value_range``'s
    width; hflip: flip half of the images left-right. Randomness comes from ``generator``
    (forward argument), else from a generator seeded with ``seed``, else torch's global RNG.
    """

    def __init__(self, translate: float = 0.1, degrees: float = 10.0, zoom: float = 0.15,
                 intensity: float = 0.1, hflip: bool = False, *, shear: float = 0.0,
                 seed: int | None = None,
                 value_range: tuple[float, float] = (-1.0, 1.0)) -> None:
        super().__init__()
        if not (0 <= translate < 1 and 0 <= degrees <= 180 and 0 <= zoom < 1 and intensity >= 0
                and 0 <= shear < 90):
            raise ValueError("PositionalAugment needs 0<=translate<1, 0<=degrees<=180, "
                             f"0<=zoom<1, intensity>=0, 0<=shear<90; got {translate}, {degrees}, "
                             f"{zoom}, {intensity}, {shear}")
        self.translate, self.degrees, self.zoom, self.shear = translate, degrees, zoom, shear
        self.intensity, self.hflip, self.value_range = intensity, hflip, value_range
        self._generator = torch.Generator().manual_seed(seed) if seed is not None else None

    def extra_repr(self) -> str:
        return (f"translate={self.translate}, degrees={self.degrees}, zoom={self.zoom}, "
                f"shear={self.shear}, "
                f"intensity={self.intensity}, hflip={self.hflip}")

    def _uniform(self, n: int, gen: torch.Generator | None) -> torch.Tensor:
        return torch.rand(n, generator=gen) * 2 - 1  # U(-1, 1), drawn on the CPU

    def forward(self, x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        if x.ndim != 4:
            raise ValueError(f"PositionalAugment expects an NCHW batch, got shape {tuple(x.shape)}")
        gen = generator or self._generator
        n = x.shape[0]
        angle = self._uniform(n, gen) * math.radians(self.degrees)
        scale = 1 + self._uniform(n, gen) * self.zoom
        shift = torch.stack([self._uniform(n, gen), self._uniform(n, gen)], 1) * self.translate * 2
        flip = torch.rand(n, generator=gen) < 0.5
        if not self.hflip:
            flip = torch.zeros(n, dtype=torch.bool)
        delta = self._uniform(n, gen) * self.intensity * (self.value_range[1] - self.value_range[0])
        # Drawn last, so a shear of 0 leaves every other draw (and old results) unchanged.
        shear = self._uniform(n, gen) * math.radians(self.shear) if self.shear else torch.zeros(n)
        # affine_grid maps output to input coordinates: inverse rotation and 1/scale, times
        # a shear along x ([[1, tan s], [0, 1]]).
        cos, sin = torch.cos(angle) / scale, torch.sin(angle) / scale
        sign, tan = torch.where(flip, -1.0, 1.0), torch.tan(shear)
        theta = torch.stack([torch.stack([cos * sign, cos * sign * tan - sin, shift[:, 0]], 1),
                             torch.stack([sin * sign, sin * sign * tan + cos, shift[:, 1]], 1)], 1)
        theta = theta.to(device=x.device, dtype=x.dtype)
        grid = F.affine_grid(theta, list(x.shape), align_corners=False)
        # "border" repeats edge pixels (Keras' "nearest"), so no value-range-dependent fill.
        out = F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)
        out = out + delta.to(device=x.device, dtype=x.dtype).view(n, 1, 1, 1)
        return out.clamp(*self.value_range)
