"""How much GAN training a device does when 1, 2 or 4 trials share it, and where a trial's
time goes: training, evaluation, checkpoint writes.

    python -m benchmarks.search_throughput --packing 1              # 64 px, ~15 min on 2 cores
    python -m benchmarks.search_throughput --packing 1 2 4 8 --set resolution=112 --n-fake 0

Each packing runs N standalone trials at once (`trainables.trial.run_gan_trial` in N
processes, no Ray: what `--trials-per-gpu N` asks Ray to do) for --epochs epochs with the
search's evaluator, on the GPU when there is one (else the CPU, its threads split between
the trials).  It prints, per packing: training images/s summed over the trials (per device),
trials per hour at this trial length, the share of the trials' time spent training,
evaluating and writing checkpoints (from each epoch's `time_*_s`), and the bytes the trial
processes wrote per trial-hour (the kernel's write count, /proc/self/io).  --rule before
replays the rules before issue 22 (a full training state and an evaluation every epoch)
beside today's defaults (a full state every 10 epochs; a full search evaluates every 8,192
training images and at least 4 times a trial, `orchestrator.config.DEFAULT_SCHEDULE`), so
the evaluation and write shares of both are printed.  The default 13 epochs of 1,280 images
(16,640 in all) are evaluated after epochs 3, 6, 9 and 12: a quarter of the budget is
shorter than 8,192 images, so min_evals sets the period here.
"""
from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import tempfile
import time
from pathlib import Path

import torch

from orchestrator.config import DEFAULT_SCHEDULE, FULL_EVAL, parse_overrides
from trainables.context import standalone_context
from trainables.gan import preset
from trainables.trial import TrialSettings, run_gan_trial

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "covid19-radiography-subset"
PHASES = ("train", "eval", "write")
# Checkpoint and evaluation rules: before issue 22, and a full search's defaults today.
RULES = {"before": {"state_every": 1, "eval_every": 1},
         "today": dict(DEFAULT_SCHEDULE)}


def written_bytes() -> int:
    """Bytes this process has written with write() so far (files; prints are noise)."""
    try:
        for line in Path("/proc/self/io").read_text().splitlines():
            if line.startswith("wchar:"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


def one_trial(job: dict) -> dict:
    """A trial in its own process: its epoch reports and the bytes it wrote."""
    torch.set_num_threads(job["threads"])
    before, start = written_bytes(), time.perf_counter()
    ctx = standalone_context(job["run_dir"], device=job["device"])
    run_gan_trial({}, job["settings"], ctx)
    return {"reports": ctx.history, "wall_s": time.perf_counter() - start,
            "bytes": written_bytes() - before}


def settings_for(args, rule: str) -> TrialSettings:
    base = {**preset(args.preset, args.experiment), "family": args.experiment,
            "epochs": args.epochs, "resolution": 64, "channels": 1, "width": 0.5,
            "steps_per_epoch": 20, **RULES[rule], **parse_overrides(args.set)}
    evaluation = {**FULL_EVAL, "metrics": tuple(args.metrics.split(","))}
    if args.n_fake:
        evaluation["n_fake"] = args.n_fake
    return TrialSettings(experiment=args.experiment, data=str(args.data), search_name="throughput",
                         storage=str(args.work), base=base, seed=args.seed, eval=evaluation,
                         data_options={"duplicates": "drop"})


def packing(n: int, rule: str, args, device: str) -> dict:
    """N trials at once on one device; the row printed for them."""
    threads = max(1, (os.cpu_count() or 1) // n) if device == "cpu" else 1
    jobs = [{"settings": settings_for(args, rule), "device": device, "threads": threads,
             "run_dir": str(args.work / f"{rule}-{n}" / f"trial{i}")} for i in range(n)]
    start = time.perf_counter()
    with mp.get_context("spawn").Pool(n) as pool:
        trials = pool.map(one_trial, jobs)
    wall = time.perf_counter() - start
    spent = {p: sum(r[f"time_{p}_s"] for t in trials for r in t["reports"]) for p in PHASES}
    total = sum(spent.values())
    images = sum(t["reports"][-1]["images_seen"] for t in trials)
    trial_hours = sum(t["wall_s"] for t in trials) / 3600
    return {"rule": rule, "trials": n, "wall_s": wall, "images_per_s": images / wall,
            "trials_per_hour": n * 3600 / wall,
            **{f"{p}_share": spent[p] / total for p in PHASES},
            "bytes_per_trial_hour": sum(t["bytes"] for t in trials) / trial_hours}


def line(row: dict) -> str:
    return (f"| {row['rule']} | {row['trials']} | {row['images_per_s']:.0f} | "
            f"{row['trials_per_hour']:.1f} | {row['train_share']:.0%} | {row['eval_share']:.0%} | "
            f"{row['write_share']:.0%} | {row['bytes_per_trial_hour'] / 2 ** 30:.2f} |")


def main(argv: list[str] | None = None) -> list[dict]:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--experiment", default="acgan")
    p.add_argument("--preset", default="s0")
    p.add_argument("--data", type=Path, default=DATA)
    p.add_argument("--epochs", type=int, default=13)
    p.add_argument("--packing", type=int, nargs="+", default=[1, 2, 4])
    p.add_argument("--rule", nargs="+", choices=sorted(RULES), default=["before", "today"],
                   help="checkpoint and evaluation rules to compare (default both)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="GANConfig override on top of 64 px grey, width 0.5, 20 steps/epoch")
    p.add_argument("--metrics", default="fid,kid,cas,visual,memorisation")
    p.add_argument("--n-fake", type=int, default=96, help="fakes per evaluation (0: as many "
                   "as validation images, as a search does)")
    p.add_argument("--device", default=None)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--work", type=Path, default=None, help="where the trials write (default: "
                   "a temporary folder)")
    args = p.parse_args(argv)
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        args.work = args.work or Path(tmp)
        print(f"{args.experiment} {args.preset}, {args.epochs} epochs per trial, on {device}"
              f"{' (' + torch.cuda.get_device_name(0) + ')' if device == 'cuda' else ''}")
        print("| rule (checkpoints, evaluation) | trials at once | images/s (device, all trials) | "
              "trials/hour | "
              "train | eval | write | GiB written per trial-hour |")
        print("|---|---|---|---|---|---|---|---|")
        # A first trial computes the validation statistics and training features every later
        # one reads from the cache: warm it, or the first row pays it.
        packing(1, "today", argparse.Namespace(**{**vars(args), "epochs": 1,
                                                  "work": args.work / "warm-up"}), device)
        for rule in args.rule:
            for n in args.packing:
                rows.append(packing(n, rule, args, device))
                print(line(rows[-1]), flush=True)
    base = [r for r in rows if r["trials"] == args.packing[0]]
    if len(base) == 2:
        old, new = base
        print(f"evaluation + checkpoint share at {args.packing[0]} trial(s): "
              f"{old['eval_share'] + old['write_share']:.0%} ({old['rule']}) -> "
              f"{new['eval_share'] + new['write_share']:.0%} ({new['rule']}); ratio "
              f"{(new['eval_share'] + new['write_share']) / (old['eval_share'] + old['write_share']):.2f}")
    one = [r for r in rows if r["rule"] == args.rule[-1]]
    if len(one) > 1:
        print("images/s vs one trial: " + ", ".join(
            f"{r['trials']} -> {r['images_per_s'] / one[0]['images_per_s']:.2f}x" for r in one))
    return rows


if __name__ == "__main__":
    main()
