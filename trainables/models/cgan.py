"""Conditional GAN after S2 (Mirza & Osindero 2014 style, shared/SYSTEMS.md S2).

G: label -> embedding -> dense -> base x base x 1 map, concatenated channel-wise with the
dense projection of z (base x base x F); then transposed convs k4 s2 ("conv_layer_set":
ConvT + BN + ReLU), the last without BN and with tanh.  Filters start at 256 and halve per
layer (S2 runs 2 and 3).  Four doublings (a guess); 150 px is generated at 160 and
centre-cropped.
D: label -> embedding -> dense -> a resolution x resolution map concatenated with the image;
conv k4 s2 + LeakyReLU (no BN), three conv + BN + LeakyReLU sets, one more conv + LeakyReLU
(no BN), flatten, dropout 0.5, dense -> one logit.  Embedding size 50 is a guess.
"""
from __future__ import annotations

import torch
from torch import nn

from trainables.models.init import center_crop, init_normal_, scaled, upsampling_plan

CGAN_VARIANTS = ("s2",)


class CGANGenerator(nn.Module):
    """G(z, labels) -> images in [-1, 1]."""

    def __init__(self, num_classes: int, *, resolution: int = 150, channels: int = 1,
                 latent_dim: int = 100, width: float = 1.0, embed_dim: int = 50,
                 filters: int = 256, stages: int = 4):
        super().__init__()
        self.latent_dim, self.resolution = latent_dim, resolution
        self.base = b = upsampling_plan(resolution, stages)
        chans = [scaled(filters, width) // 2 ** i for i in range(stages)]
        chans = [max(1, c) for c in chans] + [channels]
        self.c0 = chans[0]
        self.label_map = nn.Sequential(nn.Embedding(num_classes, embed_dim), nn.Linear(embed_dim, b * b))
        self.z_map = nn.Sequential(nn.Linear(latent_dim, self.c0 * b * b), nn.ReLU(True))
        layers: list[nn.Module] = []
        c_in = self.c0 + 1
        for i in range(stages):
            layers.append(nn.ConvTranspose2d(c_in, chans[i + 1], 4, 2, 1))
            if i < stages - 1:
                layers += [nn.BatchNorm2d(chans[i + 1]), nn.ReLU(True)]
            c_in = chans[i + 1]
        layers.append(nn.Tanh())
        self.body = nn.Sequential(*layers)
        init_normal_(self)

    def forward(self, z: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        n, b = z.shape[0], self.base
        x = torch.cat([self.z_map(z).view(n, self.c0, b, b),
                       self.label_map(labels).view(n, 1, b, b)], dim=1)
        return center_crop(self.body(x), self.resolution)


class CGANDiscriminator(nn.Module):
    """D(x, labels) -> (real/fake logit (N,), None)."""

    def __init__(self, num_classes: int, *, resolution: int = 150, channels: int = 1,
                 width: float = 1.0, embed_dim: int = 50, dropout: float = 0.5):
        super().__init__()
        self.resolution = resolution
        if resolution < 32:
            raise ValueError(f"cGAN resolution {resolution} is below the minimum 32")
        self.label_map = nn.Sequential(nn.Embedding(num_classes, embed_dim),
                                       nn.Linear(embed_dim, resolution * resolution))
        c = [scaled(x, width) for x in (64, 128, 256, 512, 512)]
        layers: list[nn.Module] = [nn.Conv2d(channels + 1, c[0], 4, 2, 1), nn.LeakyReLU(0.2, True)]
        for i in range(1, 4):
            layers += [nn.Conv2d(c[i - 1], c[i], 4, 2, 1), nn.BatchNorm2d(c[i]), nn.LeakyReLU(0.2, True)]
        layers += [nn.Conv2d(c[3], c[4], 4, 2, 1), nn.LeakyReLU(0.2, True), nn.Flatten(),
                   nn.Dropout(dropout)]
        self.features = nn.Sequential(*layers)
        side = resolution
        for _ in range(5):
            side //= 2
        self.head = nn.Linear(c[4] * side * side, 1)
        init_normal_(self)

    def forward(self, x: torch.Tensor, labels: torch.Tensor):
        r = self.resolution
        lab = self.label_map(labels).view(x.shape[0], 1, r, r).to(x.dtype)
        h = self.features(torch.cat([x, lab], dim=1))
        return self.head(h).squeeze(1), None
