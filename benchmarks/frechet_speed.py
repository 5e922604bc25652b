"""Speed of the exact Fréchet distance versus pytorch-fid's `calculate_frechet_distance`.

    python benchmarks/frechet_speed.py [--sizes 500 2048] [--dims 2048]

Features are synthetic but FID-like (non-negative, correlated, 2048-d); prints per-N times,
the relative difference and the speed-up ratio.
"""
from __future__ import annotations

import argparse
import time

import numpy as np


def _features(n: int, d: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return np.abs(rng.normal(size=(n, 256)) @ rng.normal(size=(256, d)) / 16) + rng.random(d)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--sizes", type=int, nargs="+", default=[500, 2048])
    p.add_argument("--dims", type=int, default=2048)
    args = p.parse_args(argv)
    from pytorch_fid.fid_score import calculate_frechet_distance

    from trainables.metrics.frechet import feature_statistics, frechet_distance_from_features
    for n in args.sizes:
        f1, f2 = _features(n, args.dims, 1), _features(n, args.dims, 2)
        t = time.perf_counter()
        ours = frechet_distance_from_features(f1, f2)
        t_ours = time.perf_counter() - t
        t = time.perf_counter()
        ref = calculate_frechet_distance(*feature_statistics(f1), *feature_statistics(f2))
        t_ref = time.perf_counter() - t
        print(f"N={n} d={args.dims}: exact {t_ours:.3f} s, pytorch-fid {t_ref:.2f} s, "
              f"speed-up {t_ref / t_ours:.1f}x, relative difference {abs(ours - ref) / ref:.2e} "
              f"(pytorch-fid is inexact here when N <= d: singular covariance)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
