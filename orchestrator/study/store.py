"""The study's MLflow layout, written and read here only.

- experiment name = study name; parent run tagged `cxr.role=study` with the budget as params,
  the tables as `study/table.{md,csv}`, `study/runs.csv`, `study/paired.{md,csv}` and
  `study/composition.csv`, the verdicts in its note, `cxr.best_strategy` (chosen on
  validation);
- one child run per (strategy, seed) tagged `cxr.role=study_run` and `strategy`, with its
  per-epoch training metrics (`step = epoch`), its test metrics (`test_*`), confusion matrix
  and Grad-CAM.
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import pandas as pd
from mlflow.entities import Metric

from orchestrator.store.layout import (PARENT, ROLE, StoreError, existing_client, flatten,
                                       log_as, log_params, metric_key, numeric,
                                       role_runs)
from orchestrator.store.reader import _artifact_paths, _download, resolve_name
from trainables.classifier.config import GAN_STRATEGIES


def study_run_logger(client, search_name: str, parent: str,
                     generator_tags: dict[str, str] | None = None):
    """A `run_study` callback: one MLflow run per (strategy, seed) as it finishes; the runs
    of the GAN strategies carry ``generator_tags`` (which generator version and epoch)."""
    experiment = client.get_experiment_by_name(search_name).experiment_id

    def callback(kind: str, payload: dict) -> None:
        if kind == "run":
            _log_study_run(client, experiment, parent, payload, generator_tags or {})

    return callback


def _log_study_run(client, experiment: str, parent: str, payload: dict,
                   generator_tags: dict[str, str]) -> None:
    row, config = payload["metrics"], payload["config"]
    label = f"{config['strategy']}-seed{config['seed']}"
    run = client.create_run(experiment, run_name=label, tags={
        ROLE: "study_run", PARENT: parent, "strategy": config["strategy"],
        # what the model really started from, not the flag: a custom CNN never loads
        # ImageNet weights
        "pretrained": str(bool(row.get("pretrained"))),
        **(generator_tags if config["strategy"] in GAN_STRATEGIES else {})})
    run_id = run.info.run_id
    log_params(client, run_id, flatten("", config))
    now = int(time.time() * 1000)
    metrics = [Metric(metric_key(key), value, now, epoch)
               for epoch, history in enumerate(payload["history"])
               for key, value in numeric(history).items() if key != "epoch"]
    metrics += [Metric(metric_key(key if key.startswith("test") else f"test_{key}"), value, now, 0)
                for key, value in numeric(row).items()]
    for start in range(0, len(metrics), 1000):  # MLflow's limit per batch
        client.log_batch(run_id, metrics=metrics[start:start + 1000])
    run_dir = Path(row["run_dir"])
    for name, folder in (("confusion_matrix.png", "confusion"), ("gradcam.png", "gradcam"),
                         ("classification_report.txt", "report"),
                         ("test_metrics.json", "report")):
        if (run_dir / name).exists():
            client.log_artifact(run_id, str(run_dir / name), artifact_path=folder)
            log_as(client, parent, run_dir / name, folder, f"{label}{Path(name).suffix}")
    client.set_terminated(run_id, "FINISHED")


def log_study_table(client, parent: str, run_dir: Path, markdown: str, best_strategy: str,
                    paired: pd.DataFrame | None = None,
                    table: pd.DataFrame | None = None) -> None:
    """The study's table (Markdown, CSV, per-run CSV), its composition and its paired
    differences (`study/paired.{csv,md}`, and per pair the metrics
    `<strategy>_vs_<reference>/<name>`), per strategy its scores with their intervals as
    metrics `<strategy>/<name>` on its parent run, which then ends."""
    for name, logged in (("study.md", "table.md"), ("study.csv", "table.csv"),
                         ("study_runs.csv", "runs.csv"), ("study_paired.csv", "paired.csv"),
                         ("study_paired.md", "paired.md"), ("composition.csv", "composition.csv")):
        if (run_dir / name).exists():
            log_as(client, parent, run_dir / name, "study", logged)
    note = markdown
    if table is not None:
        _log_strategy_metrics(client, parent, table)
    if paired is not None and len(paired):
        _log_paired_metrics(client, parent, paired)
        note += "\n" + "\n".join(f"- {v}" for v in paired["verdict"]) + "\n"
    client.set_tag(parent, "mlflow.note.content", note)
    client.set_tag(parent, "cxr.best_strategy", best_strategy)
    client.set_terminated(parent, "FINISHED")


def _log_strategy_metrics(client, parent: str, table: pd.DataFrame) -> None:
    now = int(time.time() * 1000)
    metrics = [Metric(f"study/{row['strategy']}/{key}", value, now, 0)
               for row in table.to_dict("records")
               for key, value in numeric(row).items() if key != "seeds" and value == value]
    for start in range(0, len(metrics), 1000):  # MLflow takes at most 1000 per batch
        client.log_batch(parent, metrics=metrics[start:start + 1000])


def _log_paired_metrics(client, parent: str, paired: pd.DataFrame) -> None:
    now = int(time.time() * 1000)
    metrics = [Metric(f"{row['strategy']}_vs_{row['reference']}/{key}", value, now, 0)
               for row in paired.to_dict("records")
               for key, value in numeric(row).items()
               if key not in ("seeds", "n_test") and value == value]
    for start in range(0, len(metrics), 1000):  # MLflow takes at most 1000 per batch
        client.log_batch(parent, metrics=metrics[start:start + 1000])


@dataclass(frozen=True)
class StudyArtifacts:
    """What a classifier study (parent run tagged cxr.role=study) left in MLflow."""

    name: Optional[str]
    run_id: Optional[str]
    table: Optional[pd.DataFrame]
    table_md: Optional[str]
    confusion: tuple[Path, ...]
    gradcam: tuple[Path, ...]
    missing: tuple[str, ...]
    paired: Optional[pd.DataFrame] = None  # strategy vs reference: differences, CIs, verdicts
    composition: Optional[pd.DataFrame] = None  # strategy x class: real, synthetic, augmented


def load_study(name: str, tracking_uri: str, dst: str | Path,
               missing_ok: bool = False) -> StudyArtifacts:
    """Download a study's `study/table.{csv,md}`, `study/paired.csv`, `confusion/*.png`,
    `gradcam/*.png` to dst.

    missing_ok: with no study in the store, return an empty record whose `missing` says so
    (for notebooks) instead of raising StoreError.
    """
    try:
        name = resolve_name(name, tracking_uri, role="study")
    except StoreError as exc:
        if not missing_ok:
            raise
        return StudyArtifacts(None, None, None, None, (), (), (f"{exc} (a study is run with "
                              "`python -m orchestrator.study ...`)",))
    client = existing_client(tracking_uri)
    experiment = client.get_experiment_by_name(name)
    run = role_runs(client, "study", [experiment.experiment_id], max_results=1)[0]
    run_id, dst, missing = run.info.run_id, Path(dst), []
    study_files = _artifact_paths(client, run_id, "study")
    table = table_md = None
    if "study/table.csv" in study_files:
        table = pd.read_csv(_download(client, run_id, "study/table.csv", dst))
    else:
        missing.append("study/table.csv (the results table with CIs)")
    if "study/table.md" in study_files:
        table_md = _download(client, run_id, "study/table.md", dst).read_text()
    else:
        missing.append("study/table.md")
    paired = None
    if "study/paired.csv" in study_files:
        paired = pd.read_csv(_download(client, run_id, "study/paired.csv", dst))
    else:
        missing.append("study/paired.csv (the paired differences and verdicts)")
    composition = None
    if "study/composition.csv" in study_files:
        composition = pd.read_csv(_download(client, run_id, "study/composition.csv", dst))
    found = {}
    for folder in ("confusion", "gradcam"):
        pngs = [p for p in _artifact_paths(client, run_id, folder) if p.endswith(".png")]
        found[folder] = tuple(_download(client, run_id, p, dst) for p in pngs)
        if not pngs:
            missing.append(f"{folder}/*.png")
    return StudyArtifacts(name, run_id, table, table_md, found["confusion"], found["gradcam"],
                          tuple(f"study {name!r} (run {run_id}) has no {m}" for m in missing),
                          paired, composition)
