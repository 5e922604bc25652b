"""Does a GAN trained by this tool learn to draw chest X-rays?  One fixed CPU budget per family.

    python -m benchmarks.gan_learns                                # acgan, dcgan, cgan: 10 min each
    python -m benchmarks.gan_learns --families cgan-s2             # the cGAN at S2's own schedule
    python -m benchmarks.gan_learns --families acgan --minutes 3 --set diffaugment=color,translation,cutout

Each row (ROWS) trains one family at a seed preset's settings at 64 px, grey, width 0.5 and at
most 40 batches per epoch on `covid19-radiography-subset` (2-class, 3,000 images) until the
budget is spent (the epoch that passes it is finished).  Then the first and the last epoch's
generators are evaluated on the selection hold-out (never the test split) at the same N:
768-d FID (N fakes vs the hold-out), the real-vs-real floor (N real *training* images vs the
hold-out: what FID at this N cannot go below), the within-class diversity ratio (smallest over
classes; 1 = as varied as real), CAS with its real-data ceiling and chance, and the last
epoch's D(G(z)) in D's step (`d_g_z1`) and in G's step (`d_g_z2`).  The first/last sample
grids are written to --out as PNGs: look at them.
"""
from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import torch

from orchestrator.config import parse_overrides
from trainables.context import standalone_context
from trainables.data.selection import load_selection_sets
from trainables.gan import GANConfig, load_generator, preset, train_gan
from trainables.gan.build import trained_classes
from trainables.metrics.evaluator import GanEvaluator

# One row per benchmark entry: (family, seed preset, overrides on top of that preset, what it is).
# The default rows are the three families as the product trains them.  S2's own schedule (one D
# step per 10 G steps, batch 4, beta1 0.9, warm restarts) collapses to one image per class, as
# its authors report (a grey image after ~600 epochs), so the cGAN row keeps S2's architecture
# and takes the 1:1 schedule of the other seeds; `cgan-s2` is the seed's schedule as published.
ROWS: dict[str, tuple[str, str, dict, str]] = {
    "acgan": ("acgan", "s0", {}, "s0"),
    "dcgan": ("dcgan", "s1", {}, "s1"),
    "cgan": ("cgan", "s2", {"g_steps_per_d": 1, "batch_size": 32, "beta1": 0.5,
                            "scheduler": "none"},
             "s2 architecture, one D step per G step, batch 32, beta1 0.5, no scheduler"),
    "cgan-s2": ("cgan", "s2", {}, "s2: batch 4, one D step per 10 G steps"),
}
DEFAULT_ROWS = ("acgan", "dcgan", "cgan")
DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "covid19-radiography-subset"


class BudgetSpent(Exception):
    """Raised from the report callback once the time budget is used up."""


def train_for(cfg: GANConfig, train, run_dir: Path, minutes: float) -> list[dict]:
    """Train until `minutes` have passed (at epoch granularity); returns the epoch reports."""
    ctx = standalone_context(run_dir)
    t0, reports = time.perf_counter(), []

    def report(metrics: dict, _epoch_dir) -> None:
        reports.append(dict(metrics))
        print(f"  epoch {int(metrics['epoch']):3d}  d_loss {metrics['d_loss']:.3f}  "
              f"g_loss {metrics['g_loss']:.3f}  d_g_z1 {metrics['d_g_z1']:.3f}  "
              f"d_g_z2 {metrics['d_g_z2']:.3f}  {time.perf_counter() - t0:5.0f} s", flush=True)
        if metrics.get("diverged") or time.perf_counter() - t0 > minutes * 60:
            raise BudgetSpent

    ctx.report = report
    try:
        train_gan(cfg, train, ctx)
    except BudgetSpent:
        pass
    return reports


def evaluate_epoch(ev: GanEvaluator, epoch_dir: Path) -> dict[str, float]:
    G, _, _ = load_generator(epoch_dir)
    return ev(G, 0)


