"""AC-GAN (Odena et al. 2017) as used by S0 (CXR-ACGAN) and S3 (CovidGAN, Waheed et al. 2020).

Generator: label -> embedding -> dense -> base x base x 1; z -> dense -> base x base x 1024;
concatenated channel-wise, then four transposed convs (kernel 5, stride 2), BN + ReLU on all
but the last, tanh output. At 112 px base is 7 (shared/SYSTEMS.md S0/S3).

Discriminator: conv + BN + LeakyReLU(0.2) + Dropout blocks, two heads (source logit and
class logits).  Variant "s0": four stride-2 blocks 64-128-256-512 (S0 gives no kernel size).
Variant "s3": strides alternating 2 and 1, keeping S3's stated shapes 56x56x64 -> 28x28x128 ->
14x14x256 -> 7x7x512 (S3 states both "alternating strides" and four halvings; seven blocks
reconcile the two at ~2.4 M parameters, "approximately 2 M").  The blocks' kernel, BatchNorm
and dropout follow `D_REGULARIZATION` (the seeds' text, BN + Dropout(0.5) everywhere, is
"seed"; the default "dcgan" differs for the reason given there).
"""
from __future__ import annotations


import torch
from torch import nn

from trainables.models.init import center_crop, init_normal_, scaled, upsampling_plan

ACGAN_VARIANTS = ("s0", "s3")

# How D's blocks are built.  "seed": S0/S3's text, kernel 3, BatchNorm and Dropout(0.5) in
# every block.  "dcgan": the DCGAN discriminator's conventions (Radford et al.; our S1 D):
# kernel 4 for the stride-2 convs, no BatchNorm on the input block, Dropout(0.25) except
# after the second block.  Why "dcgan" is the default: with "seed", every 64 px AC-GAN run we
# made (40 batches/epoch, with or without label smoothing, augmentation, class loss,
# minibatch-std, DiffAugment) drew one image per class within 5 epochs, with D barely
# separating real from fake (D(x) ~0.5); with "dcgan" the same runs drew varied samples.
D_REGULARIZATION = {
    "seed": {"kernel": 3, "input_bn": True, "dropout": lambda i: 0.5},
    "dcgan": {"kernel": 4, "input_bn": False, "dropout": lambda i: 0.0 if i == 1 else 0.25},
}

# (out_channels, stride) per discriminator block, at width 1.
_D_BLOCKS = {
    "s0": ((64, 2), (128, 2), (256, 2), (512, 2)),
    "s3": ((64, 2), (64, 1), (128, 2), (128, 1), (256, 2), (256, 1), (512, 2)),
}


class ACGANGenerator(nn.Module):
    """G(z, labels) -> images in [-1, 1], shape (N, channels, resolution, resolution)."""

    def __init__(self, num_classes: int, *, resolution: int = 112, channels: int = 3,
                 latent_dim: int = 100, width: float = 1.0, embed_dim: int = 50):
        super().__init__()
        self.num_classes, self.latent_dim, self.resolution = num_classes, latent_dim, resolution
        self.base = upsampling_plan(resolution, 4)
        c0 = scaled(1024, width)
        area = self.base * self.base
        self.label_map = nn.Sequential(nn.Embedding(num_classes, embed_dim), nn.Linear(embed_dim, area))
        # ReLU after the z projection as in the Keras AC-GAN the seeds build on.
        self.z_map = nn.Sequential(nn.Linear(latent_dim, c0 * area), nn.ReLU(True))
        chans = [c0 + 1, scaled(512, width), scaled(256, width), scaled(128, width), channels]
        layers: list[nn.Module] = []
        for i in range(4):
            layers.append(nn.ConvTranspose2d(chans[i], chans[i + 1], 5, stride=2, padding=2,
                                             output_padding=1))
            if i < 3:
                layers += [nn.BatchNorm2d(chans[i + 1]), nn.ReLU(True)]
        layers.append(nn.Tanh())
        self.body = nn.Sequential(*layers)
        self.c0 = c0
        init_normal_(self)

    def forward(self, z: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        n, b = z.shape[0], self.base
        lab = self.label_map(labels).view(n, 1, b, b)
        lat = self.z_map(z).view(n, self.c0, b, b)
        return center_crop(self.body(torch.cat([lat, lab], dim=1)), self.resolution)


class ACGANDiscriminator(nn.Module):
    """D(x, labels) -> (source logit (N,), class logits (N, K)); labels are unused (AC-GAN
    predicts the class instead of receiving it).  `regularization` picks the blocks'
    normalisation and dropout (see the module docstring and `D_REGULARIZATION`)."""

    def __init__(self, num_classes: int, *, resolution: int = 112, channels: int = 3,
                 width: float = 1.0, variant: str = "s0", regularization: str = "dcgan"):
        super().__init__()
        if variant not in _D_BLOCKS:
            raise ValueError(f"unknown AC-GAN variant {variant!r}; choose one of {ACGAN_VARIANTS}")
        if regularization not in D_REGULARIZATION:
            raise ValueError(f"unknown AC-GAN D regularization {regularization!r}; choose one "
                             f"of {sorted(D_REGULARIZATION)}")
        style = D_REGULARIZATION[regularization]
        layers: list[nn.Module] = []
        c_in, side = channels, resolution
        for i, (c, stride) in enumerate(_D_BLOCKS[variant]):
            c = scaled(c, width)
            k = style["kernel"] if stride == 2 else 3
            layers += [nn.Conv2d(c_in, c, k, stride=stride, padding=1),
                       nn.BatchNorm2d(c) if i > 0 or style["input_bn"] else nn.Identity(),
                       nn.LeakyReLU(0.2, True), nn.Dropout(style["dropout"](i))]
            c_in, side = c, (side + 2 - k) // stride + 1
        self.features = nn.Sequential(*layers, nn.Flatten())
        flat = c_in * side * side
        self.source = nn.Linear(flat, 1)
        self.classes = nn.Linear(flat, num_classes)
        init_normal_(self)

    def forward(self, x: torch.Tensor, labels: torch.Tensor | None = None):
        h = self.features(x)
        return self.source(h).squeeze(1), self.classes(h)
