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
from trainables.classifier.metrics import accuracy, macro_f1
from trainables.classifier.stats import (Metric, holm, macro_auroc, mcnemar_per_seed,
                                         paired_interval, seed_interval, sensitivity_of,
                                         specificity_of, auroc_of)
from trainables.classifier.strategies import (Synth, keep_share, synth_from_checkpoint,
                                              synth_from_generator)
from trainables.classifier.train import (COMPOSITION_FILE, data_options, evaluate_final,
                                         load_test_set, train_classifier)
from trainables.context import standalone_context
from trainables.data import load_manifest
from trainables.data.default import resolve_default
from trainables.data.manifest import canonical_label, default_cache_dir
from trainables.data.selection import (frame_groups, holdout_mask, load_selection_sets,
                                       split_roles)

# callback(event, payload): event "run" after each trained+evaluated model, "table" at the end.
Callback = Callable[[str, dict], None]

# How tables and verdicts name the strategies.
LABELS = {"none": "no rebalancing", "class_weights": "class weights",
          "undersample": "undersampling", "oversample": "oversampling",
          "positional": "positional oversampling", "gan": "GAN oversampling",
          "gan_positional": "GAN + positional", "gan_balanced": "GAN, balanced share"}
# Every strategy is compared with these two: the baseline, and S0's best strategy (does the
# GAN add anything to plain positional augmentation?).
REFERENCES = ("none", "positional")
# Verdicts: a direction only when the Holm-adjusted p-value of the macro-F1 difference is
# below this (family-wise over all the study's comparisons).
ALPHA = 0.05
# Written beside the derived data folder of `rare_class_source`: where it came from.
ORIGIN_FILE = "ORIGIN.json"


def score_functions(num_classes: int) -> dict[str, Metric]:
    """The study's label scores, by name: what the tables report and the intervals resample."""
    return {"accuracy": accuracy,
            "macro_f1": lambda y_true, y_pred: macro_f1(y_true, y_pred, num_classes)}


def class_functions(classes: Sequence[str]) -> dict[str, tuple[str, Metric]]:
    """Per-class scores: name -> (what it reads: "pred" labels or "score" probabilities,
    the metric).  Sensitivity is the class's recall; AUROC is one class against the rest."""
    out: dict[str, tuple[str, Metric]] = {"macro_auroc": ("score", macro_auroc)}
    for c, name in enumerate(classes):
        out[f"sensitivity/{name}"] = ("pred", sensitivity_of(c))
        out[f"specificity/{name}"] = ("pred", specificity_of(c))
        out[f"auroc/{name}"] = ("score", auroc_of(c))
    return out


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
                                                   **data_options(cfg0)))
    trained = []
    for strategy in strategies:
        for seed in seeds:
            cfg = replace(cfg0, strategy=strategy, seed=int(seed))
            ctx = standalone_context(run_dir / strategy / f"seed{seed}")
            history = train_classifier(cfg, ctx, synth=synth if strategy in GAN_STRATEGIES else None)
            trained.append((cfg, ctx.run_dir, history))
    # Selection is over for every model: read the test split once and evaluate each once.
    test_set = load_test_set(cfg0)
    table = _evaluate(trained, test_set, n_boot=n_boot, callback=callback)
    _write_tables(table, run_dir)
    if callback:
        callback("table", {"table": table})
    return table


