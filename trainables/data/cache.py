"""Decoded-image cache: one uint8 ``.npy`` per (manifest, split, resolution, channels,
preprocess) that trials memory-map, so no trial decodes JPEG/PNG per epoch.

Files: ``<cache_dir>/images/<fingerprint>.npy`` and ``<fingerprint>.json`` (which rows of
the split are in the array, and which were skipped as unreadable and why). Both are written
atomically (unique temporary file + os.replace); several processes building the same cache
at once each write identical content, and the last replace wins.
"""
from __future__ import annotations

import hashlib
import json
import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image

from trainables.atomic import atomic_path, write_bytes_atomic

from .errors import DataError
from .preprocess import PreprocessConfig, decode_image, preprocess


def fingerprint(manifest_digest: str, split: str, resolution: int, channels: int,
                cfg: PreprocessConfig) -> str:
    """Cache key of one decoded split."""
    text = json.dumps([manifest_digest, split, resolution, channels, cfg.key()])
    return hashlib.sha256(text.encode()).hexdigest()


def _npz_image(path: str, arrays: dict) -> Image.Image:
    npz_file, _, where = path.rpartition("#")
    split, _, index = where.partition("/")
    key = (npz_file, split)
    if key not in arrays:
        with np.load(npz_file) as data:
            arrays[key] = data[f"{split}_images"]
    arr = arrays[key][int(index)]
    return Image.fromarray(arr, "L" if arr.ndim == 2 else "RGB")


def _decode_one(path: str, arrays: dict, resolution: int, channels: int,
                cfg: PreprocessConfig) -> np.ndarray | DataError:
    try:
        img = _npz_image(path, arrays) if "#" in path else decode_image(path)
        return preprocess(img, resolution=resolution, channels=channels, cfg=cfg)
    except DataError as exc:
        return exc


def decode_rows(paths: list[str], *, resolution: int, channels: int, cfg: PreprocessConfig,
                out: np.ndarray, workers: int = 2) -> list[tuple[int, str]]:
    """Decode ``paths`` into ``out`` in order; returns (position, reason) of unreadable ones.

    The positions of unreadable images are left untouched in ``out``.
    """
    arrays: dict = {}
    if any("#" in p for p in paths):
        workers = 1  # npz arrays are already decoded; threads would only add overhead
    bad: list[tuple[int, str]] = []
    with ThreadPoolExecutor(max_workers=workers) as pool:
        # PIL releases the GIL while decoding, so threads use both cores.
        results = pool.map(lambda p: _decode_one(p, arrays, resolution, channels, cfg), paths,
                           chunksize=8)
        for i, result in enumerate(results):
            if isinstance(result, DataError):
                bad.append((i, str(result)))
            else:
                out[i] = result
    return bad


def load_or_build(rows: pd.DataFrame, fp: str, *, resolution: int, channels: int,
                  cfg: PreprocessConfig, cache_dir: Path, skip_bad: bool,
                  ) -> tuple[np.memmap, list[int], list[tuple[str, str]]]:
    """Memory-map the cached split, building it first if needed.

    Returns (images, kept positions within ``rows``, [(path, reason)] of skipped images).
    Without ``skip_bad`` an unreadable image raises DataError (naming the file).
    """
    directory = Path(cache_dir) / "images"
    npy, side = directory / f"{fp}.npy", directory / f"{fp}.json"
    if not (npy.is_file() and side.is_file()):
        _build(rows, npy, side, resolution=resolution, channels=channels, cfg=cfg,
               skip_bad=skip_bad)
    info = json.loads(side.read_text())
    skipped = [tuple(s) for s in info["skipped"]]
    if skipped and not skip_bad:
        raise DataError(f"{skipped[0][1]} ({len(skipped)} unreadable image(s) in this split; "
                        "pass skip_bad=True to skip them, recorded in skipped.csv)")
    images = np.load(npy, mmap_mode="r")
    if images.shape[0] != len(info["kept"]):
        raise DataError(f"{npy}: cache file holds {images.shape[0]} images, its {side.name} "
                        f"{len(info['kept'])}; delete both to rebuild")
    return images, info["kept"], skipped


def _build(rows: pd.DataFrame, npy: Path, side: Path, *, resolution: int, channels: int,
           cfg: PreprocessConfig, skip_bad: bool) -> None:
    npy.parent.mkdir(parents=True, exist_ok=True)
    paths = rows["path"].tolist()
    shape = (len(paths), resolution, resolution, channels)
    with atomic_path(npy) as tmp:
        out = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.uint8, shape=shape)
        bad = decode_rows(paths, resolution=resolution, channels=channels, cfg=cfg, out=out,
                          workers=min(4, os.cpu_count() or 1))
        if bad and not skip_bad:
            raise DataError(f"{bad[0][1]} ({len(bad)} unreadable image(s) in this split)")
        bad_positions = {b for b, _ in bad}
        kept = [i for i in range(len(paths)) if i not in bad_positions]
        if bad:
            out = _compact(out, kept, tmp)
        out.flush()
        del out
        info = {"kept": kept, "skipped": [[paths[i], reason] for i, reason in bad],
                "shape": [len(kept), resolution, resolution, channels]}
        # The sidecar first: the array only appears once its row list is there.
        write_bytes_atomic(side, json.dumps(info).encode())


def _compact(out: np.memmap, kept: list[int], tmp: Path) -> np.memmap:
    """Copy the kept rows into a new file that replaces ``tmp`` (skips are rare)."""
    with atomic_path(tmp) as tmp2:
        small = np.lib.format.open_memmap(tmp2, mode="w+", dtype=np.uint8,
                                          shape=(len(kept), *out.shape[1:]))
        for j, i in enumerate(kept):
            small[j] = out[i]
        small.flush()
        del out
    return small
