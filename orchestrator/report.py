"""`python -m orchestrator.report <search | latest> --out report/`: figures + report.md of a search.

Reads only what a search wrote to MLflow (layout: `orchestrator/tracking.py`): the parent run
(`cxr.role=search`, tags `cxr.best_*`, artefact `ranking/ranking.parquet|csv`) and one child
run per trial (`cxr.role=trial`, per-epoch metrics with step=epoch, `grids/epoch_XXXX.png`).

    path = write_report("acgan-s0-20261122-0300", "sqlite:///mlruns/mlflow.db", "report/")

The loaders here are also what the notebooks call (`load_search`, `load_epoch_table`, ...).
Anything the report cannot show is listed under "Not shown" with the reason; nothing is
silently left out.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional, Sequence

import numpy as np
import pandas as pd

from orchestrator import plots
from orchestrator.objectives import DIRECTIONS, parse_objectives

ROLE, TRIAL_ID = "cxr.role", "cxr.trial_id"
DEFAULT_URI = "sqlite:///mlruns/mlflow.db"
TOP_K = 4
# Pairs tried, in order, for the Pareto figure when the search had a single objective.
# g_loss vs d_fake_acc is S0's stage-1 trade-off, used when no evaluation metric was logged.
PARETO_FALLBACK = ("fid", "cas_acc", "kid", "cas_f1", "intra_fid", "inception_score",
                   "g_loss", "d_fake_acc")
# Timings and step counters: bookkeeping, not qualities of an epoch.
BOOKKEEPING_SUFFIXES = ("_s", "_per_s", "_seconds", "_steps")


class ReportError(RuntimeError):
    """The store or the search cannot be read; the message says what to do."""


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


# ------------------------------------------------------------------------------ loading
def mlflow_client(tracking_uri: str):
    """An MlflowClient for an existing store (a missing sqlite file is an error, not a new DB)."""
    from mlflow.tracking import MlflowClient

    if tracking_uri.startswith("sqlite:///"):
        path = Path(tracking_uri[len("sqlite:///"):])
        if not path.is_file():
            raise ReportError(f"no MLflow store at {path} (from {tracking_uri!r}): run a search "
                              "first, or pass --mlflow-uri / set MLFLOW_TRACKING_URI to its store")
    elif "://" not in tracking_uri:
        raise ReportError(f"MLflow URI {tracking_uri!r}: give sqlite:///path/mlflow.db or "
                          "http(s)://host:port")
    return MlflowClient(tracking_uri)


def _role_runs(client, role: str, experiment_ids: Sequence[str], max_results: int = 1000):
    if not experiment_ids:
        return []
    return client.search_runs(list(experiment_ids), f"tags.`{ROLE}` = '{role}'",
                              order_by=["attributes.start_time DESC"], max_results=max_results)


def list_searches(tracking_uri: str, role: str = "search") -> list[str]:
    """Names of the searches (or studies, role="study") in the store, newest first."""
    client = mlflow_client(tracking_uri)
    experiments = {e.experiment_id: e.name for e in client.search_experiments()}
    runs = _role_runs(client, role, list(experiments))
    return list(dict.fromkeys(experiments[r.info.experiment_id] for r in runs))


def resolve_name(name: str, tracking_uri: str, role: str = "search") -> str:
    """`latest` -> the newest search's name; any other name is checked to exist."""
    names = list_searches(tracking_uri, role)
    if name == "latest":
        if not names:
            raise ReportError(f"no {role} run (tag {ROLE}={role}) in {tracking_uri}: run "
                              f"`python -m orchestrator.search ...` first or pass --mlflow-uri")
        return names[0]
    if name not in names:
        shown = ", ".join(names[:10]) or "none"
        raise ReportError(f"no {role} named {name!r} in {tracking_uri} (it has: {shown}); "
                          "pass one of those or 'latest'")
    return name


def load_search(name: str, tracking_uri: str = DEFAULT_URI) -> SearchRecord:
    """The parent run and trial runs of search `name` (or `latest`)."""
    client = mlflow_client(tracking_uri)
    name = resolve_name(name, tracking_uri)
    experiment = client.get_experiment_by_name(name)
    parent = _role_runs(client, "search", [experiment.experiment_id], max_results=1)[0]
    trial_runs = client.search_runs(
        [experiment.experiment_id],
        f"tags.`{ROLE}` = 'trial' and tags.`mlflow.parentRunId` = '{parent.info.run_id}'",
        max_results=10000)
    trials = {r.data.tags.get(TRIAL_ID, r.info.run_id): r for r in trial_runs}
    return SearchRecord(name=name, tracking_uri=tracking_uri,
                        experiment_id=experiment.experiment_id, parent=parent,
                        trials=dict(sorted(trials.items())))