def run_family(row: str, args, train, val, out: Path) -> dict:
    family, seed, row_over, label = ROWS[row]
    over = {**preset(seed), **row_over, "resolution": args.resolution, "channels": 1,
            "width": args.width, "steps_per_epoch": args.steps_per_epoch, "epochs": 100_000,
            "grid_per_class": 8, **parse_overrides(args.set)}
    cfg = GANConfig.from_dict(over)
    assert cfg.family == family, (row, cfg.family)
    print(f"{row} ({label}): {cfg}", flush=True)
    run_dir = out / row
    t0 = time.perf_counter()
    reports = train_for(cfg, train, run_dir, args.minutes)
    train_s = time.perf_counter() - t0
    first, last = run_dir / "epoch_0000", run_dir / f"epoch_{len(reports) - 1:04d}"
    ev = GanEvaluator(val, metrics=("fid", "cas", "visual"), n_fake=args.n_fake, seed=0,
                      latent_dim=cfg.latent_dim, latent_dist=cfg.latent_dist, real_train=train,
                      classes=trained_classes(cfg, train.classes, train.labels), device="cpu",
                      cache_dir=args.cache_dir)
    m0, m1 = evaluate_epoch(ev, first), evaluate_epoch(ev, last)
    rng = np.random.default_rng(0)
    floor_rows = np.sort(rng.choice(len(train), size=min(args.n_fake, len(train)), replace=False))
    floor = ev.fid_of(np.asarray(train.images[floor_rows]))
    for tag, d in (("first", first), ("last", last)):
        (out / f"{row}_{tag}_grid.png").write_bytes((d / "grid.png").read_bytes())
    return {"family": f"{row} ({label})", "epochs": len(reports), "train_s": train_s, "first": m0,
            "last": m1, "floor": floor, "d_g_z1": reports[-1]["d_g_z1"],
            "d_g_z2": reports[-1]["d_g_z2"], "skipped": dict(ev.protocol["skipped"]),
            "dims": ev.extractor.dims}


def table(rows: list[dict], n_fake: int) -> str:
    head = ("| family | epochs | FID first | FID last | last/first | real-vs-real floor | "
            "diversity first -> last | CAS last (ceiling, chance) | d_g_z1 / d_g_z2 (last) |")
    lines = [head, "|" + "---|" * 9]
    for r in rows:
        f0, f1 = r["first"]["fid"], r["last"]["fid"]
        cas = (f"{r['last']['cas_acc']:.3f} ({r['last']['cas_real_acc']:.3f}, "
               f"{r['last']['cas_chance']:.3f})" if "cas_acc" in r["last"]
               else "skipped: " + r["skipped"].get("cas", "?")[:60])
        lines.append(f"| {r['family']} | {r['epochs']} | {f0:.3f} | {f1:.3f} | {f1 / f0:.2f} | "
                     f"{r['floor']:.3f} | {r['first']['diversity_ratio']:.2f} -> "
                     f"{r['last']['diversity_ratio']:.2f} | {cas} | "
                     f"{r['d_g_z1']:.2f} / {r['d_g_z2']:.2f} |")
    dims = rows[0]["dims"] if rows else "?"
    return "\n".join(lines) + f"\n\nFID: {dims}-d TF-Inception features, N = {n_fake} fakes."


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--families", nargs="+", default=list(DEFAULT_ROWS), choices=list(ROWS),
                   help="benchmark rows (default: %(default)s); cgan-s2 is the cGAN at S2's "
                        "own schedule")
    p.add_argument("--minutes", type=float, default=10.0, help="training budget per family")
    p.add_argument("--data", default=str(DATA))
    p.add_argument("--resolution", type=int, default=64)
    p.add_argument("--width", type=float, default=0.5)
    p.add_argument("--steps-per-epoch", type=int, default=40)
    p.add_argument("--n-fake", type=int, default=200, help="fakes (and floor reals) for FID")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="any GANConfig field, for every family")
    p.add_argument("--out", default="benchmarks/out/gan_learns")
    p.add_argument("--cache-dir", default=None, help="real-statistics cache (default: the user cache)")
    p.add_argument("--threads", type=int, default=None)
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    train, val = load_selection_sets(args.data, resolution=args.resolution, channels=1,
                                     duplicates="drop")
    rows = [run_family(f, args, train, val, out) for f in args.families]
    text = table(rows, args.n_fake)
    print("\n" + text)
    (out / "table.md").write_text(text + "\n")
    print(f"\ngrids: {out}/<family>_first_grid.png, <family>_last_grid.png")


if __name__ == "__main__":
    main()
