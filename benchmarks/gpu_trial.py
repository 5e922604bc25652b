"""One GAN trial at a seed's size on whatever device this machine has, through
`trainables.trial.run_gan_trial` with the search's full evaluator, for a fixed number of
minutes: no Ray and no MLflow needed (a lent GPU machine has neither).

    python -m benchmarks.gpu_trial --preset s0 --minutes 5 --out gpu_trial/          # on a GPU
    python -m benchmarks.gpu_trial --preset s0 --minutes 3 --set resolution=64 \\
        --set width=0.5 --set steps_per_epoch=40 --out gpu_trial_cpu/                 # on 2 cores

Writes to --out: `first_grid.png` and `last_grid.png` (look at them), `epochs.json` (every
epoch's report: losses, d_g_z1 / d_g_z2, FID / KID / CAS / diversity / memorisation where
evaluated, images_seen, and the seconds the epoch spent training, evaluating and writing its
checkpoint) and `summary.json`; prints the training images/s and the share of the trial's
time spent in evaluation and in checkpoint writes.  The FID network is read from the usual
places (the torch hub cache, fid-helper's file); where it is missing the metrics that need it
are skipped and the protocol in epochs.json says why.
"""
from __future__ import annotations

import argparse
import json
import math
import shutil
import time
from pathlib import Path

import torch

from orchestrator.config import DEFAULT_SCHEDULE, FULL_EVAL, SCHEDULE_KEYS, parse_overrides
from trainables.context import standalone_context
from trainables.gan import preset
from trainables.trial import TrialSettings, run_gan_trial

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "covid19-radiography-subset"
PHASES = ("train", "eval", "write")
EVAL_SHARE = 0.10  # issue 22's target: evaluation <= 10 % of the training time on the device


class BudgetSpent(Exception):
    """Raised from the report callback once the minutes are used up."""


def settings_for(args) -> TrialSettings:
    overrides = parse_overrides(args.set)
    # a search's default evaluation schedule unless --set gives one (as the search does)
    schedule = {} if set(SCHEDULE_KEYS) & set(overrides) else DEFAULT_SCHEDULE
    base = {**preset(args.preset, args.experiment), "family": args.experiment,
            "epochs": 100_000, **schedule, **overrides}  # the minutes end the trial
    evaluation = dict(FULL_EVAL)
    if args.metrics:
        evaluation["metrics"] = tuple(m for m in args.metrics.split(",") if m)
    if args.n_fake:
        evaluation["n_fake"] = args.n_fake
    return TrialSettings(experiment=args.experiment, data=str(args.data), search_name="gpu_trial",
                         storage=str(args.out), base=base, seed=args.seed, eval=evaluation,
                         data_options={"duplicates": "drop"})


def run(args) -> list[dict]:
    """Train until the minutes have passed (the epoch that passes them is finished)."""
    ctx = standalone_context(args.out / "run", device=args.device)
    start, reports = time.perf_counter(), []

    def report(metrics: dict, _epoch_dir) -> None:
        reports.append({k: v for k, v in metrics.items() if isinstance(v, (int, float, str))})
        shown = "  ".join(f"{k} {metrics[k]:.3f}" for k in ("d_g_z1", "d_g_z2", "fid", "cas_acc",
                                                           "diversity_ratio") if k in metrics)
        print(f"epoch {int(metrics['epoch']):4d}  {shown}  train {metrics['time_train_s']:.2f} s"
              f"  eval {metrics['time_eval_s']:.2f} s  write {metrics['time_write_s']:.2f} s",
              flush=True)
        if metrics.get("diverged") or time.perf_counter() - start > args.minutes * 60:
            raise BudgetSpent

    ctx.report = report
    try:
        run_gan_trial({}, settings_for(args), ctx)
    except BudgetSpent:
        pass
    return reports


