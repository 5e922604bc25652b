"""Which images model selection may read: one rule for the GAN ranking and the classifier.

A source with a test split keeps train / val / test.  A source published with only train and
val (the Kaggle covid19-image-dataset) has no held-out set of its own: its val split becomes
the test set of the classifier study, and validation is a fixed stratified 15 % of train.
The GAN search evaluates (FID, CAS, visual checks) on that same validation part, so the
generator the ranking picks has never been chosen on the images the study tests on.
"""
from __future__ import annotations

import dataclasses
import inspect
from pathlib import Path

import numpy as np

from trainables.data import load_image_set
from trainables.data.default import resolve_default
from trainables.data.manifest import load_manifest

VAL_PERCENT = 15  # of train, when the source has no test split


def split_roles(splits: set[str]) -> tuple[tuple[str, ...], str]:
    """(splits read for training/selection, split held out as the test set)."""
    if "test" in splits:
        return ("train", "val"), "test"
    if splits >= {"train", "val"}:
        return ("train",), "val"
    raise ValueError(f"needs train and val (or test) splits, has {sorted(splits)}")


def stratified_folds(labels: np.ndarray, k: int, seed: int = 0) -> np.ndarray:
    """Fold id (0..k-1) per row; every class spread evenly over the folds (seeded)."""
    rng = np.random.default_rng(seed)
    fold = np.empty(len(labels), dtype=np.int64)
    for c in np.unique(labels):
        idx = rng.permutation(np.flatnonzero(labels == c))
        fold[idx] = np.arange(len(idx)) % k
    return fold


def holdout_mask(labels: np.ndarray) -> np.ndarray:
    """The fixed stratified VAL_PERCENT % of train used for validation (same for everyone):
    per class, round(VAL_PERCENT % of its images) of a seeded permutation, at least one image
    of every class that has two or more."""
    labels = np.asarray(labels)
    rng = np.random.default_rng(0)
    mask = np.zeros(len(labels), dtype=bool)
    for c in np.unique(labels):
        idx = rng.permutation(np.flatnonzero(labels == c))
        k = int(round(len(idx) * VAL_PERCENT / 100))
        mask[idx[:max(k, 1) if len(idx) >= 2 else 0]] = True
    return mask


class RowView:
    """Some rows of a (memory-mapped) array, read on access: a subset without a copy."""

    def __init__(self, base: np.ndarray, rows: np.ndarray):
        self.base, self.rows = base, np.asarray(rows, dtype=np.int64)

    @property
    def shape(self) -> tuple[int, ...]:
        return (len(self.rows), *self.base.shape[1:])

    @property
    def dtype(self):
        return self.base.dtype

    @property
    def ndim(self) -> int:
        return self.base.ndim

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, index):
        return self.base[self.rows[index]]

    def __array__(self, dtype=None, copy=None):
        out = np.asarray(self.base[self.rows])
        return out.astype(dtype) if dtype is not None else out


def subset(image_set, mask: np.ndarray, split: str):
    """The rows of `image_set` where `mask` is true, as an ImageSet named `split`."""
    rows = np.flatnonzero(mask)
    return dataclasses.replace(
        image_set, images=RowView(image_set.images, rows), labels=image_set.labels[rows],
        paths=tuple(image_set.paths[i] for i in rows), split=split,
        fingerprint=f"{image_set.fingerprint}-{split}")


def source_splits(source: str | Path, **options) -> set[str]:
    """The splits `source` has (reads the manifest only, no images, no split access)."""
    accepted = set(inspect.signature(load_manifest).parameters) - {"source"}
    manifest = load_manifest(source, **{k: v for k, v in options.items() if k in accepted})
    return set(manifest.frame["split"].unique())


def load_selection_sets(source: str | Path, *, resolution: int, channels: int = 1, **options):
    """(fit set, validation set) for model selection -- never the held-out test split.

    With a test split: the train and val splits.  Without: train minus / only its fixed
    stratified 15 % (see the module docstring)."""
    if str(source) == "default":
        source = resolve_default(resolution)
    roles, _ = split_roles(source_splits(source, **options))
    train = load_image_set(source, "train", resolution=resolution, channels=channels, **options)
    if "val" in roles:
        val = load_image_set(source, "val", resolution=resolution, channels=channels, **options)
        return train, val
    held = holdout_mask(train.labels)
    return subset(train, ~held, "train_fit"), subset(train, held, "train_val")