def load_epoch_table(record: SearchRecord) -> pd.DataFrame:
    """One row per (trial_id, epoch): `orchestrator.rank.load_epoch_table` (metric columns,
    run_id, checkpoint, verdict), with trial_id as str and epoch as int."""
    from orchestrator.rank import load_epoch_table as rank_table

    if not any(run.data.metrics for run in record.trials.values()):
        # A search that has not reported an epoch yet: an empty table, not an error.
        return pd.DataFrame({"trial_id": pd.Series(dtype=str), "epoch": pd.Series(dtype=int),
                             "run_id": pd.Series(dtype=str)})
    try:
        table = rank_table(record.name, record.tracking_uri)
    except LookupError as exc:
        raise ReportError(str(exc)) from exc
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
    client = mlflow_client(record.tracking_uri)
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
    """The search's objectives [(metric, "min"|"max")], as `orchestrator.search` parsed them."""
    experiment = record.params.get("experiment") or record.tags.get("cxr.experiment", "acgan")
    try:
        return parse_objectives(record.params.get("objective") or None, experiment)
    except (ValueError, KeyError) as exc:
        raise ReportError(f"search {record.name!r}: cannot read its objective "
                          f"({record.params.get('objective')!r}, experiment {experiment!r}): "
                          f"{exc}") from exc


def pareto_axes(record: SearchRecord, table: pd.DataFrame) -> Optional[list[tuple[str, str]]]:
    """Two ranking objectives that were logged: the search's own, else e.g. fid vs cas_acc."""
    logged = {c for c in metric_columns(table) if table[c].notna().any()}
    chosen: list[tuple[str, str]] = []
    for metric, direction in [*search_objectives(record),
                              *((m, DIRECTIONS[m]) for m in PARETO_FALLBACK)]:
        if metric in logged and metric not in [m for m, _ in chosen]:
            chosen.append((metric, direction))
    return chosen[:2] if len(chosen) >= 2 else None


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
    client = mlflow_client(record.tracking_uri)
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
    from orchestrator.tracking import read_checkpoint_file

    run = record.trials.get(str(trial_id))
    if run is None:
        return None
    client = mlflow_client(record.tracking_uri)
    name = f"grids/epoch_{int(epoch):04d}.png"
    if name in _artifact_paths(client, run.info.run_id, "grids"):
        return _download(client, run.info.run_id, name, dst / f"{trial_id}")
    checkpoint = run.data.tags.get(f"ckpt.epoch_{int(epoch):04d}")
    blob = read_checkpoint_file(checkpoint, "grid.png") if checkpoint else None
    if blob is None:
        return None
    out = dst / f"{trial_id}" / f"epoch_{int(epoch):04d}.png"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_bytes(blob)
    return out


def real_grid(record: SearchRecord, per_class: int = 8) -> tuple[np.ndarray, tuple[str, ...]]:
    """A per-class mosaic of the search's real validation images (the ones its epochs were
    evaluated on, never the held-out test split) at its resolution/channels."""
    from trainables.data.selection import load_selection_sets

    params = record.params
    missing = [k for k in ("data", "base.resolution") if k not in params]
    if missing:
        raise ReportError(f"parent run has no param(s) {missing}: cannot load its real images")
    _, images = load_selection_sets(params["data"], resolution=int(params["base.resolution"]),
                                    channels=int(params.get("base.channels", 1)),
                                    duplicates=params.get("data_options.duplicates", "error"),
                                    seed=int(params.get("seed", 0)),
                                    skip_bad=params.get("data_options.skip_bad") == "True")
    mosaic = plots.real_class_grid(np.asarray(images.images), images.labels,
                                   len(images.classes), per_class=per_class)
    return mosaic, tuple(images.classes)


def tsne_images(record: SearchRecord, best: Optional[tuple[str, int]], dst: Path) -> list[Path]:
    """`tsne/*.png` artefacts of the parent run and the selected trial, downloaded to dst."""
    client = mlflow_client(record.tracking_uri)
    runs = [record.parent] + ([record.trials[best[0]]] if best and best[0] in record.trials
                              else [])
    out = []
    for run in runs:
        for path in _artifact_paths(client, run.info.run_id, "tsne"):
            if path.endswith(".png"):
                out.append(_download(client, run.info.run_id, path, dst / run.info.run_id))
    return out