def summarise(reports: list[dict], wall_s: float, device: str) -> dict:
    spent = {p: sum(r[f"time_{p}_s"] for r in reports) for p in PHASES}
    total = sum(spent.values()) or float("nan")
    images = reports[-1]["images_seen"] if reports else 0
    evaluated = [r for r in reports if "eval_seconds" in r]  # the evaluator ran
    return {
        "device": device, "epochs": len(reports), "wall_s": wall_s, "images_seen": images,
        "train_images_per_s": images / spent["train"] if spent["train"] else float("nan"),
        "images_per_s": images / wall_s,
        **{f"{p}_s": s for p, s in spent.items()},
        **{f"{p}_share": s / total for p, s in spent.items()},
        "evaluations": len(evaluated),
        "eval_per_train": spent["eval"] / spent["train"] if spent["train"] else float("nan"),
        # seconds per evaluation in each part (time_eval_<part>_s): what to make cheaper
        "eval_parts_s": {k[len("time_eval_"):-2]: sum(r.get(k, 0.0) for r in evaluated)
                         / max(1, len(evaluated))
                         for k in sorted({k for r in evaluated for k in r})
                         if k.startswith("time_eval_") and k != "time_eval_s"},
        # the period that would hold evaluation at EVAL_SHARE of the training time here
        "eval_every_images_for_target": _period_for_share(spent, evaluated, images),
        "first_fid": evaluated[0].get("fid") if evaluated else None,
        "last_fid": evaluated[-1].get("fid") if evaluated else None,
        "best_fid": min((r["fid"] for r in evaluated if "fid" in r), default=None),
    }


def _period_for_share(spent: dict, evaluated: list[dict], images: int) -> int | None:
    """Images between evaluations for evaluation to cost EVAL_SHARE of the training time on
    this device: one evaluation's seconds x training images/s / EVAL_SHARE. Measured, so a
    GPU user can set `--eval-every-images` to it instead of guessing."""
    if not evaluated or not spent["train"] or not images:
        return None
    per_eval = spent["eval"] / len(evaluated)
    return math.ceil(per_eval * images / spent["train"] / EVAL_SHARE)


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--experiment", default="acgan", help="GAN family (default acgan)")
    p.add_argument("--preset", default="s0", help="seed preset s0..s4 (default s0)")
    p.add_argument("--data", type=Path, default=DATA)
    p.add_argument("--minutes", type=float, default=5.0)
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="GANConfig override, repeatable (resolution=64, batch_size=512, ...)")
    p.add_argument("--metrics", default="", help="comma-separated (default: the search's full "
                   f"evaluator: {','.join(FULL_EVAL['metrics'])})")
    p.add_argument("--n-fake", type=int, default=0, help="fakes per evaluation (default: as "
                   "many as validation images)")
    p.add_argument("--device", default=None, help="cuda / cpu (default: cuda when present)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path, default=Path("gpu_trial"))
    args = p.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    started = time.perf_counter()
    reports = run(args)
    summary = summarise(reports, time.perf_counter() - started, device)
    if torch.cuda.is_available() and device.startswith("cuda"):
        summary["gpu"] = torch.cuda.get_device_name(0)
    epochs = sorted((args.out / "run").glob("epoch_*"))
    for tag, folder in (("first", epochs[:1]), ("last", epochs[-1:])):
        if folder and (folder[0] / "grid.png").is_file():
            shutil.copyfile(folder[0] / "grid.png", args.out / f"{tag}_grid.png")
    (args.out / "epochs.json").write_text(json.dumps(reports, indent=1))
    (args.out / "summary.json").write_text(json.dumps(summary, indent=1))
    print(f"{summary['epochs']} epochs on {device} in {summary['wall_s']:.0f} s: "
          f"{summary['train_images_per_s']:.0f} training images/s, "
          f"{summary['images_per_s']:.0f} images/s overall; time in evaluation "
          f"{summary['eval_share']:.0%}, in checkpoint writes {summary['write_share']:.0%}, "
          f"training {summary['train_share']:.0%}; evaluation = "
          f"{summary['eval_per_train']:.0%} of the training time ({summary['evaluations']} "
          "evaluations; seconds each: " + ", ".join(
              f"{k} {v:.2f}" for k, v in summary["eval_parts_s"].items()) + "); "
          f"evaluating every {summary['eval_every_images_for_target']} images would hold it "
          f"at {EVAL_SHARE:.0%} here (--eval-every-images); "
          f"FID first {summary['first_fid']}, last "
          f"{summary['last_fid']}, best {summary['best_fid']}; grids and epochs.json in {args.out}")
    return summary


if __name__ == "__main__":
    main()
