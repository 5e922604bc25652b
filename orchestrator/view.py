"""The researcher's view of one search: figures + `report.md`, from what the search wrote to
MLflow (read through `orchestrator.store.reader`).  Anything that cannot be shown is listed
under "Not shown" with the reason; nothing is silently left out.

    path = write_report("acgan-s0-20261122-0300", "sqlite:///mlruns/mlflow.db", "report/")

`Note` and `figure_or_note` let the notebooks show the same reasons in place of a figure.
"""
from __future__ import annotations

import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional, Sequence

import numpy as np
import pandas as pd
from matplotlib.image import imread

from orchestrator import plots
from orchestrator.config import DEFAULT_MLFLOW_URI, data_options_from_params
from orchestrator.store.layout import SAME_EPOCH
from orchestrator.store.reader import (SearchRecord, StoreError, fid_protocol, grid_image,
                                       load_epoch_table, load_ranking, load_search,
                                       metric_columns, search_objectives, selected_epoch,
                                       trial_params, run_images)
from trainables.data import DataError
from trainables.data.selection import load_selection_sets
from trainables.metrics.registry import METRICS, OBJECTIVES

TOP_K = 4
# Pairs tried, in order, for the Pareto figure when the search had a single objective.
# g_loss vs d_fake_acc is S0's stage-1 trade-off, used when no evaluation metric was logged.
PARETO_FALLBACK = ("fid", "cas_acc", "kid", "cas_f1", "intra_fid", "is", "g_loss", "d_fake_acc")
# Timings and step counters: bookkeeping, not qualities of an epoch.
BOOKKEEPING_SUFFIXES = ("_s", "_per_s", "_seconds", "_steps")


def pareto_axes(record: SearchRecord, table: pd.DataFrame) -> Optional[list[tuple[str, str]]]:
    """Two ranking objectives that were logged: the search's own, else e.g. fid vs cas_acc."""
    logged = {c for c in metric_columns(table) if table[c].notna().any()}
    chosen: list[tuple[str, str]] = []
    for metric, direction in [*search_objectives(record),
                              *((m, METRICS[m].direction) for m in PARETO_FALLBACK)]:
        if metric in logged and metric not in [m for m, _ in chosen]:
            chosen.append((metric, direction))
    return chosen[:2] if len(chosen) >= 2 else None


def real_grid(record: SearchRecord, per_class: int = 8) -> tuple[np.ndarray, tuple[str, ...]]:
    """A per-class mosaic of the search's real validation images (the ones its epochs were
    evaluated on, never the held-out test split) at its resolution/channels."""
    params = record.params
    missing = [k for k in ("data", "base.resolution") if k not in params]
    if missing:
        raise StoreError(f"parent run has no param(s) {missing}: cannot load its real images")
    options = {"duplicates": "error", **data_options_from_params(params)}  # the search's own
    _, images = load_selection_sets(params["data"], resolution=int(params["base.resolution"]),
                                    channels=int(params.get("base.channels", 1)),
                                    seed=int(params.get("seed", 0)), **options)
    mosaic = plots.real_class_grid(np.asarray(images.images), images.labels,
                                   len(images.classes), per_class=per_class)
    return mosaic, tuple(images.classes)


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
        except (ValueError, StoreError) as exc:
            self.missing.append(f"{caption}: {exc}")
            return
        plots.save(fig, self.out_dir / file_name)
        self.figures.append((caption, file_name))


def write_report(search_name: str, tracking_uri: str = DEFAULT_MLFLOW_URI,
                 out_dir: str | Path = "report", top_k: int = TOP_K) -> Path:
    """Write the figures and `report.md` of a search into out_dir; returns report.md's path."""
    record = load_search(search_name, tracking_uri)
    table = load_epoch_table(record)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)  # only once there is something to report
    ranking = load_ranking(record)
    table = with_status(table, ranking)
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
    rep.figure(f"Hyper-parameters that differ between trials vs best {objective} per trial "
               f"(at most {plots.MAX_PARAM_PANELS})", "hparams_vs_objective.png",
               lambda: _hparams_figure(record, table, objective, direction, best))
    axes = pareto_axes(record, table)
    if axes is None:
        looked = list(dict.fromkeys([m for m, _ in objectives] + list(PARETO_FALLBACK)))
        rep.missing.append(f"Pareto front: fewer than two of {looked} were logged")
    else:
        rep.figure(f"Pareto front {axes[0][0]} vs {axes[1][0]}", "pareto_front.png",
                   lambda: plots.pareto_front(table, axes[0], axes[1], best))
    rep.figure(f"Sample grids of the top-{top_k} epochs beside real images", "top_grids.png",
               lambda: top_grids_figure(record, ranking, top_k, rep.missing))
    _run_images(rep, record, best, "tsne", "t-SNE of real vs synthetic features")
    _run_images(rep, record, best, "memorisation", "The selected generator's fakes nearest a "
                "training image, beside those images (distance; COPY below the threshold)")
    _run_images(rep, record, best, "contact_sheet", "The selected trial's sample grids over "
                "training (evenly spaced epochs; the selected epoch's label in red)")


