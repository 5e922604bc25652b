"""Reading a search (or a study) back from MLflow: what rank, report, finalize and the
notebooks read.  Layout: `orchestrator.store`.

    record = load_search("latest", "sqlite:///mlruns/mlflow.db")
    table = load_epoch_table(record)      # one row per (trial, epoch)
"""
from __future__ import annotations

import json
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import pandas as pd

from orchestrator import ranking, registry
from orchestrator.config import DEFAULT_MLFLOW_URI
from orchestrator.store.layout import (ROLE, TRIAL_ID, StoreError, epoch_tag, existing_client,
                                       grid_artifact, metric_name, read_checkpoint_file,
                                       role_runs, tag_epoch, trial_runs)


@dataclass(frozen=True)
class SearchRecord:
    """One search as recorded in MLflow: the parent run and its trial runs by trial id."""

    name: str
    tracking_uri: str
    experiment_id: str
    parent: Any  # mlflow.entities.Run
    trials: dict = field(default_factory=dict)  # trial_id -> mlflow.entities.Run

    @property
    def params(self) -> dict[str, str]:
        return dict(self.parent.data.params)

    @property
    def tags(self) -> dict[str, str]:
        return dict(self.parent.data.tags)


def list_searches(tracking_uri: str, role: str = "search") -> list[str]:
    """Names of the searches (or studies, role="study") in the store, newest first."""
    client = existing_client(tracking_uri)
    experiments = {e.experiment_id: e.name for e in client.search_experiments()}
    runs = role_runs(client, role, list(experiments))
    return list(dict.fromkeys(experiments[r.info.experiment_id] for r in runs))


def resolve_name(name: str, tracking_uri: str, role: str = "search") -> str:
    """`latest` -> the newest search's name; any other name is checked to exist."""
    names = list_searches(tracking_uri, role)
    if name == "latest":
        if not names:
            raise StoreError(f"no {role} run (tag {ROLE}={role}) in {tracking_uri}: run "
                             f"`python -m orchestrator.search ...` first or pass --mlflow-uri")
        return names[0]
    if name not in names:
        shown = ", ".join(names[:10]) or "none"
        raise StoreError(f"no {role} named {name!r} in {tracking_uri} (it has: {shown}); "
                         "pass one of those or 'latest'")
    return name


def load_search(name: str, tracking_uri: str = DEFAULT_MLFLOW_URI) -> SearchRecord:
    """The parent run and trial runs of search `name` (or `latest`)."""
    client = existing_client(tracking_uri)
    name = resolve_name(name, tracking_uri)
    experiment = client.get_experiment_by_name(name)
    parent = role_runs(client, "search", [experiment.experiment_id], max_results=1)[0]
    runs = trial_runs(client, experiment.experiment_id, parent.info.run_id)
    trials = {r.data.tags.get(TRIAL_ID, r.info.run_id): r for r in runs}
    return SearchRecord(name=name, tracking_uri=tracking_uri,
                        experiment_id=experiment.experiment_id, parent=parent,
                        trials=dict(sorted(trials.items())))


def load_epoch_table(search: "SearchRecord | str",
                     tracking_uri: str = DEFAULT_MLFLOW_URI) -> pd.DataFrame:
    """One row per (trial_id, epoch) with every metric logged at that step, plus `run_id`,
    `run_status` (the trial run's MLflow status), `checkpoint` (from `ckpt.epoch_NNNN` tags), `resumed_from` (PBT, `lineage.epoch_NNNN`)
    and `verdict` (from `verdict.epoch_NNNN` tags); trial_id as str, epoch as int.  A search
    that has not reported an epoch yet gives an empty table."""
    record = search if isinstance(search, SearchRecord) else load_search(search, tracking_uri)
    client = existing_client(record.tracking_uri)
    rows: dict[tuple[str, int], dict] = {}
    verdicts = []

    def row(trial: str, epoch: int, run) -> dict:
        return rows.setdefault((trial, epoch), {"trial_id": trial, "epoch": epoch,
                                                "run_id": run.info.run_id,
                                                "run_status": run.info.status})

    for trial, run in record.trials.items():
        run_id = run.info.run_id
        for key in run.data.metrics:
            for m in client.get_metric_history(run_id, key):
                row(trial, int(m.step), run)[metric_name(key)] = m.value  # last logged wins
        for key, value in run.data.tags.items():
            if key.startswith("ckpt.epoch_"):
                row(trial, tag_epoch(key), run)["checkpoint"] = value
            elif key.startswith("lineage.epoch_"):
                row(trial, tag_epoch(key), run)["resumed_from"] = value
        verdicts.append(ranking.verdicts_from_tags(trial, run.data.tags))
    if not rows:
        return pd.DataFrame({"trial_id": pd.Series(dtype=str), "epoch": pd.Series(dtype=int),
                             "run_id": pd.Series(dtype=str)})
    table = pd.DataFrame(list(rows.values())).sort_values(["trial_id", "epoch"])
    table = ranking.apply_verdicts(table.reset_index(drop=True), pd.concat(verdicts))
    return table.assign(trial_id=table["trial_id"].astype(str),
                        epoch=table["epoch"].astype(int)).reset_index(drop=True)


def metric_columns(table: pd.DataFrame) -> list[str]:
    """The numeric metric columns of an epoch table (not ids, paths or verdicts)."""
    return [c for c in table.columns if c not in ("trial_id", "epoch", "run_id")
            and pd.api.types.is_numeric_dtype(table[c])]


