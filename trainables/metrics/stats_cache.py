"""Real-image feature statistics computed once and reused by every trial and epoch.

One `.npz` per (data set fingerprint, split, resolution, extractor, weights, dims, N):
features (for the exact low-rank Fréchet path, KID and intra-FID), labels, mu, sigma.
"""
from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Callable

import numpy as np

from trainables.atomic import atomic_path


def default_stats_dir() -> Path:
    """$CXR_CACHE_DIR/fid-stats (default ~/.cache/cxr-gan-search/fid-stats)."""
    root = os.environ.get("CXR_CACHE_DIR", Path.home() / ".cache" / "cxr-gan-search")
    return Path(root) / "fid-stats"


def stats_key(*, fingerprint: str, split: str, resolution: int, extractor: str,
              weights_sha256: str, dims: int, n: int) -> str:
    """A readable, collision-safe file stem for one set of real statistics."""
    fields = dict(fingerprint=fingerprint, split=split, resolution=resolution,
                  extractor=extractor, weights=weights_sha256, dims=dims, n=n)
    digest = hashlib.sha256(json.dumps(fields, sort_keys=True).encode()).hexdigest()[:16]
    return f"{split}-{resolution}px-{extractor}-{dims}d-n{n}-{digest}"


class StatsCache:
    """`get(key, compute)`: load `<dir>/<key>.npz` or compute, save atomically and return."""

    def __init__(self, cache_dir: Path | str | None = None):
        self.dir = Path(cache_dir) if cache_dir else default_stats_dir()
        self.hits = 0
        self.misses = 0

    def path(self, key: str) -> Path:
        return self.dir / f"{key}.npz"

    def get(self, key: str, compute: Callable[[], dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
        path = self.path(key)
        if path.is_file():
            try:
                with np.load(path) as z:
                    out = {k: z[k] for k in z.files}
                self.hits += 1
                return out
            except (OSError, ValueError) as err:  # a torn file from a killed run: rebuild
                raise RuntimeError(f"corrupt feature-statistics cache {path}: delete it and "
                                   f"rerun ({err})") from err
        arrays = compute()
        self.dir.mkdir(parents=True, exist_ok=True)
        # Write beside, then rename: parallel trials never read half a file.
        with atomic_path(path) as tmp:
            np.savez(tmp, **arrays)
        self.misses += 1
        return arrays
