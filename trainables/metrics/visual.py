"""Visual checks of generated samples: automatic per-epoch numbers and a contact sheet.

* diversity: per class, the mean pairwise distance between the fakes' Inception features
  against the same for the real images of that class (1 = as varied as real images).  The
  reported ratio is the *smallest* over classes, so one class whose samples are near-copies
  of one image (AC-GAN's within-class collapse) shows, even when the other classes are fine.
  Pixel distances at 32 px did not: a collapsed run still scored 0.13 there, as a run whose
  samples were noise;
* near-constant images: per-image pixel std below a threshold (S2's uniform grey output);
* class agreement: how often a classifier assigns the conditioning label to a fake
  (the AC-GAN's own auxiliary head versus an independent reference classifier).
"""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from matplotlib.figure import Figure
from PIL import Image

from trainables.figures import save as save_figure


def within_class_diversity(features, labels) -> dict[int, float]:
    """Per class: mean pairwise Euclidean distance between its feature vectors (N, d) (any
    trailing shape is flattened); classes with >= 2 samples."""
    x = torch.as_tensor(np.asarray(features), dtype=torch.float64).flatten(1)
    y = np.asarray(labels)
    out = {}
    for c in np.unique(y):
        xc = x[torch.as_tensor(y == c)]
        if len(xc) < 2:
            continue
        out[int(c)] = float(torch.cdist(xc, xc).sum() / (len(xc) * (len(xc) - 1)))
    return out


def diversity_ratios(fake, fake_labels, real, real_labels) -> dict[int, float]:
    """Per shared class: fake / real within-class diversity."""
    df, dr = within_class_diversity(fake, fake_labels), within_class_diversity(real, real_labels)
    shared = {c: df[c] / dr[c] for c in df if c in dr and dr[c] > 0}
    if not shared:
        raise ValueError("no class has >= 2 fake and >= 2 real images: diversity undefined")
    return shared


def diversity_ratio(fake, fake_labels, real, real_labels) -> float:
    """The smallest per-class fake/real diversity ratio (0 = one class is a single image)."""
    return float(min(diversity_ratios(fake, fake_labels, real, real_labels).values()))


def constant_fraction(images: torch.Tensor, tol: float = 0.02) -> float:
    """Fraction of images whose pixel std (images in [-1, 1]) is below `tol`."""
    std = images.float().flatten(1).std(1)
    return float((std < tol).float().mean())


def class_agreement(predicted: np.ndarray, labels: np.ndarray | torch.Tensor) -> float:
    """Fraction of fakes whose predicted class is the label they were generated for."""
    return float(np.mean(np.asarray(predicted) == np.asarray(labels)))


def real_grid(images: np.ndarray, labels: np.ndarray, n_classes: int, per_class: int = 8,
              seed: int = 0) -> np.ndarray:
    """A (rows = classes, cols = per_class) mosaic of real uint8 NHWC images, as HxWxC uint8."""
    rng = np.random.default_rng(seed)
    h, w, c = images.shape[1:]
    sheet = np.zeros((n_classes * h, per_class * w, c), dtype=np.uint8)
    for k in range(n_classes):
        idx = np.flatnonzero(labels == k)
        for j, i in enumerate(rng.choice(idx, min(per_class, len(idx)), replace=False)):
            sheet[k * h:(k + 1) * h, j * w:(j + 1) * w] = images[i]
    return sheet


def contact_sheet(entries: Sequence[tuple[str, Path | str]], real_images: np.ndarray,
                  real_labels: np.ndarray, classes: Sequence[str], out_png: Path | str, *,
                  per_class: int = 8) -> Path:
    """Real images per class next to each shortlisted epoch's `grid.png`, one PNG.

    entries: (title, path to the epoch's grid.png) in shortlist order.
    """
    missing = [str(p) for _, p in entries if not Path(p).is_file()]
    if missing:
        raise FileNotFoundError(f"grid image(s) not found: {missing}; grids are written at "
                                "<checkpoint dir>/grid.png by the GAN loop")
    panels = [("real (rows: " + ", ".join(classes) + ")",
               real_grid(real_images, real_labels, len(classes), per_class))]
    panels += [(t, np.asarray(Image.open(p).convert("RGB"))) for t, p in entries]
    fig = Figure(figsize=(4 * len(panels), 4.4))
    axes = fig.subplots(1, len(panels), squeeze=False)
    for ax, (title, img) in zip(axes[0], panels):
        ax.imshow(img.squeeze(), cmap="gray", vmin=0, vmax=255)
        ax.set_title(title, fontsize=8)
        ax.axis("off")
    return save_figure(fig, out_png)
