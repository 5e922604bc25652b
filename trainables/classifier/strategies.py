"""S0's class-imbalance strategies: which images (real, duplicated, synthetic) a classifier
trains on, which of them are augmented on the fly, and the loss's class weights.

none                  all real training images as they are
class_weights         all real images; loss weighted n / (K * n_c) (Keras' "balanced")
undersample           every class randomly cut to the smallest class's count
oversample_positional minority classes filled up with re-drawn real images that are
                      positionally augmented on the fly (S0's best strategy)
oversample_gan        minority classes filled up with GAN images
gan_positional        as oversample_gan, and every image of a filled-up class (real and
                      synthetic) is positionally augmented on the fly

"Filled up" means up to ceil(gan_ratio x largest class count) images per class; the largest
class is never oversampled (S0: "not performing it on the most populated class").
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from trainables.classifier.config import GAN_STRATEGIES, STRATEGIES
from trainables.gan import load_generator
from trainables.gan.sampling import draw_latent

# synth(class_index, n, seed) -> uint8 (n, H, W, C) images of that class.
Synth = Callable[[int, int, int], np.ndarray]


@dataclass(frozen=True)
class TrainSet:
    """What one classifier run trains on.  images: uint8 NHWC; augment: rows to augment
    positionally on the fly; synthetic: rows made by a GAN; class_weights: loss weights."""

    images: np.ndarray
    labels: np.ndarray
    augment: np.ndarray
    synthetic: np.ndarray
    class_weights: Optional[np.ndarray] = None

    def __len__(self) -> int:
        return int(self.labels.shape[0])


def fill_targets(counts: np.ndarray, ratio: float = 1.0) -> np.ndarray:
    """Images wanted per class: ceil(ratio x max count), never fewer than a class has."""
    target = math.ceil(ratio * int(counts.max()))
    return np.maximum(counts, target)


def balanced_weights(labels: np.ndarray, num_classes: int) -> np.ndarray:
    """n / (K * n_c) per class (scikit-learn's and Keras' "balanced")."""
    counts = np.bincount(labels, minlength=num_classes).astype(np.float64)
    if (counts == 0).any():
        raise ValueError(f"class_weights: class(es) {np.flatnonzero(counts == 0).tolist()} have "
                         "no training images")
    return counts.sum() / (num_classes * counts)


def build_train_set(images: np.ndarray, labels: np.ndarray, num_classes: int, strategy: str,
                    *, synth: Synth | None = None, gan_ratio: float = 1.0,
                    seed: int = 0) -> TrainSet:
    """The training rows for ``strategy`` (see the module docstring); seeded."""
    if strategy not in STRATEGIES:
        raise ValueError(f"unknown strategy {strategy!r}; choose one of {STRATEGIES}")
    if strategy in GAN_STRATEGIES and synth is None:
        raise ValueError(f"strategy {strategy!r} needs a GAN generator: pass synth= (a "
                         "synth(class_index, n, seed) function, e.g. synth_from_checkpoint(path))")
    labels = np.asarray(labels, dtype=np.int64)
    rng = np.random.default_rng(seed)
    counts = np.bincount(labels, minlength=num_classes)
    n = len(labels)
    no = np.zeros(n, dtype=bool)
    if strategy in ("none", "class_weights"):
        weights = balanced_weights(labels, num_classes) if strategy == "class_weights" else None
        return TrainSet(np.asarray(images), labels, no, no, weights)
    if strategy == "undersample":
        m = int(counts[counts > 0].min())
        keep = np.sort(np.concatenate([rng.choice(np.flatnonzero(labels == c), m, replace=False)
                                       for c in range(num_classes) if counts[c] > 0]))
        return TrainSet(np.asarray(images[keep]), labels[keep], no[keep], no[keep])
    deficit = fill_targets(counts, gan_ratio) - counts
    if strategy == "oversample_positional":
        extra = np.concatenate([rng.choice(np.flatnonzero(labels == c), d, replace=True)
                                for c, d in enumerate(deficit) if d > 0 and counts[c] > 0]
                               + [np.zeros(0, dtype=np.int64)])
        idx = np.concatenate([np.arange(n), extra])
        aug = np.concatenate([no, np.ones(len(extra), dtype=bool)])
        return TrainSet(np.asarray(images[idx]), labels[idx], aug, np.zeros(len(idx), bool))
    fakes, fake_labels = [], []
    for c, d in enumerate(deficit):
        if d > 0:
            fakes.append(_checked(synth(c, int(d), seed * 1000 + c), int(d), images.shape[1:], c))
            fake_labels.append(np.full(int(d), c, dtype=np.int64))
    m = int(sum(deficit))
    all_images = np.concatenate([np.asarray(images)] + fakes) if fakes else np.asarray(images)
    all_labels = np.concatenate([labels] + fake_labels) if fakes else labels
    synthetic = np.concatenate([no, np.ones(m, dtype=bool)])
    if strategy == "gan_positional":
        augment = np.isin(all_labels, np.flatnonzero(deficit > 0))
    else:
        augment = np.zeros(len(all_labels), dtype=bool)
    return TrainSet(all_images, all_labels, augment, synthetic)


def keep_share(labels: np.ndarray, shares: dict[int, float], seed: int = 0) -> np.ndarray:
    """Rows to keep so that class c keeps round(shares[c] x its count) of its rows, at least
    one (a seeded draw: the same rows on every call); classes not in ``shares`` keep all.
    This is how the study makes a class rare (`--minority`)."""
    labels = np.asarray(labels)
    rng = np.random.default_rng(seed)
    keep = np.ones(len(labels), dtype=bool)
    for c, share in sorted(shares.items()):
        rows = np.flatnonzero(labels == c)
        if not 0 < share <= 1:
            raise ValueError(f"keep_share: share {share} of class {c} must be in (0, 1]")
        dropped = rng.permutation(rows)[max(1, round(share * len(rows))):]
        keep[dropped] = False
    return keep


def _checked(fake: np.ndarray, n: int, shape: tuple, c: int) -> np.ndarray:
    fake = np.asarray(fake)
    if fake.dtype != np.uint8 or fake.shape != (n, *shape):
        raise ValueError(f"synth(class {c}, n={n}) returned {fake.dtype} {fake.shape}; expected "
                         f"uint8 {(n, *shape)} (NHWC at the classifier's resolution/channels)")
    return fake


def to_uint8_nhwc(x: torch.Tensor, resolution: int, channels: int) -> np.ndarray:
    """[-1, 1] NCHW generator output -> uint8 NHWC at ``resolution`` with ``channels``."""
    x = x.detach().float().cpu().clamp(-1, 1)
    if x.shape[-1] != resolution:
        x = F.interpolate(x, size=(resolution, resolution), mode="bilinear",
                          align_corners=False, antialias=True)
    if x.shape[1] != channels:
        x = x.mean(1, keepdim=True).expand(-1, channels, -1, -1)
    x = ((x + 1) * 127.5).round().clamp(0, 255).to(torch.uint8)
    return x.permute(0, 2, 3, 1).contiguous().numpy()


def synth_from_generator(G: torch.nn.Module, latent_dim: int, *, resolution: int,
                         channels: int, device: str | torch.device = "cpu",
                         batch: int = 64, latent_dist: str = "normal") -> Synth:
    """A `Synth` from a generator G(z, labels) -> [-1, 1] images; z seeded, drawn from the
    distribution G was trained with (`latent_dist`)."""
    @torch.no_grad()
    def synth(class_index: int, n: int, seed: int) -> np.ndarray:
        gen = torch.Generator().manual_seed(int(seed))
        out = []
        was_training = G.training
        G.eval()
        try:
            for start in range(0, n, batch):
                m = min(batch, n - start)
                z = draw_latent(m, latent_dim, latent_dist, generator=gen, device=device)
                y = torch.full((m,), int(class_index), dtype=torch.long, device=device)
                out.append(to_uint8_nhwc(G(z, y), resolution, channels))
        finally:
            G.train(was_training)
        return np.concatenate(out) if out else np.zeros((0, resolution, resolution, channels),
                                                          np.uint8)

    return synth


def synth_from_checkpoint(path: str | Path, *, resolution: int, channels: int,
                          classes: Sequence[str] | None = None,
                          device: str | torch.device = "cpu") -> Synth:
    """A `Synth` from a saved GAN (`trainables.gan.load_generator`).  With ``classes`` the
    generator's class names must match the classifier's, in order."""
    G, cfg, gan_classes = load_generator(path, device=device)
    if classes is not None and tuple(gan_classes) != tuple(classes):
        raise ValueError(f"GAN checkpoint {path} was trained on classes {list(gan_classes)}, "
                         f"but the classifier's data set has {list(classes)}; use a GAN trained "
                         "on the same data set")
    return synth_from_generator(G, cfg.latent_dim, resolution=resolution, channels=channels,
                                device=device, latent_dist=cfg.latent_dist)