# ------------------------------------------------------------------------------ study
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


def load_study(name: str, tracking_uri: str, dst: str | Path,
               missing_ok: bool = False) -> StudyArtifacts:
    """Download a study's `study/table.{csv,md}`, `confusion/*.png`, `gradcam/*.png` to dst.

    missing_ok: with no study in the store, return an empty record whose `missing` says so
    (for notebooks) instead of raising ReportError.
    """
    try:
        name = resolve_name(name, tracking_uri, role="study")
    except ReportError as exc:
        if not missing_ok:
            raise
        return StudyArtifacts(None, None, None, None, (), (), (f"{exc} (a study is run with "
                              "`python -m orchestrator.search classifier ...`)",))
    client = mlflow_client(tracking_uri)
    experiment = client.get_experiment_by_name(name)
    run = _role_runs(client, "study", [experiment.experiment_id], max_results=1)[0]
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
    found = {}
    for folder in ("confusion", "gradcam"):
        pngs = [p for p in _artifact_paths(client, run_id, folder) if p.endswith(".png")]
        found[folder] = tuple(_download(client, run_id, p, dst) for p in pngs)
        if not pngs:
            missing.append(f"{folder}/*.png")
    return StudyArtifacts(name, run_id, table, table_md, found["confusion"], found["gradcam"],
                          tuple(f"study {name!r} (run {run_id}) has no {m}" for m in missing))


# ------------------------------------------------------------------------------ report
@dataclass
class _Report:
    """Figures written and things not shown, collected while the report is built."""

    out_dir: Path
    downloads: Path  # a temporary folder: artefacts fetched only to be drawn
    figures: list = field(default_factory=list)  # (caption, file name)
    missing: list = field(default_factory=list)

    def figure(self, caption: str, file_name: str, build) -> None:
        try:
            fig = build()
        except (ValueError, ReportError) as exc:
            self.missing.append(f"{caption}: {exc}")
            return
        plots.save(fig, self.out_dir / file_name)
        self.figures.append((caption, file_name))


def write_report(search_name: str, tracking_uri: str = DEFAULT_URI,
                 out_dir: str | Path = "report", top_k: int = TOP_K) -> Path:
    """Write the figures and `report.md` of a search into out_dir; returns report.md's path."""
    record = load_search(search_name, tracking_uri)
    table = load_epoch_table(record)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)  # only once there is something to report
    ranking = load_ranking(record)
    best = selected_epoch(record, ranking)
    objectives = search_objectives(record)
    with tempfile.TemporaryDirectory(prefix="cxr-report-") as downloads:
        rep = _Report(out_dir, Path(downloads))
        _collect(rep, record, table, ranking, best, objectives, top_k)
    text = render_markdown(record, table, ranking, best, objectives,
                           fid_protocol(record, best), rep)
    path = out_dir / "report.md"
    path.write_text(text)
    return path


def _collect(rep: _Report, record, table, ranking, best, objectives, top_k: int) -> None:
    if ranking is None:
        rep.missing.append("ranking: the parent run has no ranking/ranking.parquet or .csv "
                           "artefact (the search did not finish its ranking step)")
    if best is None:
        rep.missing.append("selected epoch: no cxr.best_* tags and no rankable row")
    _figures(rep, record, table, ranking, best, objectives, top_k)


def _figures(rep: _Report, record, table, ranking, best, objectives, top_k: int) -> None:
    rep.figure("Generator / discriminator losses per epoch", "loss_curves.png",
               lambda: plots.loss_curves(table))
    curve_metrics = [m for m, _ in objectives] + list(plots.CURVE_METRICS)
    rep.figure("Evaluation metrics per epoch (star: selected epoch)", "metric_curves.png",
               lambda: plots.metric_curves(table, curve_metrics, best))
    objective, direction = objectives[0]
    rep.figure(f"Hyper-parameters vs best {objective} per trial", "hparams_vs_objective.png",
               lambda: plots.hparams_vs_objective(
                   trial_params(record), plots.best_per_trial(table, objective, direction),
                   objective, best[0] if best else None))
    axes = pareto_axes(record, table)
    if axes is None:
        looked = list(dict.fromkeys([m for m, _ in objectives] + list(PARETO_FALLBACK)))
        rep.missing.append(f"Pareto front: fewer than two of {looked} were logged")
    else:
        rep.figure(f"Pareto front {axes[0][0]} vs {axes[1][0]}", "pareto_front.png",
                   lambda: plots.pareto_front(table, axes[0], axes[1], best))
    rep.figure(f"Sample grids of the top-{top_k} epochs beside real images", "top_grids.png",
               lambda: top_grids_figure(record, ranking, top_k, rep.missing))
    tsne = tsne_images(record, best, rep.downloads)
    if not tsne:
        rep.missing.append("t-SNE: no tsne/*.png artefact on the parent run or the selected "
                           "trial's run")
    for i, path in enumerate(tsne):
        name = f"tsne_{i}.png"
        shutil.copyfile(path, rep.out_dir / name)
        rep.figures.append((f"t-SNE of real vs synthetic features ({path.name})", name))


