"""Epoch data time: memory-mapped decoded-image cache vs decoding every image every epoch.

    python benchmarks/data_cache.py                      # covid19-image-dataset, train, 64 px
    python benchmarks/data_cache.py --resolution 112 --channels 3 --epochs 3

Both paths produce the same float batches (shuffled, NCHW in [-1, 1]); only the source of
the uint8 pixels differs. The cache is built in a temporary folder first (its one-off build
time is printed too) and is not counted in the per-epoch time.
"""
from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from trainables.data import PreprocessConfig, load_image_set, to_tensor
from trainables.data.preprocess import decode_image, preprocess

REPO_ROOT = Path(__file__).resolve().parents[1]
DEFAULT_SOURCE = REPO_ROOT.parent / "shared" / "data" / "covid19-image-dataset"


def epoch_cached(images: np.ndarray, order: np.ndarray, batch_size: int) -> float:
    """Seconds for one shuffled pass over the memory-mapped cache."""
    start = time.perf_counter()
    for i in range(0, len(order), batch_size):
        idx = np.sort(order[i:i + batch_size])  # sorted indices read the memmap in order
        to_tensor(images[idx])
    return time.perf_counter() - start


def epoch_decoded(paths: tuple[str, ...], order: np.ndarray, batch_size: int, *,
                  resolution: int, channels: int, cfg: PreprocessConfig) -> float:
    """Seconds for one shuffled pass that decodes and resizes every image again."""
    start = time.perf_counter()
    for i in range(0, len(order), batch_size):
        batch = [preprocess(decode_image(paths[j]), resolution=resolution, channels=channels,
                            cfg=cfg) for j in order[i:i + batch_size]]
        to_tensor(np.stack(batch))
    return time.perf_counter() - start


def main(argv: list[str] | None = None) -> dict[str, float]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--source", type=Path, default=DEFAULT_SOURCE)
    parser.add_argument("--split", default="train")
    parser.add_argument("--resolution", type=int, default=64)
    parser.add_argument("--channels", type=int, default=1)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--epochs", type=int, default=3)
    # One thread, as in a data-loading worker: on a busy 2-core machine two intra-op
    # threads on tiny tensors measure thread contention, not data time.
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    cfg = PreprocessConfig()
    with tempfile.TemporaryDirectory() as cache_dir:
        start = time.perf_counter()
        s = load_image_set(args.source, args.split, resolution=args.resolution,
                           channels=args.channels, cache_dir=cache_dir, duplicates="keep")
        build = time.perf_counter() - start
        rng = np.random.default_rng(0)
        cached, decoded = [], []
        for _ in range(args.epochs):
            order = rng.permutation(len(s))
            cached.append(epoch_cached(s.images, order, args.batch_size))
            decoded.append(epoch_decoded(s.paths, order, args.batch_size,
                                         resolution=args.resolution, channels=args.channels,
                                         cfg=cfg))
    result = {"images": len(s), "cache_build_s": build,
              "epoch_cached_s": statistics.median(cached),
              "epoch_decoded_s": statistics.median(decoded)}
    result["speedup"] = result["epoch_decoded_s"] / result["epoch_cached_s"]
    print(f"{args.source.name}/{args.split}: {len(s)} images at {args.resolution}px x "
          f"{args.channels}ch, batch {args.batch_size}, median of {args.epochs} epochs")
    print(f"  cache build (once):      {build:8.3f} s")
    print(f"  epoch, memory-mapped:    {result['epoch_cached_s']:8.4f} s")
    print(f"  epoch, decode each time: {result['epoch_decoded_s']:8.3f} s")
    print(f"  ratio cached/decoded:    {1 / result['speedup']:.4f}  "
          f"(cache is {result['speedup']:.0f}x faster)")
    return result


if __name__ == "__main__":
    main()
