"""Tune overhead and random-vs-Optuna at equal budget.

    python benchmarks/tune_overhead.py --data ../shared/data/covid19-image-dataset \
        --trials 4 --epochs 2 --compare-searchers 8

1. The same N trainings (the search space's first N Optuna suggestions, seeded) run
   (a) one after another in a plain Python loop, (b) through the orchestrator (Ray Tune,
   one trial at a time, no early stopping, MLflow on). Prints the wall-time ratio (b)/(a).
2. --compare-searchers K (default 6; 0 skips it): two searches of K trials each with ASHA,
   one with Optuna's TPE, one with Optuna's random sampler, same seed and budget; prints the
   best objective (FID) reached by any (trial, epoch) of each, read back from MLflow.

--eval-metrics / --objective (as the search's; default the smoke set and FID) apply to every
training above, so the ratios compare like with like.

Numbers are printed as ratios because this machine is noisy.
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def suggested_configs(space_module, base: dict, n: int, seed: int) -> list[dict]:
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(sampler=optuna.samplers.TPESampler(seed=seed))
    for point in space_module.first_points(base, base["epochs"]):
        study.enqueue_trial(point)
    configs = []
    for _ in range(n):
        trial = study.ask()
        space_module.space(trial, max_epochs=base["epochs"])
        configs.append(space_module.to_config(trial.params))
        study.tell(trial, 0.0)
    return configs


def plain_loop(configs: list[dict], settings) -> float:
    from trainables.context import standalone_context
    from trainables.trial import run_gan_trial

    start = time.perf_counter()
    for i, config in enumerate(configs):
        with tempfile.TemporaryDirectory() as tmp:
            run_gan_trial(config, settings, standalone_context(Path(tmp) / str(i), device="cpu"))
    return time.perf_counter() - start


def through_orchestrator(args, work: Path, name: str, extra: list[str]) -> tuple[float, dict]:
    from orchestrator import pipeline
    from orchestrator.cli import search

    cfg = search.config_from_args([
        "acgan", "--smoke", "--data", args.data, "--duplicates", args.duplicates,
        "--name", name, "--storage",
        str(work / "ray_results"), "--mlflow-uri", f"sqlite:///{work}/mlflow.db",
        "--max-epochs", str(args.epochs), *measured(args), *extra])
    start = time.perf_counter()
    summary = pipeline.run_search(cfg)
    return time.perf_counter() - start, summary


def measured(args) -> list[str]:
    """The search options that say what each epoch measures and what is optimised."""
    return [*(["--eval-metrics", args.eval_metrics] if args.eval_metrics else []),
            "--objective", args.objective]


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default="../shared/data/covid19-image-dataset")
    parser.add_argument("--duplicates", choices=("drop", "error", "keep"), default="drop",
                        help="as the search's --duplicates")
    parser.add_argument("--trials", type=int, default=4)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--compare-searchers", type=int, default=6, metavar="K")
    parser.add_argument("--eval-metrics", default="", metavar="LIST",
                        help="as the search's (default: the smoke budget's)")
    parser.add_argument("--objective", default="fid", help="as the search's (default fid)")
    args = parser.parse_args(argv)
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")

    import pandas as pd
    import ray

    from orchestrator.cli import search
    from orchestrator.run.preflight import preflight_data
    from orchestrator.run.settings import trial_settings
    from search_spaces import acgan

    work = Path(tempfile.mkdtemp(prefix="cxr-bench-"))
    cfg = search.config_from_args(["acgan", "--smoke", "--data", args.data,
                                   "--duplicates", args.duplicates, "--max-epochs",
                                   str(args.epochs), "--name", "bench", "--storage", str(work),
                                   *measured(args)])
    settings = preflight_data(trial_settings(cfg, str(work)))
    configs = suggested_configs(acgan, dict(settings.base), args.trials, seed=0)
    t_plain = plain_loop(configs, settings)

    ray.init(num_cpus=2, include_dashboard=False)
    t_tune, _ = through_orchestrator(args, work, "bench-tune", [
        "--num-samples", str(args.trials), "--scheduler", "none", "--max-concurrent", "1"])
    print(f"plain loop: {t_plain:.1f} s for {args.trials} trials x {args.epochs} epochs")
    print(f"orchestrator (Tune + MLflow, sequential): {t_tune:.1f} s")
    print(f"Tune overhead ratio (orchestrator / plain): {t_tune / t_plain:.2f}")

    if args.compare_searchers:
        best, (objective, mode) = {}, cfg.objectives()[0]
        for searcher in ("optuna", "random"):
            through_orchestrator(args, work, f"bench-{searcher}", [
                "--num-samples", str(args.compare_searchers), "--searcher", searcher])
            from orchestrator.store.reader import load_epoch_table

            epochs = load_epoch_table(f"bench-{searcher}", f"sqlite:///{work}/mlflow.db")
            values = epochs[objective] if objective in epochs else pd.Series([float("nan")])
            best[searcher] = float(values.min() if mode == "min" else values.max())
        print(f"best {objective} at {args.compare_searchers} trials: "
              f"optuna {best['optuna']:.2f}, random {best['random']:.2f} (ratio random/optuna "
              f"{best['random'] / best['optuna']:.2f})")
    ray.shutdown()


if __name__ == "__main__":
    main()
