"""Real-image feature statistics computed once and reused by every trial and epoch.

One `.npz` per (data set fingerprint, split, resolution, extractor, weights, dims, N):
features (for the exact low-rank Fréchet path, KID and intra-FID), labels, mu, sigma.
"""
from __future__ import annotations

import fcntl
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
        out = self._load(path)
        if out is None:
            self.dir.mkdir(parents=True, exist_ok=True)
            # Trials started together all miss: one computes, the others wait for its file
            # (two trials on 2 cores computed the same Inception statistics side by side for
            # ~4 minutes).  flock is released if the holder dies; the lock file is left.
            with open(self.dir / f"{key}.lock", "a") as lock:
                fcntl.flock(lock, fcntl.LOCK_EX)
                out = self._load(path)
                if out is None:
                    out = compute()
                    # Write beside, then rename: no reader ever sees half a file.
                    with atomic_path(path) as tmp:
                        np.savez(tmp, **out)
                    self.misses += 1
                    return out
        self.hits += 1
        return out

    @staticmethod
    def _load(path: Path) -> dict[str, np.ndarray] | None:
        if not path.is_file():
            return None
        try:
            with np.load(path) as z:
                return {k: z[k] for k in z.files}
        except (OSError, ValueError) as err:  # a torn file from a killed run: rebuild
            raise RuntimeError(f"corrupt feature-statistics cache {path}: delete it and "
                               f"rerun ({err})") from err
