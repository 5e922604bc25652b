"""Data layer: manifest -> patient-level splits -> decoded-image cache -> tensors.

    s = load_image_set("../shared/data/covid19-image-dataset", "train", resolution=64,
                       duplicates="keep")
    x = to_tensor(s.images[:32])            # (32, 1, 64, 64) float in [-1, 1]
    y = torch.from_numpy(s.labels[:32])

Every call is recorded in `split_access_log()` as (fingerprint, split), so a test can prove
that model selection never read the test split. Ray workers are other processes: set
$CXR_SPLIT_ACCESS_LOG to a file and every process appends "fingerprint split pid" lines to it
(`read_split_access_file()` reads them back).
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from .augment import PositionalAugment
from .cache import fingerprint as _fingerprint
from .cache import load_or_build
from .default import resolve_default
from .errors import DataError
from .manifest import Manifest, default_cache_dir, load_manifest, write_atomic
from .preprocess import PreprocessConfig
from .readers import FRONTAL_VIEWS

__all__ = ["DataError", "ImageSet", "Manifest", "PositionalAugment", "PreprocessConfig",
           "clear_split_access_log", "load_image_set", "load_manifest", "read_split_access_file",
           "split_access_log",
           "to_tensor"]

SPLITS = ("train", "val", "test")
ACCESS_LOG_ENV = "CXR_SPLIT_ACCESS_LOG"
_ACCESS_LOG: list[tuple[str, str]] = []


@dataclass(frozen=True, eq=False)  # eq=False: arrays make field-wise ==/hash meaningless
class ImageSet:
    """One split of one source, decoded once and memory-mapped.

    images: uint8 (N, H, W, C), C in {1, 3}; a read-only np.memmap of the cache file.
    labels: int64 (N,), index into ``classes`` (the same tuple for every split of a source).
    paths: source file of each image (npz: "file.npz#train/17").
    fingerprint: hash of (manifest content, split, resolution, channels, preprocess).
    skipped: images left out as unreadable (only with skip_bad=True), also in skipped.csv.
    """

    images: np.ndarray
    labels: np.ndarray
    classes: tuple[str, ...]
    paths: tuple[str, ...]
    split: str
    fingerprint: str
    skipped: tuple[str, ...] = ()
    manifest_dir: str = ""

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    def class_counts(self) -> dict[str, int]:
        """Images per class name."""
        counts = np.bincount(self.labels, minlength=len(self.classes))
        return {c: int(n) for c, n in zip(self.classes, counts)}


def split_access_log() -> list[tuple[str, str]]:
    """(fingerprint, split) of every `load_image_set` call in this process, in order."""
    return list(_ACCESS_LOG)


def read_split_access_file(path: str | Path | None = None) -> list[tuple[str, str]]:
    """(fingerprint, split) lines written by all processes to $CXR_SPLIT_ACCESS_LOG (or path)."""
    path = Path(path or os.environ[ACCESS_LOG_ENV])
    if not path.is_file():
        return []
    return [tuple(line.split()[:2]) for line in path.read_text().splitlines() if line.strip()]


def _record_access(fp: str, split: str) -> None:
    _ACCESS_LOG.append((fp, split))
    target = os.environ.get(ACCESS_LOG_ENV)
    if target:
        # One short O_APPEND write per line: lines from concurrent processes do not interleave.
        fd = os.open(target, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            os.write(fd, f"{fp} {split} {os.getpid()}\n".encode())
        finally:
            os.close(fd)


def clear_split_access_log() -> None:
    """Forget the recorded accesses (tests)."""
    _ACCESS_LOG.clear()


def load_image_set(source: str | Path, split: str, *, resolution: int, channels: int = 1,
                   preprocess: PreprocessConfig | dict | None = None, seed: int = 0,
                   cache_dir: str | Path | None = None, skip_bad: bool = False,
                   layout: str | None = None, label_map: dict[str, str] | None = None,
                   classes: tuple[str, ...] | None = None, exclude_labels=(),
                   val_fraction: float = 0.15, test_fraction: float = 0.15,
                   duplicates: str = "error", views: tuple[str, ...] = FRONTAL_VIEWS,
                   ) -> ImageSet:
    """Load ``split`` of ``source`` at ``resolution`` x ``resolution`` x ``channels``.

    source: a folder of class folders, a COVIDx folder or train.txt, an ieee8023
    metadata.csv, a MedMNIST .npz, or "default" (PneumoniaMNIST). The manifest and split
    are saved under ``cache_dir`` ($CXR_CACHE_DIR or ~/.cache/cxr-gan-search) and reused.
    preprocess: a PreprocessConfig or its dict (unknown keys rejected); applied once, at
    cache-build time. skip_bad: skip unreadable images instead of raising; they are printed,
    listed in skipped.csv beside the manifest and in ``ImageSet.skipped``.
    duplicates: "error" (byte-identical files under two names raise), "keep" (recorded
    in duplicates.csv; kept in one split when the split is computed here) or "drop" (one
    image of each group kept, the earliest split's: train, then val, then test; printed and
    recorded). MedMNIST npz entries are arrays, not files: under "error" their identical
    images are only recorded, "drop" drops them like files.
    seed, val_fraction and test_fraction only matter where the source has no split of its own.
    """
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    if resolution < 1:
        raise ValueError(f"resolution must be positive, got {resolution}")
    cfg = PreprocessConfig.from_dict(preprocess) if isinstance(preprocess, dict) else \
        (preprocess or PreprocessConfig())
    cache_dir = Path(cache_dir or default_cache_dir())
    if str(source) == "default":
        source = resolve_default(resolution)
    manifest = load_manifest(source, layout=layout, label_map=label_map, classes=classes,
                             exclude_labels=tuple(exclude_labels), seed=seed,
                             val_fraction=val_fraction, test_fraction=test_fraction,
                             duplicates=duplicates, views=tuple(views), cache_dir=cache_dir)
    rows = manifest.frame[manifest.frame["split"] == split].reset_index(drop=True)
    if rows.empty:
        have = sorted(manifest.frame["split"].unique())
        raise DataError(f"{source}: has no {split!r} split (it has {have}); use one of those")
    fp = _fingerprint(manifest.digest, split, resolution, channels, cfg)
    _record_access(fp, split)
    images, kept, skipped = load_or_build(rows, fp, resolution=resolution, channels=channels,
                                          cfg=cfg, cache_dir=cache_dir, skip_bad=skip_bad)
    if skipped:
        _record_skipped(manifest, split, skipped)
    rows = rows.iloc[kept]
    labels = rows["label"].map({c: i for i, c in enumerate(manifest.classes)})
    return ImageSet(images=images, labels=labels.to_numpy(dtype=np.int64),
                    classes=manifest.classes, paths=tuple(rows["path"]), split=split,
                    fingerprint=fp, skipped=tuple(p for p, _ in skipped),
                    manifest_dir=str(manifest.directory))


def _record_skipped(manifest: Manifest, split: str, skipped: list[tuple[str, str]]) -> None:
    """Print and save (skipped.csv beside the manifest) which images were left out."""
    path = manifest.directory / "skipped.csv"
    new = pd.DataFrame([{"split": split, "path": p, "reason": r} for p, r in skipped])
    old = pd.read_csv(path) if path.is_file() else new.iloc[:0]
    both = pd.concat([old, new]).drop_duplicates(["split", "path"])
    write_atomic(path, both.to_csv(index=False).encode())
    msg = (f"skip_bad=True: skipped {len(skipped)} unreadable image(s) of the {split!r} split "
           f"(listed in {path}): " + ", ".join(p for p, _ in skipped[:5]))
    print(msg)  # once: a log.warning beside it repeated it on stderr


def to_tensor(images_uint8_batch: np.ndarray | torch.Tensor,
              value_range: str = "[-1,1]") -> torch.Tensor:
    """NHWC uint8 batch -> NCHW float32 in ``value_range`` ("[-1,1]" or "[0,1]")."""
    x = images_uint8_batch
    if isinstance(x, np.ndarray):
        x = torch.from_numpy(np.array(x))  # a copy: the memmap is read-only
    if x.dtype != torch.uint8 or x.ndim != 4:
        raise ValueError(f"to_tensor expects a uint8 (N, H, W, C) batch, got {x.dtype} "
                         f"{tuple(x.shape)}")
    x = x.permute(0, 3, 1, 2).float()
    if value_range == "[-1,1]":
        return x.mul_(2.0 / 255.0).sub_(1.0)
    if value_range == "[0,1]":
        return x.div_(255.0)
    raise ValueError(f"value_range must be '[-1,1]' or '[0,1]', got {value_range!r}")
