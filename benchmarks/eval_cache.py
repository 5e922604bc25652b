"""Time of a second `GanEvaluator` set-up + evaluation (real statistics cached) over the first.

    python benchmarks/eval_cache.py [--n-real 40] [--n-fake 16]

Uses the covid19-image-dataset val split from ../shared/data and a stand-in generator
(real training images plus noise); prints both times and their ratio.
"""
from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]


class _CopyG(torch.nn.Module):
    def __init__(self, images: np.ndarray):
        super().__init__()
        self.images = torch.from_numpy(np.array(images)).permute(0, 3, 1, 2).float() / 127.5 - 1

    def forward(self, z, labels):
        idx = (z[:, 0].abs() * 1000).long() % len(self.images)
        return (self.images[idx] + 0.05 * z[:, 1, None, None, None]).clamp(-1, 1)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--data", type=Path, default=REPO.parent / "shared/data/covid19-image-dataset")
    p.add_argument("--n-real", type=int, default=40)
    p.add_argument("--n-fake", type=int, default=16)
    args = p.parse_args(argv)
    from trainables.data import load_image_set
    from trainables.metrics import GanEvaluator
    torch.set_num_threads(2)
    with tempfile.TemporaryDirectory() as tmp:
        sets = {s: load_image_set(args.data, s, resolution=64, cache_dir=Path(tmp) / "data",
                                  duplicates="keep") for s in ("train", "val")}
        val = sets["val"]
        idx = np.linspace(0, len(val) - 1, args.n_real).round().astype(int)
        real = type(val)(images=np.asarray(val.images)[idx], labels=val.labels[idx],
                         classes=val.classes, paths=tuple(np.asarray(val.paths)[idx]),
                         split=val.split, fingerprint=f"{val.fingerprint}-sub{args.n_real}")
        g = _CopyG(sets["train"].images)
        times = []
        for _ in range(2):
            t = time.perf_counter()
            ev = GanEvaluator(real, metrics=("fid", "kid", "intra_fid"), n_fake=args.n_fake,
                              cache_dir=Path(tmp) / "stats", device="cpu")
            m = ev(g, epoch=0)
            times.append(time.perf_counter() - t)
            print(f"evaluation {len(times)}: {times[-1]:.1f} s, fid={m['fid']:.2f} "
                  f"(N real {int(m['fid_n_real'])}, N fake {int(m['fid_n_fake'])}, "
                  f"{ev.protocol['dims']}-d), cache hits {ev.cache.hits}")
    print(f"second/first time ratio: {times[1] / times[0]:.3f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
