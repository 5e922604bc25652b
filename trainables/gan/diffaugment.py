"""Differentiable augmentation of D's inputs (DiffAugment; Zhao et al., NeurIPS 2020).

Small data sets (S1 trains on 270 images) let D memorise the real set and G collapse.
DiffAugment applies the *same kind* of random, differentiable transform to real and fake
images before every D call (in D's step and in G's step), so D never sees an un-augmented
image and G's gradient flows through the transform.  Policies, as in the authors' code:

- color: random brightness (+-0.5) and contrast (x0.5..1.5).  The authors' saturation is
  left out: X-rays are grey, so it is the identity on them;
- translation: integer shift of up to 1/8 of the side, zero (mid-grey in [-1, 1]) padding;
- cutout: one zeroed square of half the side at a random place.

No horizontal flip: chest X-rays have laterality (the heart is on the left).
"""
from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F


def _brightness(x: torch.Tensor) -> torch.Tensor:
    return x + (torch.rand(x.size(0), 1, 1, 1, device=x.device, dtype=x.dtype) - 0.5)


def _contrast(x: torch.Tensor) -> torch.Tensor:
    mean = x.mean(dim=(1, 2, 3), keepdim=True)
    return (x - mean) * (torch.rand(x.size(0), 1, 1, 1, device=x.device, dtype=x.dtype) + 0.5) + mean


def _translation(x: torch.Tensor, ratio: float = 0.125) -> torch.Tensor:
    n, _, h, w = x.shape
    sh, sw = int(h * ratio + 0.5), int(w * ratio + 0.5)
    dy = torch.randint(-sh, sh + 1, (n, 1, 1), device=x.device)
    dx = torch.randint(-sw, sw + 1, (n, 1, 1), device=x.device)
    iy = torch.arange(h, device=x.device).view(1, h, 1)
    ix = torch.arange(w, device=x.device).view(1, 1, w)
    # Index a 1-pixel zero-padded copy: out-of-range sources land on the padding.
    gy = (iy + dy + 1).clamp(0, h + 1).expand(n, h, w)
    gx = (ix + dx + 1).clamp(0, w + 1).expand(n, h, w)
    padded = F.pad(x, [1, 1, 1, 1])
    batch = torch.arange(n, device=x.device).view(n, 1, 1).expand(n, h, w)
    return padded.permute(0, 2, 3, 1)[batch, gy, gx].permute(0, 3, 1, 2)


def _cutout(x: torch.Tensor, ratio: float = 0.5) -> torch.Tensor:
    n, _, h, w = x.shape
    ch, cw = int(h * ratio + 0.5), int(w * ratio + 0.5)
    cy = torch.randint(0, h + (1 - ch % 2), (n, 1, 1), device=x.device)
    cx = torch.randint(0, w + (1 - cw % 2), (n, 1, 1), device=x.device)
    iy = torch.arange(h, device=x.device).view(1, h, 1)
    ix = torch.arange(w, device=x.device).view(1, 1, w)
    top, left = cy - ch // 2, cx - cw // 2  # the square may stick out of the image
    inside = (iy >= top) & (iy < top + ch) & (ix >= left) & (ix < left + cw)
    return x * (~inside).unsqueeze(1).to(x.dtype)


POLICIES: dict[str, tuple[Callable[[torch.Tensor], torch.Tensor], ...]] = {
    "color": (_brightness, _contrast),
    "translation": (_translation,),
    "cutout": (_cutout,),
}


def parse_policy(policy: str) -> tuple[str, ...]:
    """"color,translation,cutout" -> its parts; "" or "none" -> (); unknown parts are errors."""
    parts = tuple(p.strip() for p in policy.split(",") if p.strip() and p.strip() != "none")
    unknown = [p for p in parts if p not in POLICIES]
    if unknown:
        raise ValueError(f"DiffAugment policy part(s) {unknown}: choose from {sorted(POLICIES)} "
                         "(comma-separated, e.g. 'color,translation,cutout'; '' for none)")
    return parts


def diff_augment(x: torch.Tensor, policy: str) -> torch.Tensor:
    """Apply the policy's transforms to an NCHW batch in [-1, 1]; identity for ""."""
    for part in parse_policy(policy):
        for fn in POLICIES[part]:
            x = fn(x)
    return x.contiguous()