def _run_images(rep: _Report, record, best, folder: str, caption: str) -> None:
    """Copy the parent's and the selected trial's `<folder>/*.png` into the report."""
    found = run_images(record, best, rep.downloads / folder, folder)
    if not found:
        rep.missing.append(f"{caption}: no {folder}/*.png artefact on the parent run or the "
                           "selected trial's run")
    for i, path in enumerate(found):
        name = f"{folder}_{i}.png"
        shutil.copyfile(path, rep.out_dir / name)
        rep.figures.append((f"{caption} (logged as {folder}/{path.name})", name))


def _hparams_figure(record, table: pd.DataFrame, objective: str, direction: str, best):
    """Each trial at its best selectable epoch; a trial with none as a grey cross."""
    chosen = plots.best_per_trial(table, objective, direction)
    every = plots.best_per_trial(table.drop(columns="status", errors="ignore"), objective,
                                 direction)
    return plots.hparams_vs_objective(trial_params(record), chosen, objective,
                                      best[0] if best else None,
                                      excluded=every[chosen.reindex(every.index).isna()])


def with_status(table: pd.DataFrame, ranking: Optional[pd.DataFrame]) -> pd.DataFrame:
    """The epoch table with the ranking's `status` per (trial, epoch), so that figures grey
    out the epochs no policy may select (collapsed, memorised, not kept, killed)."""
    if ranking is None or "status" not in ranking or "status" in table:
        return table
    status = ranking[["trial_id", "epoch", "status"]].astype({"trial_id": str, "epoch": int})
    return table.astype({"trial_id": str}).merge(status, on=["trial_id", "epoch"], how="left")


def top_grids_figure(record: SearchRecord, ranking: Optional[pd.DataFrame],
                     top_k: int = TOP_K, missing: Optional[list] = None):
    """The top-k ranked epochs' sample grids beside a per-class grid of real images.

    missing: a list that receives a line for every grid / the real images not shown.
    """
    missing = [] if missing is None else missing
    if ranking is None or "rank" not in ranking:
        raise StoreError("no ranking, so no top epochs to show")
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
        raise StoreError("none of the top epochs has a sample grid")
    try:
        real = real_grid(record)
    except (StoreError, DataError, OSError, ValueError) as exc:
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
    except (ValueError, StoreError) as exc:
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
                  *versus_line(record),
                  f"- checkpoint: `{run.data.tags.get(f'ckpt.epoch_{best[1]:04d}')}`"
                  if run and run.data.tags.get(f"ckpt.epoch_{best[1]:04d}")
                  else "- checkpoint: not recorded", ""]
        metrics = best_metrics(table, best, objectives)
        lines += [markdown_table(metrics) if len(metrics) else
                  "No metrics were logged for this epoch.", ""]
        lines += winning_settings(record, best)
    lines += ["## FID protocol", ""]
    lines += ([f"- `{k}`: {v}" for k, v in protocol.items()] if protocol else
              ["not recorded (no `fid_protocol.*` params/tags and no `protocol/` artefact): "
               "FIDs here are comparable only with FIDs computed the same way at the same N."])
    lines += ["", "## Ranking (top 10)", ""]
    if ranking is not None:
        shown = [m for m, _ in objectives] + [m for m in OBJECTIVES if m in ranking]
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


def versus_line(record: SearchRecord) -> list[str]:
    """Why the selection beat the epoch with the best objective value, as the search (or the
    last `rank`) recorded it on the parent run; nothing when they are the same epoch."""
    versus = record.tags.get("cxr.best_versus_lowest", "")
    return [f"- not the same epoch as {versus}"] if versus and versus != SAME_EPOCH else []


def winning_settings(record: SearchRecord, best: tuple[str, int]) -> list[str]:
    """The selected trial's hyper-parameters that the search varied (the rest are the
    protocol every trial shared), as a Markdown section."""
    params = trial_params(record)
    if best[0] not in params.index:
        return ["### Winning hyper-parameters", "", "not recorded for this trial", ""]
    columns = plots.varied(params) or list(params.columns)
    row = params.loc[best[0], columns]
    table = pd.DataFrame({"hyper-parameter": columns, "value": [row[c] for c in columns]})
    return ["### Winning hyper-parameters", "",
            f"What the search varied ({len(columns)} of {params.shape[1]} recorded params; "
            "the others were the same in every trial):", "", markdown_table(table), ""]


def _reason(ranking, best) -> str:
    if ranking is None or "reason" not in ranking:
        return ""
    hit = ranking[(ranking["trial_id"] == best[0]) & (ranking["epoch"] == best[1])]
    return "" if hit.empty or pd.isna(hit.iloc[0]["reason"]) else str(hit.iloc[0]["reason"])
