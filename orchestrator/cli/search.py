"""`python -m orchestrator.search {acgan,dcgan,cgan,...,classifier}`: the search users run.

With no options: a local Ray on this machine's CPUs/GPUs, MLflow at
`sqlite:///mlruns/mlflow.db` (artefacts under ./mlruns), Tune storage under ./ray_results,
and the default data set (PneumoniaMNIST).  On a machine without a GPU and without an
explicit budget the CPU smoke budget is used, and the command says so.
"""
from __future__ import annotations

import argparse
import sys
from dataclasses import replace
from typing import Optional, Sequence

import torch

from orchestrator import registry
from orchestrator.cli import parse_then_run
from orchestrator.config import (DEFAULT_MLFLOW_URI, DEFAULT_STORAGE, MAX_MEMORISED, SearchConfig, validate)
from orchestrator.pipeline import run_search
from trainables.gan.presets import PRESETS


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m orchestrator.search",
        description="Search GAN (or classifier) hyper-parameters with Ray Tune + Optuna, "
                    "rank every epoch, record everything in MLflow.")
    p.add_argument("experiment", choices=registry.EXPERIMENTS, help="what to train and search")
    p.add_argument("--preset", choices=sorted(PRESETS),
                   help="seed system to reproduce and search around (shared/SYSTEMS.md): "
                        "s0/s3 AC-GAN, s1/s4 DCGAN, s2 cGAN; default s0, s1, s2 by family")
    p.add_argument("--data", default="default",
                   help="data source: a folder-per-class directory, a COVIDx directory, an "
                        "ieee8023 metadata.csv, a MedMNIST .npz, or 'default' (PneumoniaMNIST)")
    p.add_argument("--duplicates", choices=("drop", "error", "keep"), default="drop",
                   help="byte-identical images under two names (a train/val leak in several "
                        "published sets): drop (default) keeps one file of each group, the "
                        "earliest split's (train, then val, then test), and prints how many; "
                        "error stops; keep loads them all. All are listed in duplicates.csv "
                        "beside the manifest")
    p.add_argument("--skip-bad", action="store_true",
                   help="skip unreadable/truncated images instead of stopping; they are "
                        "printed and listed in skipped.csv beside the manifest")
    p.add_argument("--num-samples", type=int, help="number of trials (default 20; smoke 4)")
    p.add_argument("--max-epochs", type=int, help="epochs per trial (default: the preset's)")
    p.add_argument("--max-concurrent", type=int,
                   help="trials at once (default: cluster GPUs / GPUs per trial, or CPUs)")
    p.add_argument("--workers-per-trial", type=int, default=1,
                   help="Ray Train workers (DDP processes) per trial (default 1)")
    p.add_argument("--gpus-per-worker", type=float,
                   help="GPUs per worker (default 1 if the cluster has GPUs, else 0)")
    p.add_argument("--gpu-wait", type=float, default=0.0, metavar="SECONDS",
                   help="on an autoscaling cluster (`ray up cluster.yaml`, GPU nodes scale "
                        "from zero): ask the autoscaler for the GPUs a trial needs and wait up "
                        "to SECONDS for them; trials then run as the autoscaler adds nodes")
    p.add_argument("--searcher", choices=registry.SEARCHERS, default="optuna",
                   help="optuna: TPE (seeded); random: Optuna's random sampler, same space")
    p.add_argument("--scheduler", choices=registry.TUNE_SCHEDULERS, default="asha",
                   help="asha: early stopping on the objective; pbt: population based "
                        "training (random search); none: run every trial to the end")
    p.add_argument("--objective",
                   help="per-epoch metric to optimise, e.g. fid, kid, cas_acc; comma-separate "
                        "two or more for multi-objective Optuna (ASHA uses the first)")
    p.add_argument("--keep-epochs", type=int, default=5, metavar="K",
                   help="per trial, keep the generator weights of the K best epochs by the "
                        "(first) objective, plus the last two full training states for resume "
                        "(default 5); every epoch's metrics and grid are kept")
    p.add_argument("--min-diversity", type=float, metavar="RATIO",
                   help="never select an epoch whose within-class diversity ratio (fakes vs "
                        "real) is below RATIO (default 0.4; 0.25 at the smoke budget)")
    p.add_argument("--max-memorised", type=float, default=MAX_MEMORISED, metavar="SHARE",
                   help="never select an epoch whose memorised_share (fakes nearer a training "
                        "image than almost any unseen real image) is above SHARE (default 0.05)")
    p.add_argument("--asha-grace", type=float, default=0.25, metavar="SHARE",
                   help="ASHA stops no trial before this share of the epochs (default 0.25)")
    p.add_argument("--policy", choices=list(registry.POLICIES), default="staged",
                   help="epoch-ranking policy run at the end of the search")
    p.add_argument("--storage", default=DEFAULT_STORAGE,
                   help="Tune storage: a local path or s3://… / gs://… (required on a cluster)")
    p.add_argument("--mlflow-uri", default=DEFAULT_MLFLOW_URI,
                   help="MLflow tracking URI (sqlite:///… or http://host:port)")
    p.add_argument("--name", help="search name (= MLflow experiment); default <exp>-<preset>-<time>")
    p.add_argument("--resume", action="store_true",
                   help="continue the interrupted search --name (or the latest one)")
    p.add_argument("--force", action="store_true",
                   help="with --resume: continue even though the settings or the data's "
                        "fingerprint differ from the first run's (the difference is recorded)")
    p.add_argument("--smoke", action="store_true",
                   help="tiny budget that runs on a 2-core CPU in minutes (32 px, few trials)")
    p.add_argument("--seed", type=int, default=0, help="seed of the searcher and the trials")
    p.add_argument("--execution", choices=("auto", "function", "train"), default="auto",
                   help="train: every trial is a Ray Train TorchTrainer (DDP); function: the "
                        "loop runs in the Tune trial (1 worker); auto: train when a trial has "
                        "GPUs or several workers")
    p.add_argument("--eval-metrics",
                   help="comma-separated per-epoch evaluation metrics "
                        "(fid,kid,intra_fid,is,cas,visual,memorisation); default depends on --smoke")
    p.add_argument("--eval-every", type=int, help="evaluate every k epochs")
    p.add_argument("--tune", action="store_true",
                   help="classifier: search its hyper-parameters (lr, batch size, dropout, "
                        "strategy) with Tune instead of running the strategy study")
    p.add_argument("--no-pretrained", action="store_true",
                   help="classifier: train VGG16/ResNet50 from scratch instead of loading "
                        "ImageNet weights from the torch hub cache (labelled in MLflow)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a trial config field (e.g. --set width=0.25); unknown keys fail")
    return p