def top_grids_figure(record: SearchRecord, ranking: Optional[pd.DataFrame],
                     top_k: int = TOP_K, missing: Optional[list] = None):
    """The top-k ranked epochs' sample grids beside a per-class grid of real images.

    missing: a list that receives a line for every grid / the real images not shown.
    """
    from matplotlib.image import imread

    from trainables.data import DataError

    missing = [] if missing is None else missing
    if ranking is None or "rank" not in ranking:
        raise ReportError("no ranking, so no top epochs to show")
    top = ranking[ranking["rank"].notna()].sort_values("rank").head(top_k)
    grids = []
    with tempfile.TemporaryDirectory(prefix="cxr-grids-") as tmp:
        for _, row in top.iterrows():
            path = grid_image(record, row["trial_id"], row["epoch"], Path(tmp))
            if path is None:
                missing.append(f"grid of trial {row['trial_id']} epoch {int(row['epoch'])}: "
                               "no grids/ artefact and no grid.png in its checkpoint")
                continue
            grids.append((f"#{int(row['rank'])}: trial {row['trial_id']}, epoch "
                          f"{int(row['epoch'])}", imread(str(path))))
    if not grids:
        raise ReportError("none of the top epochs has a sample grid")
    try:
        real = real_grid(record)
    except (ReportError, DataError, OSError, ValueError) as exc:
        # The generated grids are still worth seeing; the report says why the real ones are not.
        missing.append(f"real images beside the grids: {type(exc).__name__}: "
                       f"{str(exc).splitlines()[0][:300]}")
        real = None
    return plots.top_grids(grids, real)


@dataclass(frozen=True)
class Note:
    """A sentence shown in place of a figure that cannot be drawn (renders in notebooks)."""

    text: str

    def _repr_markdown_(self) -> str:
        return f"**Not shown:** {self.text}"

    def __str__(self) -> str:
        return f"Not shown: {self.text}"


def figure_or_note(build, *args, **kwargs):
    """`build(*args, **kwargs)`, or a Note with the reason when it cannot be drawn."""
    try:
        return build(*args, **kwargs)
    except (ValueError, ReportError) as exc:
        return Note(str(exc))


def _fmt(value: Any) -> str:
    if value is None or value is pd.NA or (isinstance(value, float) and np.isnan(value)):
        return ""
    if isinstance(value, (float, np.floating)):
        return f"{value:.4g}"
    return str(value)


def markdown_table(frame: pd.DataFrame) -> str:
    """A GitHub Markdown table of `frame` (no extra dependency)."""
    head = "| " + " | ".join(map(str, frame.columns)) + " |"
    rule = "|" + "---|" * len(frame.columns)
    body = ["| " + " | ".join(_fmt(v).replace("|", "\\|") for v in row) + " |"
            for row in frame.itertuples(index=False)]
    return "\n".join([head, rule, *body])


def best_metrics(table: pd.DataFrame, best: tuple[str, int],
                 objectives: Sequence[tuple[str, str]]) -> pd.DataFrame:
    """metric | value | 95% CI of the selected epoch (CI where `<m>_ci_low/_ci_high` exist)."""
    row = table[(table["trial_id"] == best[0]) & (table["epoch"] == best[1])]
    if row.empty:
        return pd.DataFrame(columns=["metric", "value", "95% CI"])
    row = row.iloc[0]
    names = [c for c in metric_columns(table) if pd.notna(row[c])
             and not c.endswith(("_ci_low", "_ci_high", *BOOKKEEPING_SUFFIXES))]
    first = [m for m, _ in objectives] + list(plots.CURVE_METRICS)
    names.sort(key=lambda c: (first.index(c) if c in first else len(first), c))
    out = []
    for name in names:
        lo, hi = row.get(f"{name}_ci_low"), row.get(f"{name}_ci_high")
        ci = f"[{lo:.4g}, {hi:.4g}]" if pd.notna(lo) and pd.notna(hi) else ""
        out.append({"metric": name, "value": row[name], "95% CI": ci})
    return pd.DataFrame(out)


