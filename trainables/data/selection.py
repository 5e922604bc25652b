"""Which images model selection may read: one rule for the GAN ranking and the classifier.

A source with a test split keeps train / val / test.  A source published with only train and
val (the Kaggle covid19-image-dataset) has no held-out set of its own: its val split becomes
the test set of the classifier study, and validation is a fixed stratified 15 % of train.
The GAN search evaluates (FID, CAS, visual checks) on that same validation part, so the
generator the ranking picks has never been chosen on the images the study tests on.

The hold-out and the CV folds are drawn over groups, not images, where a manifest has
them (its ``group`` column: a patient, merged with copies and near-copies of an image):
no patient and no near-duplicate cluster sits on both sides. Where every group is one
image (no patient ids, no copies) the draw is the image-level one, unchanged.
"""
from __future__ import annotations

import dataclasses
import inspect
from pathlib import Path

import numpy as np
import pandas as pd

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


def _units(labels: np.ndarray, groups) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(unit per row, label per unit, images per unit). A unit is a group (numbered in order
    of first appearance) or, without groups, an image; a unit's label is its commonest."""
    n = len(labels)
    unit = np.arange(n) if groups is None else pd.factorize(np.asarray(groups), sort=False)[0]
    sizes = np.bincount(unit, minlength=unit.max() + 1 if n else 0)
    if len(sizes) == n:  # every unit one image: the unit's label is the image's
        return unit, labels[np.argsort(unit)], sizes
    counts = pd.crosstab(unit, labels)
    return unit, counts.columns.to_numpy()[counts.to_numpy().argmax(axis=1)], sizes


def stratified_folds(labels: np.ndarray, k: int, seed: int = 0, groups=None) -> np.ndarray:
    """Fold id (0..k-1) per row; every class spread evenly over the folds (seeded).

    With ``groups`` (e.g. `frame_groups`), each group's rows share one fold: groups are
    dealt, per class and largest first, to the fold with the fewest images of that class;
    with one image per group this is the image-level round-robin, fold for fold."""
    labels = np.asarray(labels)
    unit, unit_label, sizes = _units(labels, groups)
    rng = np.random.default_rng(seed)
    fold = np.empty(len(sizes), dtype=np.int64)
    for c in np.unique(labels):
        members = rng.permutation(np.flatnonzero(unit_label == c))
        members = members[np.argsort(-sizes[members], kind="stable")]
        load = np.zeros(k, dtype=np.int64)
        for u in members:
            fold[u] = int(np.argmin(load))  # ties: the lowest fold, hence round-robin
            load[fold[u]] += sizes[u]
    return fold[unit]


def holdout_mask(labels: np.ndarray, groups=None) -> np.ndarray:
    """The fixed stratified VAL_PERCENT % of train used for validation (same for everyone):
    per class, round(VAL_PERCENT % of its images) of a seeded permutation, at least one image
    of every class that has two or more.

    With ``groups`` (e.g. `frame_groups`) whole groups are held out: per class, the
    shortest prefix of a seeded permutation of its groups that reaches the count, always
    leaving one group to fit on; with one image per group this is the image-level mask."""
    labels = np.asarray(labels)
    unit, unit_label, sizes = _units(labels, groups)
    rng = np.random.default_rng(0)
    held = np.zeros(len(sizes), dtype=bool)
    for c in np.unique(labels):
        members = rng.permutation(np.flatnonzero(unit_label == c))
        if len(members) < 2:
            continue
        want = max(int(round(sizes[members].sum() * VAL_PERCENT / 100)), 1)
        take = int(np.searchsorted(np.cumsum(sizes[members]), want)) + 1
        held[members[:min(take, len(members) - 1)]] = True
    return held[unit]


def frame_groups(frame: pd.DataFrame) -> np.ndarray:
    """The manifest's ``group`` per row (patient merged with copies and near-copies)."""
    column = "group" if "group" in frame.columns else "patient_id"
    return frame[column].astype(str).to_numpy()


def set_groups(image_set) -> np.ndarray | None:
    """``frame_groups`` for the rows of an ImageSet, from its saved manifest (None when
    the set names no manifest here: one built in memory, or published by a driver whose
    cache this node does not see)."""
    path = Path(image_set.manifest_dir or "-") / "manifest.parquet"
    if not image_set.manifest_dir or not path.is_file():
        return None
    frame = pd.read_parquet(path)
    by_path = pd.Series(frame_groups(frame), index=frame["path"])
    return by_path.loc[list(image_set.paths)].to_numpy()


def pooled_groups(image_sets) -> np.ndarray | None:
    """`set_groups` of several sets, concatenated in order (None if any set has none)."""
    parts = [set_groups(s) for s in image_sets]
    return None if any(p is None for p in parts) else np.concatenate(parts)


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

    @property
    def nbytes(self) -> int:
        return len(self.rows) * self.base[:1].nbytes  # what a copy of these rows would take

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
    held = holdout_mask(train.labels, groups=set_groups(train))
    return subset(train, ~held, "train_fit"), subset(train, held, "train_val")
