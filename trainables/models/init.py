"""Weight initialisation and small shape helpers shared by the GAN families."""
from __future__ import annotations

import math

import torch
from torch import nn


def init_normal_(module: nn.Module, std: float = 0.02) -> nn.Module:
    """DCGAN initialisation (Radford et al.; S1): conv/linear weights ~ N(0, std), biases 0,
    BatchNorm scale ~ N(1, std) and shift 0. Embeddings keep PyTorch's N(0, 1)."""
    for m in module.modules():
        if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d, nn.Linear)):
            nn.init.normal_(m.weight, 0.0, std)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.normal_(m.weight, 1.0, std)
            nn.init.zeros_(m.bias)
    return module


def scaled(channels: int, width: float) -> int:
    """Channel count `channels * width`, at least 1 (width multiplier for CPU smoke runs)."""
    if width <= 0:
        raise ValueError(f"width multiplier must be > 0, got {width}")
    return max(1, int(round(channels * width)))


def upsampling_plan(resolution: int, stages: int) -> int:
    """Base (square) side for `stages` doublings that reaches at least `resolution`.

    Resolutions that are not base * 2**stages (e.g. S2's 150 px) are generated slightly
    larger and centre-cropped, so every resolution from 16 px up is reachable."""
    if resolution < 2 ** stages:
        raise ValueError(f"resolution {resolution} is too small for {stages} upsampling stages "
                         f"(need >= {2 ** stages}); use a larger resolution")
    return math.ceil(resolution / 2 ** stages)


def center_crop(x: torch.Tensor, size: int) -> torch.Tensor:
    """Centre crop an NCHW batch to size x size (no-op when it already has that size)."""
    h, w = x.shape[-2:]
    if h == size and w == size:
        return x
    top, left = (h - size) // 2, (w - size) // 2
    return x[..., top:top + size, left:left + size]


def count_params(module: nn.Module) -> int:
    """Number of trainable parameters."""
    return sum(p.numel() for p in module.parameters() if p.requires_grad)