def _evaluate(trained: list, test_set, *, n_boot: int, callback: Callback | None) -> pd.DataFrame:
    """Each trained model once on the test set -> the study table with its attrs: runs,
    paired, composition, classes, n_test, best_strategy (chosen on validation)."""
    classes = tuple(test_set.classes)
    runs, preds, scores, compositions, validation = [], {}, {}, {}, {}
    for cfg, path, history in trained:
        final = evaluate_final(path, test_set=test_set)
        row = {"strategy": cfg.strategy, "seed": cfg.seed, "epochs_run": len(history),
               "n_train": history[-1]["n_train"], "n_synthetic": history[-1]["n_synthetic"],
               "val_macro_f1": selection_score(history), "run_dir": str(path),
               **final["metrics"]}
        runs.append(row)
        preds.setdefault(cfg.strategy, []).append(final["y_pred"])
        scores.setdefault(cfg.strategy, []).append(final["y_score"])
        validation.setdefault(cfg.strategy, []).append(row["val_macro_f1"])
        if cfg.strategy not in compositions and (Path(path) / COMPOSITION_FILE).is_file():
            compositions[cfg.strategy] = pd.read_csv(Path(path) / COMPOSITION_FILE)
        if callback:
            callback("run", {"config": cfg.to_dict(), "history": history, "metrics": row})
    table = summarise(test_set.labels, preds, classes, scores=scores, n_boot=n_boot)
    table.insert(2, "val_macro_f1", [float(np.mean(validation[s])) for s in table["strategy"]])
    paired = compare(test_set.labels, preds, classes, scores=scores, n_boot=n_boot)
    composition = (pd.concat(compositions.values(), ignore_index=True) if compositions
                   else pd.DataFrame(columns=["strategy", "class", "real", "synthetic",
                                              "augmented_share"]))
    best = str(table.loc[table["val_macro_f1"].idxmax(), "strategy"])
    table.attrs.update(runs=pd.DataFrame(runs), paired=paired, composition=composition,
                       classes=classes, n_test=int(len(test_set.labels)), best_strategy=best)
    return table


def _write_tables(table: pd.DataFrame, run_dir: Path) -> None:
    run_dir.mkdir(parents=True, exist_ok=True)
    table.to_csv(run_dir / "study.csv", index=False)
    table.attrs["runs"].to_csv(run_dir / "study_runs.csv", index=False)
    (run_dir / "study.md").write_text(study_markdown(table))
    table.attrs["paired"].to_csv(run_dir / "study_paired.csv", index=False)
    (run_dir / "study_paired.md").write_text(paired_markdown(table.attrs["paired"]))
    table.attrs["composition"].to_csv(run_dir / COMPOSITION_FILE, index=False)


def selection_score(history: list[dict]) -> float:
    """Validation macro F1 of the epoch the run kept (its lowest validation loss): what the
    study may rank strategies by.  Test scores never choose anything."""
    kept = min(history, key=lambda row: row["val_loss"])
    return float(kept.get("val_macro_f1", float("nan")))


def _class_names(classes: Sequence[str] | int) -> tuple[str, ...]:
    return tuple(str(c) for c in range(classes)) if isinstance(classes, int) else tuple(classes)


def summarise(y_true: np.ndarray, preds: dict[str, list[np.ndarray]],
              classes: Sequence[str] | int, *, scores: dict[str, list[np.ndarray]] | None = None,
              n_boot: int = 1000, seed: int = 0) -> pd.DataFrame:
    """One row per strategy: seed-averaged accuracy, macro F1, and (with ``scores``, the
    models' class probabilities) macro AUROC, per-class sensitivity, specificity and AUROC,
    each with a 95 % interval over test images *and* training seeds (`seed_interval`)."""
    classes = _class_names(classes)
    rows = []
    for strategy, p in preds.items():
        p = np.stack(p)
        row = {"strategy": strategy, "seeds": len(p)}
        measures = {name: ("pred", fn) for name, fn in score_functions(len(classes)).items()}
        measures.update(class_functions(classes))
        for name, (reads, fn) in measures.items():
            if reads == "score" and (scores is None or strategy not in scores):
                continue
            x = p if reads == "pred" else np.stack(scores[strategy])
            iv = seed_interval(y_true, x, fn, n_boot=n_boot, seed=seed)
            row.update({name: iv.point, f"{name}_ci_low": iv.low, f"{name}_ci_high": iv.high})
        rows.append(row)
    return pd.DataFrame(rows)


def _ci(row, name: str, digits: int = 3) -> str:
    value = row.get(name, float("nan"))
    if value != value:
        return "–"
    return (f"{value:.{digits}f} ({row[f'{name}_ci_low']:.{digits}f}–"
            f"{row[f'{name}_ci_high']:.{digits}f})")