def config_from_args(argv: Optional[Sequence[str]] = None) -> SearchConfig:
    args = build_parser().parse_args(argv)
    preset = args.preset or registry.default_preset(args.experiment)
    allowed = registry.presets_of(args.experiment)
    if preset not in allowed:
        raise ValueError(f"preset {preset!r} is a {registry.preset_family(preset)} system, not "
                         f"{args.experiment}; {args.experiment} presets: {', '.join(allowed)}")
    cfg = SearchConfig(
        experiment=args.experiment, preset=preset, data=args.data,
        num_samples=20 if args.num_samples is None else args.num_samples, max_epochs=args.max_epochs,
        max_concurrent=args.max_concurrent, workers_per_trial=args.workers_per_trial,
        gpus_per_worker=args.gpus_per_worker, gpu_wait=args.gpu_wait, searcher=args.searcher, scheduler=args.scheduler,
        objective=args.objective, storage=args.storage, mlflow_uri=args.mlflow_uri,
        name=args.name, resume=args.resume, smoke=args.smoke, seed=args.seed,
        policy=args.policy, execution=args.execution, eval_metrics=args.eval_metrics,
        eval_every=args.eval_every, duplicates=args.duplicates, tune=args.tune,
        skip_bad=args.skip_bad, no_pretrained=args.no_pretrained,
        keep_epochs=args.keep_epochs, asha_grace=args.asha_grace, force=args.force,
        min_diversity=args.min_diversity, max_memorised=args.max_memorised,
        overrides=tuple(args.overrides))
    budget_given = args.num_samples is not None or args.max_epochs is not None
    if not cfg.smoke and not budget_given and not _has_gpu():
        print("No GPU found and no budget given (--num-samples/--max-epochs): running the CPU "
              "smoke budget. Give a budget, or run on a GPU machine / `ray up cluster.yaml`, "
              "for a real search.", file=sys.stderr)
        cfg = replace(cfg, smoke=True)
    if cfg.smoke and args.num_samples is None:
        cfg = replace(cfg, num_samples=4)
    validate(cfg)
    return cfg


def _has_gpu() -> bool:
    return torch.cuda.is_available()


def main(argv: Optional[Sequence[str]] = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["classifier"] and "--tune" not in argv:
        # `search classifier` is the study's old name: the study has its own command now
        from orchestrator.study.cli import main as study_main

        return study_main(argv[1:], prog="python -m orchestrator.search classifier")
    return parse_then_run(lambda: config_from_args(argv), run_search)


if __name__ == "__main__":
    sys.exit(main())
