"""The imbalance-strategy study (S0's comparison table): every strategy trained with the same
budget and seeds, each final model evaluated once on the held-out test set, and a table of
accuracy / macro F1 with bootstrap 95 % CIs.

    df = run_study("../shared/data/covid19-image-dataset", "all", "runs/gan/generator.pt",
                   resolution=64, epochs=20, seeds=(0, 1, 2), run_dir="runs/study")
    print(study_markdown(df))

MLflow stays out of this module: pass ``callback`` to log runs as they finish.
"""
from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Callable, Optional, Sequence

import numpy as np
import pandas as pd

from trainables.classifier.config import GAN_STRATEGIES, STRATEGIES, ClassifierConfig
from trainables.classifier.metrics import accuracy, bootstrap_ci, macro_f1
from trainables.classifier.strategies import (Synth, synth_from_checkpoint,
                                              synth_from_generator)
from trainables.classifier.train import evaluate_final, load_test_set, train_classifier
from trainables.context import standalone_context

# callback(event, payload): event "run" after each trained+evaluated model, "table" at the end.
Callback = Callable[[str, dict], None]


def resolve_strategies(strategies: str | Sequence[str]) -> tuple[str, ...]:
    """"all", a comma-separated string or a list -> validated strategy names."""
    if isinstance(strategies, str):
        strategies = STRATEGIES if strategies == "all" else tuple(strategies.split(","))
    bad = [s for s in strategies if s not in STRATEGIES]
    if bad or not strategies:
        raise ValueError(f"unknown strategies {bad or strategies}; choose from {STRATEGIES} or 'all'")
    return tuple(strategies)


def resolve_synth(generator, *, resolution: int, channels: int,
                  classes: Sequence[str] | None = None) -> Optional[Synth]:
    """None, a `Synth` callable, a GAN checkpoint path, or (G, latent_dim) -> a `Synth`."""
    if generator is None or callable(generator) and not hasattr(generator, "forward"):
        return generator
    if isinstance(generator, (str, Path)):
        return synth_from_checkpoint(generator, resolution=resolution, channels=channels,
                                     classes=classes)
    if isinstance(generator, tuple) and len(generator) == 2:
        G, latent_dim = generator
        return synth_from_generator(G, int(latent_dim), resolution=resolution, channels=channels)
    raise TypeError("generator must be None, synth(class_index, n, seed) -> uint8 NHWC, a GAN "
                    f"checkpoint path, or (G, latent_dim); got {type(generator).__name__}")


def run_study(source: str | Path, strategies: str | Sequence[str] = "all", generator=None, *,
              resolution: int = 64, epochs: int = 20, seeds: Sequence[int] = (0,),
              model: str = "s0_cnn", run_dir: str | Path = "runs/study",
              base: dict | None = None, n_boot: int = 1000,
              callback: Callback | None = None) -> pd.DataFrame:
    """Train every strategy x seed with the same config (``base`` overrides
    `ClassifierConfig` fields), then evaluate each final model once on the test set (read
    once, after all training) and return one row per strategy (see `summarise`).
    The per-run table is ``df.attrs["runs"]``; study.csv / study.md go to ``run_dir``."""
    strategies = resolve_strategies(strategies)
    if any(s in GAN_STRATEGIES for s in strategies) and generator is None:
        raise ValueError(f"strategies {[s for s in strategies if s in GAN_STRATEGIES]} need a "
                         "GAN: pass generator= (checkpoint path, synth function or (G, latent_dim))")
    cfg0 = ClassifierConfig.from_dict({**(base or {}), "source": str(source),
                                       "resolution": resolution, "epochs": epochs,
                                       "model": model, "n_boot": n_boot,
                                       "evaluate_test": False})
    run_dir = Path(run_dir)
    synth = None
    trained = []
    for strategy in strategies:
        for seed in seeds:
            cfg = replace(cfg0, strategy=strategy, seed=int(seed))
            if strategy in GAN_STRATEGIES and synth is None:
                synth = resolve_synth(generator, resolution=cfg.resolution,
                                      channels=cfg.channels)
            ctx = standalone_context(run_dir / strategy / f"seed{seed}")
            history = train_classifier(cfg, ctx, synth=synth if strategy in GAN_STRATEGIES else None)
            trained.append((cfg, ctx.run_dir, history))
    # Selection is over for every model: read the test split once and evaluate each once.
    test_set = load_test_set(cfg0)
    runs, preds = [], {}
    for cfg, path, history in trained:
        final = evaluate_final(path, test_set=test_set)
        row = {"strategy": cfg.strategy, "seed": cfg.seed, "epochs_run": len(history),
               "n_train": history[-1]["n_train"], "n_synthetic": history[-1]["n_synthetic"],
               "run_dir": str(path), **final["metrics"]}
        runs.append(row)
        preds.setdefault(cfg.strategy, []).append(final["y_pred"])
        if callback:
            callback("run", {"config": cfg.to_dict(), "history": history, "metrics": row})
    table = summarise(test_set.labels, preds, len(test_set.classes), n_boot=n_boot)
    table.attrs["runs"] = pd.DataFrame(runs)
    table.attrs["n_test"] = int(len(test_set.labels))
    run_dir.mkdir(parents=True, exist_ok=True)
    table.to_csv(run_dir / "study.csv", index=False)
    table.attrs["runs"].to_csv(run_dir / "study_runs.csv", index=False)
    (run_dir / "study.md").write_text(study_markdown(table))
    if callback:
        callback("table", {"table": table})
    return table


def summarise(y_true: np.ndarray, preds: dict[str, list[np.ndarray]], num_classes: int, *,
              n_boot: int = 1000, seed: int = 0) -> pd.DataFrame:
    """One row per strategy: seed-averaged accuracy and macro F1 with bootstrap 95 % CIs
    (the same test-image resamples for every seed of a strategy)."""
    rows = []
    for strategy, p in preds.items():
        p = np.stack(p)
        row = {"strategy": strategy, "seeds": len(p)}
        for name, fn in (("accuracy", accuracy),
                         ("macro_f1", lambda t, q: macro_f1(t, q, num_classes))):
            point, lo, hi = bootstrap_ci(y_true, p, fn, n_boot=n_boot, seed=seed)
            row.update({name: point, f"{name}_ci_low": lo, f"{name}_ci_high": hi})
        rows.append(row)
    return pd.DataFrame(rows)


def study_markdown(table: pd.DataFrame) -> str:
    """The study table as Markdown (S0's layout: strategy x accuracy / macro F1)."""
    n = table.attrs.get("n_test")
    lines = [f"Imbalance strategies on the held-out test set{f' ({n} images)' if n else ''}; "
             "mean over seeds, bootstrap 95 % CI.", "",
             "| strategy | seeds | accuracy (95 % CI) | macro F1 (95 % CI) |",
             "|---|---:|---|---|"]
    for r in table.itertuples():
        lines.append(f"| {r.strategy} | {r.seeds} | {r.accuracy:.3f} ({r.accuracy_ci_low:.3f}–"
                     f"{r.accuracy_ci_high:.3f}) | {r.macro_f1:.3f} ({r.macro_f1_ci_low:.3f}–"
                     f"{r.macro_f1_ci_high:.3f}) |")
    return "\n".join(lines) + "\n"
