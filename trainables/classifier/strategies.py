"""Class-imbalance strategies: which images (real, re-drawn, synthetic) a classifier trains
on, whether they are augmented on the fly, and the loss's class weights.

none            all real training images as they are
class_weights   all real images; loss weighted n / (K * n_c) (Keras' "balanced")
undersample     every class randomly cut to the smallest class's count
oversample      filled-up classes get re-drawn real images; nothing is augmented
positional      oversample's rows, and every row of every class positionally augmented
gan             filled-up classes get GAN images (synthetic rows only in those classes)
gan_positional  gan's rows, and every row of every class positionally augmented
gan_balanced    every class gets the same number of rows and the same share of GAN images

"Filled up" means up to T = ceil(gan_ratio x largest class count) rows per class; a class
that already has T or more keeps its rows and gets none added.

Augmentation is a property of the run (`TrainSet.augment` is one bool), never of a class:
test images are not augmented, so a classifier trained with only the minority's rows
augmented learns "augmented means COVID-19" (issue 21: augmenting the test images dropped
Normal recall from 0.84 to 0.34).  The same holds for "synthetic": under `gan` only the
filled-up classes hold GAN images, so GAN artefacts can predict the class; `gan_balanced`
removes that marker.

gan_balanced: each class gets T rows, of which T - min(T, n_min) are synthetic (n_min: the
rarest class's count), so every class has the same synthetic share s = 1 - n_min / T and the
same n_real = min(T, n_min) real rows per epoch.  The rarest class uses all its real images
once; a larger class c draws its n_real real rows afresh every epoch, without replacement,
from all its n_c (`TrainSet.epoch_rows`), so no real image repeats within an epoch.  The
cost: per epoch a class leaves out n_c - n_real of its real images (at 10:1 imbalance and
gan_ratio 1, 90 % of the majority's real images per epoch, and 90 % of every class's rows are
synthetic); over E epochs a given real image is still seen with probability
1 - (1 - n_real / n_c)^E.  Keeping all real rows instead would need the same synthetic share
on unequal class totals, which leaves the imbalance as it was.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional, Sequence

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F

from trainables.classifier.config import GAN_STRATEGIES, check_strategy
from trainables.gan import load_generator
from trainables.gan.sampling import draw_latent

# synth(class_index, n, seed) -> uint8 (n, H, W, C) images of that class.
Synth = Callable[[int, int, int], np.ndarray]
AUGMENTED = ("positional", "gan_positional")  # strategies that augment every row


@dataclass(frozen=True)
class TrainSet:
    """What one classifier run trains on.

    images (uint8 NHWC) / labels: every row the run can train on; synthetic: rows made by a
    GAN; augment: whether every row of every class is positionally augmented on the fly (one
    bool for the run: a per-class choice would mark the class); class_weights: loss weights;
    real_per_class: None (every row, every epoch) or, for gan_balanced, how many real rows of
    each class an epoch draws afresh beside all synthetic rows (`epoch_rows`).
    """

    images: np.ndarray
    labels: np.ndarray
    augment: bool
    synthetic: np.ndarray
    class_weights: Optional[np.ndarray] = None
    real_per_class: Optional[np.ndarray] = None

    def __post_init__(self) -> None:
        if not isinstance(self.augment, (bool, np.bool_)):
            raise TypeError(f"TrainSet.augment must be one bool for the whole run (every row or "
                            f"none), got {type(self.augment).__name__}")
        if self.real_per_class is not None:
            real = np.bincount(self.labels[~self.synthetic], minlength=len(self.real_per_class))
            if (real < self.real_per_class).any():
                raise ValueError(f"real_per_class {self.real_per_class.tolist()} exceeds the real "
                                 f"rows per class {real.tolist()}")

    def __len__(self) -> int:
        """Rows per epoch."""
        if self.real_per_class is None:
            return int(self.labels.shape[0])
        return int(self.synthetic.sum() + self.real_per_class.sum())

    def epoch_rows(self, gen: torch.Generator | None = None) -> np.ndarray:
        """Sorted indices of one epoch's rows: all rows, or (real_per_class) every synthetic
        row plus real_per_class[c] real rows of each class c, drawn without replacement from
        ``gen``.  Draws nothing from ``gen`` when every row is used."""
        if self.real_per_class is None:
            return np.arange(len(self.labels))
        parts = [np.flatnonzero(self.synthetic)]
        for c, r in enumerate(self.real_per_class):
            pool = np.flatnonzero(~self.synthetic & (self.labels == c))
            parts.append(pool[torch.randperm(len(pool), generator=gen)[:int(r)].numpy()])
        return np.sort(np.concatenate(parts))


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
    """The training rows for ``strategy`` (see the module docstring); seeded.  The old
    names `oversample_positional` and `oversample_gan` raise a ValueError naming the new."""
    check_strategy(strategy)
    if strategy in GAN_STRATEGIES and synth is None:
        raise ValueError(f"strategy {strategy!r} needs a GAN generator: pass synth= (a "
                         "synth(class_index, n, seed) function, e.g. synth_from_checkpoint(path))")
    images, labels = np.asarray(images), np.asarray(labels, dtype=np.int64)
    rng = np.random.default_rng(seed)
    counts = np.bincount(labels, minlength=num_classes)
    augment = strategy in AUGMENTED
    real = np.zeros(len(labels), dtype=bool)
    if strategy in ("none", "class_weights"):
        weights = balanced_weights(labels, num_classes) if strategy == "class_weights" else None
        return TrainSet(images, labels, augment, real, weights)
    if strategy == "undersample":
        m = int(counts[counts > 0].min())
        keep = np.sort(np.concatenate([rng.choice(np.flatnonzero(labels == c), m, replace=False)
                                       for c in range(num_classes) if counts[c] > 0]))
        return TrainSet(images[keep], labels[keep], augment, real[keep])
    if strategy == "gan_balanced":
        return _gan_balanced(images, labels, counts, synth, gan_ratio, seed)
    deficit = fill_targets(counts, gan_ratio) - counts
    if strategy in ("oversample", "positional"):
        extra = np.concatenate([rng.choice(np.flatnonzero(labels == c), d, replace=True)
                                for c, d in enumerate(deficit) if d > 0 and counts[c] > 0]
                               + [np.zeros(0, dtype=np.int64)])
        idx = np.concatenate([np.arange(len(labels)), extra])
        return TrainSet(images[idx], labels[idx], augment, np.zeros(len(idx), dtype=bool))
    return _with_synthetic(images, labels, deficit, synth, seed, augment)


def _with_synthetic(images: np.ndarray, labels: np.ndarray, per_class: np.ndarray, synth: Synth,
                    seed: int, augment: bool, real_per_class: np.ndarray | None = None
                    ) -> TrainSet:
    """All real rows plus per_class[c] GAN images of each class c."""
    fakes, fake_labels = [np.zeros((0, *images.shape[1:]), images.dtype)], [labels[:0]]
    for c, d in enumerate(per_class):
        if d > 0:
            fakes.append(_checked(synth(c, int(d), seed * 1000 + c), int(d), images.shape[1:], c))
            fake_labels.append(np.full(int(d), c, dtype=np.int64))
    all_labels = np.concatenate([labels] + fake_labels)
    synthetic = np.arange(len(all_labels)) >= len(labels)
    return TrainSet(np.concatenate([images] + fakes), all_labels, augment, synthetic,
                    real_per_class=real_per_class)


def _gan_balanced(images: np.ndarray, labels: np.ndarray, counts: np.ndarray, synth: Synth,
                  gan_ratio: float, seed: int) -> TrainSet:
    """T rows per class, T - min(T, n_min) of them synthetic (see the module docstring)."""
    if (counts == 0).any():
        raise ValueError(f"gan_balanced: class(es) {np.flatnonzero(counts == 0).tolist()} have "
                         "no real training images, so no class could keep any real image at an "
                         "equal synthetic share; use 'gan'")
    target = math.ceil(gan_ratio * int(counts.max()))
    n_real = min(target, int(counts.min()))
    per_class = np.full(len(counts), target - n_real)
    return _with_synthetic(images, labels, per_class, synth, seed, False,
                           real_per_class=np.full(len(counts), n_real))


def composition(train_set: TrainSet, classes: Sequence[str], strategy: str) -> pd.DataFrame:
    """One row per class: real and synthetic rows per epoch, and the share of the class's
    rows that are augmented per epoch (equal across classes by construction)."""
    k = len(classes)
    synthetic = np.bincount(train_set.labels[train_set.synthetic], minlength=k)
    real = (np.bincount(train_set.labels[~train_set.synthetic], minlength=k)
            if train_set.real_per_class is None else np.asarray(train_set.real_per_class))
    return pd.DataFrame({"strategy": strategy, "class": list(classes),
                         "real": real.astype(np.int64), "synthetic": synthetic.astype(np.int64),
                         "augmented_share": float(train_set.augment)})


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
