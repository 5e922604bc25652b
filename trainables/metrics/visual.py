"""Visual checks of generated samples: automatic per-epoch numbers.

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

import numpy as np
import torch


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