def study_markdown(table: pd.DataFrame) -> str:
    """The study tables as Markdown: per strategy the overall scores (S0's layout plus
    macro AUROC and the validation score that chooses), then per strategy and class the
    clinically read ones (sensitivity, specificity, AUROC)."""
    n = table.attrs.get("n_test")
    best = table.attrs.get("best_strategy")
    seeds = int(table["seeds"].max()) if len(table) else 0
    lines = [f"Imbalance strategies on the held-out test set{f' ({n} images)' if n else ''}; "
             f"mean over {seeds} seed(s); 95 % intervals over test images and training seeds "
             "(seed-aware t interval, `trainables.classifier.stats`)."
             + (f" Best on validation macro F1: `{best}` (chosen on validation, never on test)."
                if best else ""), "",
             "| strategy | seeds | accuracy (95 % CI) | macro F1 (95 % CI) | macro AUROC (95 % CI) "
             "| val macro F1 |", "|---|---:|---|---|---|---:|"]
    for row in table.to_dict("records"):
        val = row.get("val_macro_f1", float("nan"))
        lines.append(f"| {row['strategy']} | {row['seeds']} | {_ci(row, 'accuracy')} | "
                     f"{_ci(row, 'macro_f1')} | {_ci(row, 'macro_auroc')} | "
                     f"{'–' if val != val else f'{val:.3f}'} |")
    classes = [c[len("sensitivity/"):] for c in table.columns
               if c.startswith("sensitivity/") and not c.endswith(("_ci_low", "_ci_high"))]
    if classes:
        lines += ["", "| strategy | class | sensitivity (95 % CI) | specificity (95 % CI) | "
                  "AUROC (95 % CI) |", "|---|---|---|---|---|"]
        for row in table.to_dict("records"):
            for c in classes:
                lines.append(f"| {row['strategy']} | {c} | {_ci(row, f'sensitivity/{c}')} | "
                             f"{_ci(row, f'specificity/{c}')} | {_ci(row, f'auroc/{c}')} |")
    composition = table.attrs.get("composition")
    if composition is not None and len(composition):
        lines += ["", "What each strategy trains on per epoch (real rows, GAN rows, share of the "
                  "class's rows augmented; equal shares across classes: no class marker):", "",
                  "| strategy | " + " | ".join(dict.fromkeys(composition["class"])) + " |",
                  "|---|" + "---|" * composition["class"].nunique()]
        for strategy, rows in composition.groupby("strategy", sort=False):
            lines.append(f"| {strategy} | " + " | ".join(
                f"{r.real} real + {r.synthetic} GAN, {r.augmented_share:.0%} aug."
                for r in rows.itertuples()) + " |")
    return "\n".join(lines) + "\n"


# ------------------------------------------------------------------------------ paired
def compare(y_true: np.ndarray, preds: dict[str, list[np.ndarray]],
            classes: Sequence[str] | int, *, scores: dict[str, list[np.ndarray]] | None = None,
            references: Sequence[str] = REFERENCES, n_boot: int = 1000,
            seed: int = 0) -> pd.DataFrame:
    """One row per (strategy, reference) pair: the seed-averaged difference strategy minus
    reference in accuracy, macro F1 and (with ``scores``) macro AUROC, each with its 95 %
    interval and p-value (`paired_interval`: seed s of one paired with seed s of the other,
    on the same test images); McNemar's exact test per seed (never pooled: the seeds'
    predictions of one image are not independent pairs); and the macro-F1 p-values
    Holm-corrected over all the rows, which decide the verdicts.  A pair already compared
    the other way round is not repeated."""
    classes = _class_names(classes)
    labels = score_functions(len(classes))
    rows, done = [], set()
    for reference in (r for r in references if r in preds):
        for strategy in (s for s in preds if s != reference):
            if (reference, strategy) in done:
                continue
            done.add((strategy, reference))
            a, b = np.stack(preds[strategy]), np.stack(preds[reference])
            row = {"strategy": strategy, "reference": reference, "seeds": len(a),
                   "n_test": len(y_true)}
            measures = {name: (a, b, fn) for name, fn in labels.items()}
            if scores is not None and strategy in scores and reference in scores:
                measures["macro_auroc"] = (np.stack(scores[strategy]),
                                           np.stack(scores[reference]), macro_auroc)
            for name, (x, y, fn) in measures.items():
                iv = paired_interval(y_true, x, y, fn, n_boot=n_boot, seed=seed)
                row.update({f"{name}_diff": iv.point, f"{name}_diff_ci_low": iv.low,
                            f"{name}_diff_ci_high": iv.high, f"{name}_diff_p": iv.p})
            test = mcnemar_per_seed(y_true, a, b)
            row["mcnemar_p_per_seed"] = ";".join(f"{p:.3g}" for p in test.p)
            row["mcnemar_seeds_significant"] = int((np.asarray(test.p) < ALPHA).sum())
            rows.append(row)
    paired = pd.DataFrame(rows)
    if paired.empty:
        return paired
    paired["macro_f1_diff_p_holm"] = holm(paired["macro_f1_diff_p"].to_numpy())
    paired["verdict"] = [verdict(r["strategy"], r["reference"], r["macro_f1_diff"],
                                 r["macro_f1_diff_ci_low"], r["macro_f1_diff_ci_high"],
                                 r["macro_f1_diff_p_holm"], len(paired))
                         for r in paired.to_dict("records")]
    return paired