def render_markdown(record: SearchRecord, table: pd.DataFrame, ranking, best, objectives,
                    protocol: dict[str, str], rep: _Report) -> str:
    """The report's Markdown text."""
    p = record.params
    lines = [f"# Search report: {record.name}", "",
             f"- MLflow: `{record.tracking_uri}`, experiment `{record.name}`, parent run "
             f"`{record.parent.info.run_id}`",
             f"- experiment: {p.get('experiment', record.tags.get('cxr.experiment', '?'))}, "
             f"preset: {p.get('preset', record.tags.get('cxr.preset', '?'))}, "
             f"data: `{p.get('data', '?')}`",
             f"- objective(s): {', '.join(f'{m} ({d})' for m, d in objectives)}; ranking "
             f"policy: {p.get('policy', 'not recorded')}",
             f"- trials: {len(record.trials)}; (trial, epoch) rows logged: {len(table)}", ""]
    lines += ["## Selected epoch", ""]
    if best is None:
        lines += ["No epoch was selected (no `cxr.best_*` tags and no rankable ranking row).", ""]
    else:
        reason = _reason(ranking, best)
        run = record.trials.get(best[0])
        lines += [f"**Best: trial `{best[0]}`, epoch {best[1]}**", "",
                  f"- trial run: `{run.info.run_id}`" if run else "- trial run: not found",
                  f"- why: {reason}" if reason else "- why: not recorded",
                  f"- checkpoint: `{run.data.tags.get(f'ckpt.epoch_{best[1]:04d}')}`"
                  if run and run.data.tags.get(f"ckpt.epoch_{best[1]:04d}")
                  else "- checkpoint: not recorded", ""]
        metrics = best_metrics(table, best, objectives)
        lines += [markdown_table(metrics) if len(metrics) else
                  "No metrics were logged for this epoch.", ""]
    lines += ["## FID protocol", ""]
    lines += ([f"- `{k}`: {v}" for k, v in protocol.items()] if protocol else
              ["not recorded (no `fid_protocol.*` params/tags and no `protocol/` artefact): "
               "FIDs here are comparable only with FIDs computed the same way at the same N."])
    lines += ["", "## Ranking (top 10)", ""]
    if ranking is not None:
        shown = [m for m, _ in objectives] + [m for m in DIRECTIONS if m in ranking]
        cols = [c for c in dict.fromkeys(["rank", "trial_id", "epoch", *shown, "reason"])
                if c in ranking]
        lines.append(markdown_table(ranking.sort_values("rank", na_position="last")[cols]
                                    .head(10)))
    else:
        lines.append("not recorded")
    stopped = {t: r.data.tags["stop_reason"] for t, r in record.trials.items()
               if r.data.tags.get("stop_reason")}
    if stopped:
        lines += ["", "## Stopped trials", "", *[f"- `{t}`: {why}" for t, why in stopped.items()]]
    lines += ["", "## Figures", ""]
    lines += [f"### {caption}\n\n![{caption}]({name})\n" for caption, name in rep.figures]
    if not rep.figures:
        lines += ["none could be drawn (see below)", ""]
    if rep.missing:
        lines += ["## Not shown", "", *[f"- {m}" for m in rep.missing]]
    return "\n".join(lines) + "\n"


def _reason(ranking, best) -> str:
    if ranking is None or "reason" not in ranking:
        return ""
    hit = ranking[(ranking["trial_id"] == best[0]) & (ranking["epoch"] == best[1])]
    return "" if hit.empty or pd.isna(hit.iloc[0]["reason"]) else str(hit.iloc[0]["reason"])


# ------------------------------------------------------------------------------ CLI
def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m orchestrator.report",
                                description="Figures and a Markdown summary of one search.")
    p.add_argument("search", help="search name (= MLflow experiment) or 'latest'")
    p.add_argument("--out", default="report", help="output folder (default ./report)")
    p.add_argument("--mlflow-uri", default=DEFAULT_URI,
                   help=f"MLflow tracking URI (default {DEFAULT_URI})")
    p.add_argument("--top-k", type=int, default=TOP_K, help="epochs whose grids are shown")
    return p


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    # One progress bar per downloaded grid would bury the report's own messages.
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    if args.top_k < 1:
        print(f"error: --top-k must be >= 1, got {args.top_k}", file=sys.stderr)
        return 2
    try:
        path = write_report(args.search, args.mlflow_uri, args.out, top_k=args.top_k)
    except ReportError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"report: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
