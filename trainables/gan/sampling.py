"""Sampling from a generator: the latent distribution, fixed noise, sample grids."""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

import torch
from torch import nn

LATENT_DISTS = ("normal", "uniform")


def draw_latent(n: int, latent_dim: int, dist: str = "normal", *,
                generator: torch.Generator | None = None,
                device: torch.device | str | None = None) -> torch.Tensor:
    """(n, latent_dim) z ~ N(0, 1) ("normal") or U(-1, 1) ("uniform", S1).  Every place that
    feeds G draws z here, so training, evaluation and generation agree on the distribution."""
    if dist == "normal":
        z = torch.randn(n, latent_dim, generator=generator)
    elif dist == "uniform":
        z = torch.rand(n, latent_dim, generator=generator) * 2 - 1
    else:
        raise ValueError(f"latent distribution {dist!r}: choose one of {LATENT_DISTS}")
    return z if device is None else z.to(device)


def fixed_noise(n: int, latent_dim: int, seed: int, dist: str = "normal") -> torch.Tensor:
    """(n, latent_dim) noise from its own generator: the same for a seed, whatever the global
    RNG has done (so per-epoch grids are comparable)."""
    return draw_latent(n, latent_dim, dist, generator=torch.Generator().manual_seed(seed))


@torch.no_grad()
def sample(G: nn.Module, labels: torch.Tensor, latent_dim: int, seed: int,
           dist: str = "normal") -> torch.Tensor:
    """G(z, labels) in eval mode with z = fixed_noise(len(labels), latent_dim, seed, dist);
    returns float32 images in [-1, 1] on G's device. G's train/eval mode is restored."""
    device = next(G.parameters()).device
    was_training = G.training
    G.eval()
    try:
        z = fixed_noise(len(labels), latent_dim, seed, dist).to(device)
        out = G(z, labels.to(device)).float()
    finally:
        G.train(was_training)
    return out


def grid_labels(class_indices: Sequence[int], per_class: int) -> torch.Tensor:
    """Labels for a grid with one row of `per_class` samples per class."""
    return torch.tensor(list(class_indices), dtype=torch.long).repeat_interleave(per_class)


def save_grid(images: torch.Tensor, path: Path | str, per_row: int) -> Path:
    """Write images in [-1, 1] as a PNG grid, `per_row` per row (one row per class)."""
    from torchvision.utils import save_image  # import here: torchvision is slow to import

    path = Path(path)
    save_image((images.detach().cpu().float().clamp(-1, 1) + 1) / 2, path, nrow=per_row, padding=2)
    return path