def verdict(strategy: str, reference: str, diff: float, low: float, high: float,
            p_holm: float, comparisons: int) -> str:
    """One line on a macro-F1 difference: a direction only when its Holm-adjusted p-value
    (over all the study's comparisons) is below ALPHA."""
    a, b = LABELS.get(strategy, strategy), LABELS.get(reference, reference)
    points = f"{100 * diff:+.1f} macro-F1 points [{100 * low:+.1f}, {100 * high:+.1f}]"
    holm_p = f"Holm-adjusted p = {p_holm:.2g} over {comparisons} comparisons"
    if p_holm < ALPHA and diff > 0:
        return f"{a} beats {b} by {points} ({holm_p})"
    if p_holm < ALPHA and diff < 0:
        return f"{a} is worse than {b} by {points} ({holm_p})"
    return f"{a} vs {b}: no evidence of a difference ({points}; {holm_p})"


def paired_markdown(paired: pd.DataFrame) -> str:
    """The paired differences (in points) and the verdicts as Markdown."""
    if paired.empty:
        return (f"No paired comparison: the study has neither {' nor '.join(REFERENCES)} "
                "beside another strategy.\n")
    seeds = int(paired["seeds"].max())
    auroc = "macro_auroc_diff" in paired.columns
    lines = ["Paired differences, strategy minus reference, on the same "
             f"{int(paired['n_test'].iloc[0])} test images, in points (x100); 95 % intervals "
             "over test images and training seeds, seed s of one strategy paired with seed s "
             "of the other" + (" (one seed: test images only)" if seeds == 1 else "")
             + f". Verdicts: Holm-corrected over the {len(paired)} comparisons (family-wise "
             f"{ALPHA:g}); the intervals themselves are not adjusted. McNemar's exact test per "
             "seed (p of each seed).", "",
             "| strategy | reference | Δ macro F1 (95 % CI) | Holm p | Δ accuracy (95 % CI) | "
             + ("Δ macro AUROC (95 % CI) | " if auroc else "") + "McNemar p per seed |",
             "|---|---|---|---:|---|" + ("---|" if auroc else "") + "---|"]
    for r in paired.to_dict("records"):
        cells = [r["strategy"], r["reference"],
                 _points(r["macro_f1_diff"], r["macro_f1_diff_ci_low"], r["macro_f1_diff_ci_high"]),
                 f"{r['macro_f1_diff_p_holm']:.2g}",
                 _points(r["accuracy_diff"], r["accuracy_diff_ci_low"], r["accuracy_diff_ci_high"])]
        if auroc:
            cells.append(_points(r["macro_auroc_diff"], r["macro_auroc_diff_ci_low"],
                                 r["macro_auroc_diff_ci_high"]))
        cells.append(str(r["mcnemar_p_per_seed"]).replace(";", ", "))
        lines.append("| " + " | ".join(cells) + " |")
    lines += ["", "Verdicts (macro F1):", ""] + [f"- {v}" for v in paired["verdict"]]
    return "\n".join(lines) + "\n"


def _points(diff: float, low: float, high: float) -> str:
    if low != low:
        return f"{100 * diff:+.1f}"
    return f"{100 * diff:+.1f} [{100 * low:+.1f}, {100 * high:+.1f}]"


