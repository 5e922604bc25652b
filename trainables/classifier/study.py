"""The imbalance-strategy study (S0's comparison table): every strategy trained with the same
budget and seeds, each final model evaluated once on the held-out test set, a table of
accuracy / macro F1 with bootstrap 95 % CIs, and the paired differences that answer "does
the GAN help?" (every strategy against no rebalancing and against positional oversampling).

    df = run_study("../shared/data/covid19-image-dataset", "all", "runs/gan/generator.pt",
                   resolution=64, epochs=20, seeds=(0, 1, 2), run_dir="runs/study")
    print(study_markdown(df), paired_markdown(df.attrs["paired"]))

`rare_class_source` makes a class rare in the training split only (`--minority`).
MLflow stays out of this module: pass ``callback`` to log runs as they finish.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from dataclasses import replace
from pathlib import Path
from typing import Callable, Mapping, Optional, Sequence

import numpy as np
import pandas as pd

from trainables.classifier.config import GAN_STRATEGIES, STRATEGIES, ClassifierConfig
from trainables.classifier.metrics import (accuracy, bootstrap_ci, macro_f1, mcnemar,
                                           paired_bootstrap)
from trainables.classifier.strategies import (Synth, keep_share, synth_from_checkpoint,
                                              synth_from_generator)
from trainables.classifier.train import evaluate_final, load_test_set, train_classifier
from trainables.context import standalone_context
from trainables.data import load_manifest
from trainables.data.default import resolve_default
from trainables.data.manifest import canonical_label, default_cache_dir
from trainables.data.selection import holdout_mask, load_selection_sets, split_roles

# callback(event, payload): event "run" after each trained+evaluated model, "table" at the end.
Callback = Callable[[str, dict], None]

# How tables and verdicts name the strategies.
LABELS = {"none": "no rebalancing", "class_weights": "class weights",
          "undersample": "undersampling", "oversample_positional": "positional oversampling",
          "oversample_gan": "GAN oversampling", "gan_positional": "GAN + positional"}
# Every strategy is compared with these two: the baseline, and S0's best strategy (does the
# GAN add anything to plain positional augmentation?).
REFERENCES = ("none", "oversample_positional")
# Written beside the derived data folder of `rare_class_source`: where it came from.
ORIGIN_FILE = "ORIGIN.json"


def score_functions(num_classes: int) -> dict[str, Callable[[np.ndarray, np.ndarray], float]]:
    """The study's scores, by name: what the tables report and the bootstraps resample."""
    return {"accuracy": accuracy,
            "macro_f1": lambda y_true, y_pred: macro_f1(y_true, y_pred, num_classes)}


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
    The per-run table is ``df.attrs["runs"]``, the paired differences ``df.attrs["paired"]``
    (`compare`); study.csv / study.md / study_paired.{csv,md} go to ``run_dir``."""
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
    if any(s in GAN_STRATEGIES for s in strategies):  # a wrong generator fails before training
        synth = resolve_synth(generator, resolution=cfg0.resolution, channels=cfg0.channels,
                              classes=data_classes(source, resolution=cfg0.resolution,
                                                   duplicates=cfg0.duplicates))
    trained = []
    for strategy in strategies:
        for seed in seeds:
            cfg = replace(cfg0, strategy=strategy, seed=int(seed))
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
    paired = compare(test_set.labels, preds, len(test_set.classes), n_boot=n_boot)
    table.attrs.update(runs=pd.DataFrame(runs), paired=paired, n_test=int(len(test_set.labels)))
    run_dir.mkdir(parents=True, exist_ok=True)
    table.to_csv(run_dir / "study.csv", index=False)
    table.attrs["runs"].to_csv(run_dir / "study_runs.csv", index=False)
    (run_dir / "study.md").write_text(study_markdown(table))
    paired.to_csv(run_dir / "study_paired.csv", index=False)
    (run_dir / "study_paired.md").write_text(paired_markdown(paired))
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
        for name, fn in score_functions(num_classes).items():
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


# ------------------------------------------------------------------------------ paired
def compare(y_true: np.ndarray, preds: dict[str, list[np.ndarray]], num_classes: int, *,
            references: Sequence[str] = REFERENCES, n_boot: int = 1000,
            seed: int = 0) -> pd.DataFrame:
    """One row per (strategy, reference) pair: the seed-averaged difference strategy minus
    reference in every score with its 95 % CI (`paired_bootstrap`: test images and seeds
    resampled together, seed i of one paired with seed i of the other), McNemar's test on
    the predictions pooled over seeds, and a verdict on macro F1.  A pair already compared
    the other way round is not repeated."""
    rows, done = [], set()
    for reference in (r for r in references if r in preds):
        b = np.stack(preds[reference])
        for strategy in (s for s in preds if s != reference):
            if (reference, strategy) in done:
                continue
            done.add((strategy, reference))
            a = np.stack(preds[strategy])
            row = {"strategy": strategy, "reference": reference, "seeds": len(a),
                   "n_test": len(y_true)}
            for name, fn in score_functions(num_classes).items():
                diff, lo, hi = paired_bootstrap(y_true, a, b, fn, n_boot=n_boot, seed=seed)
                row.update({f"{name}_diff": diff, f"{name}_diff_ci_low": lo,
                            f"{name}_diff_ci_high": hi})
            row["only_strategy_right"], row["only_reference_right"], row["mcnemar_p"] = \
                mcnemar(y_true, a, b)
            row["verdict"] = verdict(strategy, reference, row["macro_f1_diff"],
                                     row["macro_f1_diff_ci_low"], row["macro_f1_diff_ci_high"])
            rows.append(row)
    return pd.DataFrame(rows)


def verdict(strategy: str, reference: str, diff: float, low: float, high: float) -> str:
    """One line on a macro-F1 difference: a direction only when its 95 % CI excludes 0."""
    a, b = LABELS.get(strategy, strategy), LABELS.get(reference, reference)
    points = f"{100 * diff:+.1f} macro-F1 points [{100 * low:+.1f}, {100 * high:+.1f}]"
    if low > 0:
        return f"{a} beats {b} by {points}"
    if high < 0:
        return f"{a} is worse than {b} by {points}"
    return f"{a} vs {b}: no evidence of a difference ({points})"


def paired_markdown(paired: pd.DataFrame) -> str:
    """The paired differences (in points) and the verdicts as Markdown."""
    if paired.empty:
        return ("No paired comparison: the study has neither `none` nor "
                "`oversample_positional` beside another strategy.\n")
    seeds = int(paired["seeds"].max())
    lines = ["Paired differences, strategy minus reference, on the same "
             f"{int(paired['n_test'].iloc[0])} test images, in points (x100); 95 % CI from a "
             "bootstrap that resamples test images and seeds together"
             + (" (one seed: test images only)" if seeds == 1 else "")
             + "; McNemar's exact test on the predictions pooled over seeds (optimistic when "
             "seeds > 1). No correction for the number of comparisons.", "",
             "| strategy | reference | Δ macro F1 (95 % CI) | Δ accuracy (95 % CI) | "
             "only strategy right / only reference right | McNemar p |",
             "|---|---|---|---|---:|---:|"]
    for r in paired.itertuples():
        lines.append(f"| {r.strategy} | {r.reference} | {_points(r.macro_f1_diff, r.macro_f1_diff_ci_low, r.macro_f1_diff_ci_high)} "
                     f"| {_points(r.accuracy_diff, r.accuracy_diff_ci_low, r.accuracy_diff_ci_high)} "
                     f"| {r.only_strategy_right} / {r.only_reference_right} | {r.mcnemar_p:.3g} |")
    lines += ["", "Verdicts (macro F1):", ""] + [f"- {v}" for v in paired["verdict"]]
    return "\n".join(lines) + "\n"


def _points(diff: float, low: float, high: float) -> str:
    return f"{100 * diff:+.1f} [{100 * low:+.1f}, {100 * high:+.1f}]"


# ------------------------------------------------------------------------------ the data
def data_classes(source: str | Path, *, resolution: int, duplicates: str) -> tuple[str, ...]:
    """The class names of ``source``, in label order (reads the manifest only)."""
    source = resolve_default(resolution) if str(source) == "default" else source
    return load_manifest(source, duplicates=duplicates).classes


def data_fingerprint(source: str | Path, *, resolution: int, channels: int,
                     duplicates: str) -> str:
    """The fingerprint a GAN search at ``resolution`` x ``channels`` records for ``source``
    (`cxr.data_fingerprint`: its fit images, from the same split the study uses)."""
    fit, _ = load_selection_sets(source, resolution=resolution, channels=channels,
                                 duplicates=duplicates)
    return fit.fingerprint


def rare_class_source(source: str | Path, minority: Mapping[str, float], *,
                      duplicates: str = "drop", cache_dir: str | Path | None = None
                      ) -> tuple[Path, dict[str, tuple[int, int]]]:
    """(folder, {class: (kept, of)}): ``source`` with the classes in ``minority`` made rare
    in the training split only; class c keeps ``minority[c]`` of its training images.

    The folder holds symbolic links in `{train,val,test}/<class>/` (no image copied): train is
    what the study and a GAN search would fit on, reduced; val is what they validate on (the
    source's val split, or its fixed 15 % of train) and test its held-out split, both
    untouched.  A classifier and a GAN given this folder as their data see exactly these
    images, so the GAN never saw the training images the classifier lost; its name is a hash
    of the source's manifest and ``minority``, so every run finds the same folder (and the
    same data fingerprint)."""
    if str(source) == "default" or Path(source).suffix.lower() == ".npz":
        raise ValueError(f"--minority: {source} is a MedMNIST array file; a rare class is "
                         "made from a source of image files (a folder, COVIDx, ieee8023)")
    manifest = load_manifest(source, duplicates=duplicates, cache_dir=cache_dir)
    shares = {manifest.classes.index(_class_name(name, manifest.classes)): share
              for name, share in minority.items()}
    frame = manifest.frame.assign(role=_selection_roles(manifest))
    codes = frame["label"].map(manifest.classes.index).to_numpy()
    keep = np.ones(len(frame), dtype=bool)
    train = (frame["role"] == "train").to_numpy()
    keep[train] = keep_share(codes[train], shares)
    wanted = {manifest.classes[c]: share for c, share in sorted(shares.items())}
    key = hashlib.sha256(json.dumps([manifest.digest, wanted, duplicates]).encode()).hexdigest()
    slug = "-".join(f"{c}-{share:g}" for c, share in wanted.items()).replace(" ", "_")
    folder = Path(cache_dir or default_cache_dir()) / "rare" / f"{Path(source).name}-{slug}-{key[:12]}"
    counts = {c: (int((train & keep & (frame["label"] == c).to_numpy()).sum()),
                  int((train & (frame["label"] == c).to_numpy()).sum())) for c in wanted}
    if not (folder / ORIGIN_FILE).is_file():
        origin = {"source": str(Path(source).resolve()), "manifest_digest": manifest.digest,
                  "duplicates": duplicates, "minority": wanted,
                  "train_kept_of": counts}
        _link_tree(frame[keep], folder, origin)
    return folder, counts


def _class_name(name: str, classes: Sequence[str]) -> str:
    """A class of the data named as in the data or by any name that maps to it ("COVID")."""
    for candidate in (name, canonical_label(name)):
        if candidate in classes:
            return candidate
    raise ValueError(f"--minority {name!r}: the data has no such class; its classes are "
                     f"{', '.join(classes)}")


def _selection_roles(manifest) -> np.ndarray:
    """Per manifest row: "train" (fit), "val" (selection) or "test" (held out), by the rule
    the classifier and the GAN search share (`trainables.data.selection`)."""
    split = manifest.frame["split"].to_numpy()
    roles = np.full(len(split), "", dtype=object)
    fit_splits, test_split = split_roles(set(split))
    roles[split == test_split] = "test"
    train = np.flatnonzero(split == "train")
    if "val" in fit_splits:
        roles[train] = "train"
        roles[split == "val"] = "val"
    else:
        codes = manifest.frame["label"].map(manifest.classes.index).to_numpy()[train]
        roles[train] = np.where(holdout_mask(codes), "val", "train")
    return roles


def _link_tree(frame: pd.DataFrame, folder: Path, origin: dict) -> None:
    """`folder/<role>/<label>/<n>-<file name>` -> the image, built aside and moved in whole."""
    unreadable = [c for c in frame["label"].unique() if canonical_label(c) != c]
    if unreadable:
        raise ValueError(f"--minority: class name(s) {unreadable} would not be read back "
                         "from folder names; rename them in the source")
    folder.parent.mkdir(parents=True, exist_ok=True)
    building = Path(tempfile.mkdtemp(prefix=".building-", dir=folder.parent))
    for n, row in enumerate(frame.itertuples()):
        link = building / row.role / row.label / f"{n:05d}-{Path(row.path).name}"
        link.parent.mkdir(parents=True, exist_ok=True)
        os.symlink(Path(row.path).resolve(), link)
    (building / ORIGIN_FILE).write_text(json.dumps(origin, indent=1))
    try:
        building.rename(folder)
    except OSError:
        shutil.rmtree(building)  # another process built the same folder first
        if not (folder / ORIGIN_FILE).is_file():
            raise
