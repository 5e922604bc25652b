"""Conditional WGAN-GP (Gulrajani et al. 2017, "Improved Training of Wasserstein GANs").

Critic: the DCGAN discriminator's conv stack (k4 s2 convs + LeakyReLU(0.2), 64 channels
doubling up to 512) down to a map of about 4x4, then a linear score: no sigmoid (the score is
unbounded) and no BatchNorm (the gradient penalty is taken per sample, and BatchNorm makes a
sample's score depend on the rest of its batch; the paper, section 4).  Variant "layernorm"
(the paper's recommendation) normalises every block but the first over (C, H, W) with a
per-channel scale and shift, i.e. GroupNorm with one group, as the paper's own code's
`Layernorm`; variant "plain" has no normalisation at all.
Conditioning by projection (Miyato & Koyama 2018): score(x, y) = w . h + embed(y) . h with h
the flattened last feature map, so the label adds a class-specific direction in feature
space rather than an input channel.

Generator: the cGAN's (`trainables.models.cgan.CGANGenerator`), reused as it is: the penalty
constrains the critic only, and the paper keeps BatchNorm in G.
"""
from __future__ import annotations

import math

import torch
from torch import nn

from trainables.models.init import init_normal_, scaled

WGAN_GP_VARIANTS = ("layernorm", "plain")


class WGANGPCritic(nn.Module):
    """D(x, labels) -> (score (N,), None): an unbounded critic score, not a logit."""

    def __init__(self, num_classes: int, *, resolution: int = 64, channels: int = 1,
                 width: float = 1.0, variant: str = "layernorm"):
        super().__init__()
        if variant not in WGAN_GP_VARIANTS:
            raise ValueError(f"unknown WGAN-GP variant {variant!r}; choose one of "
                             f"{WGAN_GP_VARIANTS}")
        if resolution < 16:
            raise ValueError(f"WGAN-GP resolution {resolution} is below the minimum 16")
        stages = int(math.floor(math.log2(resolution / 4)))
        layers: list[nn.Module] = []
        c_in, side = channels, resolution
        for i in range(stages):
            c = scaled(min(64 * 2 ** i, 512), width)
            layers.append(nn.Conv2d(c_in, c, 4, 2, 1))
            if i > 0 and variant == "layernorm":
                layers.append(nn.GroupNorm(1, c))
            layers.append(nn.LeakyReLU(0.2, True))
            c_in, side = c, side // 2
        self.features = nn.Sequential(*layers, nn.Flatten())
        flat = c_in * side * side
        self.score = nn.Linear(flat, 1)
        self.embed = nn.Embedding(num_classes, flat)
        init_normal_(self)
        # The projection is on the same footing as the linear score: PyTorch's N(0, 1)
        # embedding would make the class term ~50x the unconditional one at the start.
        nn.init.normal_(self.embed.weight, 0.0, 0.02)

    def forward(self, x: torch.Tensor, labels: torch.Tensor):
        h = self.features(x)
        return self.score(h).squeeze(1) + (self.embed(labels) * h).sum(1), None