# ------------------------------------------------------------------------------ the data
def data_classes(source: str | Path, *, resolution: int, duplicates: str,
                 **class_options) -> tuple[str, ...]:
    """The class names of ``source``, in label order (reads the manifest only);
    class_options: the loader's exclude_labels= / label_map= / classes=."""
    source = resolve_default(resolution) if str(source) == "default" else source
    return load_manifest(source, duplicates=duplicates, **class_options).classes


def data_fingerprint(source: str | Path, *, resolution: int, channels: int,
                     duplicates: str, **class_options) -> str:
    """The fingerprint a GAN search at ``resolution`` x ``channels`` records for ``source``
    (`cxr.data_fingerprint`: its fit images, from the same split the study uses)."""
    fit, _ = load_selection_sets(source, resolution=resolution, channels=channels,
                                 duplicates=duplicates, **class_options)
    return fit.fingerprint


def rare_class_source(source: str | Path, minority: Mapping[str, float], *,
                      duplicates: str = "drop", cache_dir: str | Path | None = None,
                      **class_options) -> tuple[Path, dict[str, tuple[int, int]]]:
    """(folder, {class: (kept, of)}): ``source`` with the classes in ``minority`` made rare
    in the training split only; class c keeps ``minority[c]`` of its training images.

    The folder holds symbolic links in `{train,val,test}/<class>/` (no image copied): train is
    what the study and a GAN search would fit on, reduced; val is what they validate on (the
    source's val split, or its fixed 15 % of train) and test its held-out split, both
    untouched.  A classifier and a GAN given this folder as their data see exactly these
    images, so the GAN never saw the training images the classifier lost; its name is a hash
    of the source's manifest and ``minority``, so every run finds the same folder (and the
    same data fingerprint).  class_options (exclude_labels= / label_map= / classes=) apply
    to ``source``; the folder holds the resulting class names, read back with
    classes=<those names>."""
    if str(source) == "default" or Path(source).suffix.lower() == ".npz":
        raise ValueError(f"--minority: {source} is a MedMNIST array file; a rare class is "
                         "made from a source of image files (a folder, COVIDx, ieee8023)")
    manifest = load_manifest(source, duplicates=duplicates, cache_dir=cache_dir, **class_options)
    shares = {manifest.classes.index(_class_name(name, manifest.classes)): share
              for name, share in minority.items()}
    frame = manifest.frame.assign(role=_selection_roles(manifest))
    codes = frame["label"].map(manifest.classes.index).to_numpy()
    keep = np.ones(len(frame), dtype=bool)
    train = (frame["role"] == "train").to_numpy()
    keep[train] = keep_share(codes[train], shares)
    wanted = {manifest.classes[c]: share for c, share in sorted(shares.items())}
    key = hashlib.sha256(json.dumps([manifest.digest, wanted, duplicates]).encode()).hexdigest()
    # (the manifest's digest covers the class options: they change its rows or labels)
    slug = "-".join(f"{c}-{share:g}" for c, share in wanted.items()).replace(" ", "_")
    folder = Path(cache_dir or default_cache_dir()) / "rare" / f"{Path(source).name}-{slug}-{key[:12]}"
    counts = {c: (int((train & keep & (frame["label"] == c).to_numpy()).sum()),
                  int((train & (frame["label"] == c).to_numpy()).sum())) for c in wanted}
    if not (folder / ORIGIN_FILE).is_file():
        origin = {"source": str(Path(source).resolve()), "manifest_digest": manifest.digest,
                  "duplicates": duplicates, "minority": wanted,
                  "train_kept_of": counts}
        accepted = manifest.classes if class_options else ()  # the driver reads them back so
        _link_tree(frame[keep], folder, origin, accepted)
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
        groups = frame_groups(manifest.frame)[train]  # patients / near-copies on one side
        roles[train] = np.where(holdout_mask(codes, groups=groups), "val", "train")
    return roles


def _link_tree(frame: pd.DataFrame, folder: Path, origin: dict, accepted=()) -> None:
    """`folder/<role>/<label>/<n>-<file name>` -> the image, built aside and moved in whole;
    ``accepted``: names read back with classes= (the class options were given)."""
    unreadable = [c for c in frame["label"].unique()
                  if canonical_label(c) != c and c not in accepted]
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