def _artifact_paths(client, run_id: str, folder: str) -> list[str]:
    try:
        return sorted(f.path for f in client.list_artifacts(run_id, folder) if not f.is_dir)
    except Exception:  # an unreachable artefact store reads as "nothing there"; caller says so
        return []


def _download(client, run_id: str, path: str, dst: Path) -> Path:
    dst.mkdir(parents=True, exist_ok=True)
    return Path(client.download_artifacts(run_id, path, str(dst)))


def load_ranking(record: SearchRecord) -> Optional[pd.DataFrame]:
    """The search's ranking artefact (parquet, else csv), or None if it has none."""
    client = existing_client(record.tracking_uri)
    paths = _artifact_paths(client, record.parent.info.run_id, "ranking")
    for name in ("ranking/ranking.parquet", "ranking/ranking.csv"):
        if name in paths:
            with tempfile.TemporaryDirectory() as tmp:
                local = _download(client, record.parent.info.run_id, name, Path(tmp))
                frame = pd.read_parquet(local) if local.suffix == ".parquet" else pd.read_csv(local)
            frame["trial_id"] = frame["trial_id"].astype(str)
            frame["epoch"] = frame["epoch"].astype(int)
            return frame
    return None


def selected_epoch(record: SearchRecord,
                   ranking: Optional[pd.DataFrame]) -> Optional[tuple[str, int]]:
    """The (trial_id, epoch) the search selected: its `cxr.best_*` tags, else ranking rank 1."""
    tags = record.tags
    if tags.get("cxr.best_trial_id") and tags.get("cxr.best_epoch"):
        return str(tags["cxr.best_trial_id"]), int(tags["cxr.best_epoch"])
    if ranking is not None and "rank" in ranking:
        ranked = ranking[ranking["rank"].notna()].sort_values("rank")
        if len(ranked):
            return str(ranked.iloc[0]["trial_id"]), int(ranked.iloc[0]["epoch"])
    return None


def trial_params(record: SearchRecord) -> pd.DataFrame:
    """One row per trial (index trial_id), one column per searched hyper-parameter."""
    frame = pd.DataFrame({t: dict(r.data.params) for t, r in record.trials.items()}).T
    frame.index.name = "trial_id"
    return frame.sort_index()


def search_objectives(record: SearchRecord) -> list[tuple[str, str]]:
    """The search's objectives [(metric, "min"|"max")], as the search parsed them."""
    experiment = record.params.get("experiment") or record.tags.get("cxr.experiment", "acgan")
    try:
        return registry.parse_objectives(record.params.get("objective") or None, experiment)
    except (ValueError, KeyError) as exc:
        raise StoreError(f"search {record.name!r}: cannot read its objective "
                         f"({record.params.get('objective')!r}, experiment {experiment!r}): "
                         f"{exc}") from exc


def fid_protocol(record: SearchRecord, best: Optional[tuple[str, int]] = None) -> dict[str, str]:
    """`fid_protocol.*` params/tags of the parent (or the selected trial), or a `protocol/`
    artefact's contents; empty when the search recorded none."""
    runs = [record.parent] + ([record.trials[best[0]]] if best and best[0] in record.trials
                              else [])
    for run in runs:
        found = {k: v for source in (run.data.params, run.data.tags)
                 for k, v in source.items() if k.startswith("fid_protocol.")}
        if found:
            return dict(sorted(found.items()))
    client = existing_client(record.tracking_uri)
    for run in runs:
        for path in _artifact_paths(client, run.info.run_id, "protocol"):
            with tempfile.TemporaryDirectory() as tmp:
                text = _download(client, run.info.run_id, path, Path(tmp)).read_text()
            try:
                data = json.loads(text)
            except ValueError:
                return {path: text.strip()}
            return {str(k): json.dumps(v) if isinstance(v, (dict, list)) else str(v)
                    for k, v in (data.items() if isinstance(data, dict) else [(path, data)])}
    return {}


def grid_image(record: SearchRecord, trial_id: str, epoch: int, dst: Path) -> Optional[Path]:
    """The sample grid of (trial, epoch): artefact `grids/epoch_XXXX.png`, else the
    checkpoint's grid.png; None if neither exists."""
    run = record.trials.get(str(trial_id))
    if run is None:
        return None
    client = existing_client(record.tracking_uri)
    name = grid_artifact(epoch)
    if name in _artifact_paths(client, run.info.run_id, "grids"):
        return _download(client, run.info.run_id, name, dst / f"{trial_id}")
    checkpoint = run.data.tags.get(epoch_tag("ckpt", epoch))
    blob = read_checkpoint_file(checkpoint, "grid.png") if checkpoint else None
    if blob is None:
        return None
    out = dst / f"{trial_id}" / Path(name).name
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_bytes(blob)
    return out


def run_images(record: SearchRecord, best: Optional[tuple[str, int]], dst: Path,
               folder: str) -> list[Path]:
    """`<folder>/*.png` artefacts (tsne, memorisation) of the parent run and the selected
    trial, downloaded to dst."""
    client = existing_client(record.tracking_uri)
    runs = [record.parent] + ([record.trials[best[0]]] if best and best[0] in record.trials
                              else [])
    out = []
    for run in runs:
        for path in _artifact_paths(client, run.info.run_id, folder):
            if path.endswith(".png"):
                out.append(_download(client, run.info.run_id, path, dst / run.info.run_id))
    return out


def tsne_images(record: SearchRecord, best: Optional[tuple[str, int]], dst: Path) -> list[Path]:
    """`tsne/*.png` of the parent run and the selected trial (the notebook's call)."""
    return run_images(record, best, dst, "tsne")
