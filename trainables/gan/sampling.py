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


# Tiles are drawn at least this many pixels wide: a 32 px tile shows no lungs on a screen.
MIN_TILE_PX = 128


def save_grid(images: torch.Tensor, path: Path | str, per_row: int,
              row_names: Sequence[str] | None = None, title: str = "") -> Path:
    """Write images in [-1, 1] as a PNG grid, `per_row` per row (one row per class), each
    tile scaled up to about MIN_TILE_PX (nearest neighbour: no invented detail), the class
    name left of its row and `title` (e.g. "epoch 7") above."""
    from PIL import Image, ImageDraw
    from torchvision.utils import make_grid  # import here: torchvision is slow to import

    side = images.shape[-1]
    scale = max(1, min(4, -(-MIN_TILE_PX // side)))
    # a diverged generator's NaN pixels are drawn mid-grey (casting NaN to uint8 is undefined)
    images = torch.nan_to_num(images.detach().cpu().float(), nan=0.0)
    grid = make_grid((images.clamp(-1, 1) + 1) / 2, nrow=per_row,
                     padding=2, pad_value=1.0)
    pixels = (grid.permute(1, 2, 0).numpy() * 255).round().astype("uint8")
    tiles = Image.fromarray(pixels).resize((pixels.shape[1] * scale, pixels.shape[0] * scale),
                                           Image.Resampling.NEAREST)
    font = _font(max(12, min(24, side * scale // 8)))
    names = list(row_names or [])
    left = (max(int(font.getlength(n)) for n in names) + 12) if names else 0
    top = int(font.size * 1.8) if title else 0
    canvas = Image.new("RGB", (tiles.width + left, tiles.height + top), "white")
    canvas.paste(tiles.convert("RGB"), (left, top))
    draw = ImageDraw.Draw(canvas)
    if title:
        draw.text((left + 4, top // 2), title, fill="black", font=font, anchor="lm")
    row_h = (side + 2) * scale
    for i, name in enumerate(names):
        draw.text((left - 6, top + i * row_h + row_h // 2), name, fill="black", font=font,
                  anchor="rm")
    path = Path(path)
    canvas.save(path)
    return path


def _font(size: int):
    from PIL import ImageFont

    try:
        return ImageFont.load_default(size=size)  # Pillow >= 10.1 with FreeType
    except TypeError:  # an older Pillow: its fixed bitmap font
        return ImageFont.load_default()
