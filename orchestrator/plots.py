"""Figures of a search: pure functions of DataFrames / arrays that return a matplotlib Figure.

Every function builds a `matplotlib.figure.Figure` directly (no pyplot, so no global state
and no GUI backend: PNGs are rendered by Agg), and never reads MLflow itself; the loaders
live in `orchestrator.report`.  `save(fig, path)` writes a PNG.

    table = report.load_epoch_table(record)        # one row per (trial_id, epoch)
    save(loss_curves(table), "report/loss_curves.png")
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Optional, Sequence

import numpy as np
import pandas as pd
from matplotlib.figure import Figure
from matplotlib.image import imread

from trainables.figures import save as save_figure

LOSS_METRICS = ("g_loss", "d_loss")
# D's score of the fakes in D's step and in G's step: read together (README "update step").
D_OF_FAKES = ("d_g_z1", "d_g_z2")
CURVE_METRICS = ("fid", "kid", "intra_fid", "cas_acc", "cas_f1", "diversity_ratio",
                 "memorised_share")
EXCLUDED_STYLE = dict(marker="X", s=70, color="0.55", zorder=4)
# The parameter figure stays readable: at most this many panels (3 per row).
MAX_PARAM_PANELS = 12
BEST_STYLE = dict(marker="*", s=260, color="crimson", edgecolor="black", zorder=5)


def save(fig: Figure, path: str | Path, dpi: int = 110) -> Path:
    """Write `fig` as a PNG (parents created); returns the path."""
    return save_figure(fig, path, dpi=dpi)


def _grid(n: int, ncols: int = 3, size: tuple[float, float] = (4.2, 3.2)):
    ncols = max(1, min(ncols, n))
    nrows = math.ceil(n / ncols)
    fig = Figure(figsize=(size[0] * ncols, size[1] * nrows), layout="constrained")
    axes = fig.subplots(nrows, ncols, squeeze=False).ravel()
    for ax in axes[n:]:
        ax.set_visible(False)
    return fig, axes[:n]


def _require(table: pd.DataFrame, columns: Sequence[str], what: str) -> None:
    missing = [c for c in columns if c not in table.columns]
    if missing:
        raise ValueError(f"{what}: the epoch table has no column(s) {missing} "
                         f"(it has {sorted(table.columns)})")


def _trials(table: pd.DataFrame) -> list[str]:
    return sorted(table["trial_id"].astype(str).unique())


def _epoch_axis(ax) -> None:
    from matplotlib.ticker import MaxNLocator

    ax.xaxis.set_major_locator(MaxNLocator(integer=True))  # no "epoch 0.5"


def selectable(rows: pd.DataFrame) -> pd.Series:
    """Rows a policy may select: the ranking's `status` is "ranked" (or there is none)."""
    if "status" not in rows:
        return pd.Series(True, index=rows.index)
    return rows["status"].isna() | (rows["status"] == "ranked")


def _mark_excluded(ax, rows: pd.DataFrame, metric: str, labelled: set) -> None:
    """Grey crosses on the epochs no policy may select (a `status` other than "ranked"),
    labelled once per status: a collapsed trial's low FID must not look like the best."""
    if "status" not in rows:
        return
    for status, hit in rows[~selectable(rows)].groupby("status"):
        label = None if status in labelled else f"excluded: {status}"
        labelled.add(status)
        ax.scatter(hit["epoch"], hit[metric], **EXCLUDED_STYLE, label=label)


def loss_curves(table: pd.DataFrame, metrics: Sequence[str] = LOSS_METRICS) -> Figure:
    """Generator / discriminator loss per epoch, one line per trial, one panel per loss."""
    _require(table, ["trial_id", "epoch"], "loss_curves")
    present = [m for m in metrics if m in table.columns and table[m].notna().any()]
    if not present:
        raise ValueError(f"loss_curves: none of {list(metrics)} was logged; nothing to plot")
    pair = [m for m in D_OF_FAKES if m in table.columns and table[m].notna().any()]
    fig, axes = _grid(len(present) + bool(pair), ncols=len(present) + bool(pair))
    for ax, metric in zip(axes, present):
        labelled: set = set()
        for trial in _trials(table):
            rows = table[table["trial_id"].astype(str) == trial].sort_values("epoch")
            rows = rows[rows[metric].notna()]
            ax.plot(rows["epoch"], rows[metric], marker=".", label=trial)
            _mark_excluded(ax, rows, metric, labelled)
        ax.set(title=metric, xlabel="epoch", ylabel=metric)
        ax.grid(alpha=0.3)
        _epoch_axis(ax)
    if pair:
        _d_of_fakes(axes[-1], table, pair)
    axes[0].legend(title="trial", fontsize="small")
    return fig


def _d_of_fakes(ax, table: pd.DataFrame, pair: Sequence[str]) -> None:
    """d_g_z1 (solid) and d_g_z2 (dashed) of each trial on one panel."""
    labelled: set = set()
    for i, trial in enumerate(_trials(table)):
        rows = table[table["trial_id"].astype(str) == trial].sort_values("epoch")
        for metric, style in zip(pair, ("-", "--")):
            ax.plot(rows["epoch"], rows[metric], style, color=f"C{i}", label=f"{trial} {metric}")
            _mark_excluded(ax, rows[rows[metric].notna()], metric, labelled)
    ax.set(title="D(G(z)): d_g_z1 (D step, solid),\nd_g_z2 (G step, dashed)", xlabel="epoch",
           ylabel="D's score of the fakes")
    ax.grid(alpha=0.3)
    ax.legend(fontsize="x-small")
    _epoch_axis(ax)


def metric_curves(table: pd.DataFrame, metrics: Optional[Sequence[str]] = None,
                  best: Optional[tuple[str, int]] = None) -> Figure:
    """Evaluation metrics per epoch per trial (CI band where `<m>_ci_low/_ci_high` exist).

    best: the selected (trial_id, epoch), drawn as a red star on every panel.
    """
    _require(table, ["trial_id", "epoch"], "metric_curves")
    wanted = list(dict.fromkeys(metrics if metrics is not None else CURVE_METRICS))
    present = [m for m in wanted if m in table.columns and table[m].notna().any()]
    if not present:
        raise ValueError(f"metric_curves: none of {wanted} was logged; nothing to plot")
    fig, axes = _grid(len(present))
    for ax, metric in zip(axes, present):
        labelled: set = set()
        for trial in _trials(table):
            rows = table[table["trial_id"].astype(str) == trial].sort_values("epoch")
            rows = rows[rows[metric].notna()]
            (line,) = ax.plot(rows["epoch"], rows[metric], marker="o", label=trial)
            lo, hi = f"{metric}_ci_low", f"{metric}_ci_high"
            if lo in rows and hi in rows and rows[[lo, hi]].notna().all(axis=None):
                ax.fill_between(rows["epoch"], rows[lo], rows[hi], alpha=0.15,
                                color=line.get_color())
            _mark_excluded(ax, rows, metric, labelled)
        _epoch_axis(ax)
        if best is not None:
            hit = _row(table, best)
            if hit is not None and pd.notna(hit.get(metric)):
                ax.scatter([best[1]], [hit[metric]], **BEST_STYLE, label="selected")
        ax.set(title=metric, xlabel="epoch", ylabel=metric)
        ax.grid(alpha=0.3)
    axes[0].legend(title="trial", fontsize="small")
    return fig


def _row(table: pd.DataFrame, key: tuple[str, int]) -> Optional[pd.Series]:
    hit = table[(table["trial_id"].astype(str) == str(key[0])) & (table["epoch"] == int(key[1]))]
    return None if hit.empty else hit.iloc[0]


def best_per_trial(table: pd.DataFrame, objective: str, direction: str) -> pd.Series:
    """The best value of `objective` over each trial's epochs (index: trial_id); with the
    ranking's `status`, over the epochs a policy may select (NaN for a trial with none: a
    collapsed trial's low FID is not its "best")."""
    _require(table, ["trial_id", objective], "best_per_trial")
    if direction not in ("min", "max"):
        raise ValueError(f"direction must be 'min' or 'max', got {direction!r}")
    table = table.assign(trial_id=table["trial_id"].astype(str))
    grouped = table[objective].where(selectable(table)).groupby(table["trial_id"])
    return grouped.min() if direction == "min" else grouped.max()


def hparams_vs_objective(params: pd.DataFrame, objective_by_trial: pd.Series, objective: str,
                         best_trial: Optional[str] = None,
                         excluded: Optional[pd.Series] = None) -> Figure:
    """One scatter panel per hyper-parameter: its value (x) against the trial's objective (y).

    params: one row per trial, index trial_id, one column per hyper-parameter (strings or
    numbers); categorical values are placed at integer positions with their names as ticks.
    excluded: the best value of each trial with no selectable epoch, drawn as a grey cross.
    """
    if params.empty or params.shape[1] == 0:
        raise ValueError("hparams_vs_objective: no hyper-parameters were recorded for the trials")
    joined = params.copy()
    joined.index = joined.index.astype(str)
    joined[objective] = objective_by_trial.reindex(joined.index).astype(float)
    shut_out = pd.Series(dtype=float) if excluded is None else excluded
    shut_out = shut_out.set_axis(shut_out.index.astype(str)).reindex(joined.index).astype(float)
    if joined[objective].isna().all() and shut_out.isna().all():
        raise ValueError(f"hparams_vs_objective: no trial has a value for {objective!r}")
    columns = varied(params.drop(columns=[objective], errors="ignore"))[:MAX_PARAM_PANELS]
    if not columns:
        raise ValueError("hparams_vs_objective: every trial ran with the same settings")
    fig, axes = _grid(len(columns))
    for ax, name in zip(axes, columns):
        x, ticks = _as_positions(joined[name])
        ax.scatter(x, joined[objective], s=40, alpha=0.8)
        if shut_out.notna().any():
            ax.scatter(x, shut_out, **EXCLUDED_STYLE,
                       label="trial excluded (no selectable epoch)")
            ax.legend(fontsize="x-small")
        if best_trial is not None and str(best_trial) in joined.index:
            i = list(joined.index).index(str(best_trial))
            ax.scatter([x[i]], [joined[objective].iloc[i]], **BEST_STYLE)
        if ticks is not None:
            ax.set_xticks(range(len(ticks)), ticks, rotation=30, fontsize="small")
        elif _log_scale(name, x):
            ax.set_xscale("log")
        ax.set(xlabel=name, ylabel=f"best {objective}")
        ax.grid(alpha=0.3)
    fig.suptitle(f"hyper-parameters vs best {objective} per trial (star: selected trial)")
    return fig


def varied(params: pd.DataFrame) -> list[str]:
    """The columns whose value differs between trials: the searched hyper-parameters, not
    the protocol constants (paths, hashes, budgets) every trial shares."""
    return [c for c in params.columns if params[c].map(str).nunique() > 1]


def _as_positions(values: pd.Series) -> tuple[np.ndarray, Optional[list[str]]]:
    # A conditional hyper-parameter (beta1 only for Adam, t_0 only for warm restarts) is
    # missing in some trials: NaN there, not a reason to treat the numbers as categories.
    present = values.notna()
    numeric = pd.to_numeric(values, errors="coerce")
    if present.any() and numeric[present].notna().all():
        return numeric.to_numpy(dtype=float), None
    text = values.map(lambda v: "n/a" if pd.isna(v) else str(v))
    labels = sorted(text.unique())
    return text.map({v: i for i, v in enumerate(labels)}).to_numpy(float), labels


def _log_scale(name: str, x: np.ndarray) -> bool:
    # Learning rates are searched log-uniformly and span decades; a linear axis would crush
    # them into one corner.
    finite = x[np.isfinite(x)]
    if finite.size < 2 or finite.min() <= 0 or finite.max() == finite.min():
        return False
    return name.startswith("lr") or finite.max() / finite.min() >= 100


def pareto_mask(values: np.ndarray, directions: Sequence[str]) -> np.ndarray:
    """Boolean mask of the non-dominated rows of `values` (n, k) under `directions`.

    A row is dominated when another row is at least as good in every objective and strictly
    better in one.  Rows with a NaN are never on the front.
    """
    values = np.asarray(values, dtype=float)
    if values.ndim != 2 or values.shape[1] != len(directions):
        raise ValueError(f"values must be (n, {len(directions)}), got {values.shape}")
    if any(d not in ("min", "max") for d in directions):
        raise ValueError(f"directions must be 'min' or 'max', got {list(directions)}")
    signs = np.array([1.0 if d == "min" else -1.0 for d in directions])
    cost = values * signs  # lower is better in every column now
    finite = np.isfinite(cost).all(axis=1)
    mask = finite.copy()
    for i in np.flatnonzero(finite):
        others = cost[finite]
        dominated = (others <= cost[i]).all(axis=1) & (others < cost[i]).any(axis=1)
        mask[i] = not dominated.any()
    return mask


def pareto_front(table: pd.DataFrame, x: tuple[str, str], y: tuple[str, str],
                 best: Optional[tuple[str, int]] = None) -> Figure:
    """Every (trial, epoch) in the plane of two objectives; the non-dominated ones highlighted.

    x, y: (metric, "min"|"max"), e.g. ("fid", "min"), ("cas_acc", "max").
    """
    _require(table, ["trial_id", "epoch", x[0], y[0]], "pareto_front")
    rows = table[table[[x[0], y[0]]].notna().all(axis=1)]
    excluded = rows.iloc[:0]
    if "status" in rows:  # an epoch no policy may select is never on the front
        excluded = rows[rows["status"].notna() & (rows["status"] != "ranked")]
        rows = rows.drop(excluded.index)
    if rows.empty:
        raise ValueError(f"pareto_front: no selectable epoch has both {x[0]} and {y[0]}")
    mask = pareto_mask(rows[[x[0], y[0]]].to_numpy(), [x[1], y[1]])
    fig = Figure(figsize=(6.5, 5), layout="constrained")
    ax = fig.subplots()
    ax.scatter(rows[x[0]], rows[y[0]], c="lightgray", edgecolor="gray", s=30, label="epoch")
    for status, hit in excluded.groupby("status") if len(excluded) else []:
        ax.scatter(hit[x[0]], hit[y[0]], **{**EXCLUDED_STYLE, "s": 40},
                   label=f"excluded: {status}")
    front = rows[mask].sort_values(x[0])
    ax.plot(front[x[0]], front[y[0]], "o-", color="tab:blue", label="non-dominated")
    for _, r in front.iterrows():
        ax.annotate(f"{r['trial_id']}@{int(r['epoch'])}", (r[x[0]], r[y[0]]),
                    textcoords="offset points", xytext=(4, 4), fontsize="x-small")
    if best is not None:
        hit = _row(rows, best)
        if hit is not None:
            ax.scatter([hit[x[0]]], [hit[y[0]]], **BEST_STYLE, label="selected")
    arrow = {"min": "lower is better", "max": "higher is better"}
    ax.set(xlabel=f"{x[0]} ({arrow[x[1]]})", ylabel=f"{y[0]} ({arrow[y[1]]})",
           title=f"Pareto front: {x[0]} vs {y[0]} ({int(mask.sum())} of {len(rows)} epochs)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize="small")
    return fig


def real_class_grid(images: np.ndarray, labels: np.ndarray, n_classes: int,
                    per_class: int = 8, seed: int = 0) -> np.ndarray:
    """A (rows = classes) x (per_class columns) mosaic of real images, uint8 (H, W, C).

    images: uint8 (N, h, w, c) as `trainables.data.load_image_set` returns them.  A class
    with fewer images than `per_class` leaves black cells (visible, not hidden).
    """
    images = np.asarray(images)
    if images.ndim != 4 or images.dtype != np.uint8:
        raise ValueError(f"images must be uint8 (N, h, w, c), got {images.dtype} {images.shape}")
    _, h, w, c = images.shape
    out = np.zeros((n_classes * h, per_class * w, c), dtype=np.uint8)
    rng = np.random.default_rng(seed)
    for k in range(n_classes):
        idx = np.flatnonzero(np.asarray(labels) == k)
        chosen = rng.choice(idx, size=min(per_class, idx.size), replace=False) if idx.size else []
        for j, i in enumerate(sorted(chosen)):
            out[k * h:(k + 1) * h, j * w:(j + 1) * w] = images[i]
    return out


def top_grids(grids: Sequence[tuple[str, np.ndarray]],
              real: Optional[tuple[np.ndarray, Sequence[str]]] = None) -> Figure:
    """Sample grids of the top epochs side by side, after a real-image grid per class.

    grids: (title, image array (H, W) or (H, W, C)) per epoch, best first.
    real: (mosaic from `real_class_grid`, class names, one per mosaic row) or None.
    """
    panels = ([("real (validation)", real[0])] if real is not None else []) + list(grids)
    if not panels:
        raise ValueError("top_grids: no generated grid and no real images to show")
    fig = Figure(figsize=(3.6 * len(panels), 4.0), layout="constrained")
    axes = fig.subplots(1, len(panels), squeeze=False).ravel()
    for ax, (title, image) in zip(axes, panels):
        image = np.asarray(image)
        if image.ndim == 3 and image.shape[2] == 1:
            image = image[..., 0]
        ax.imshow(image, cmap="gray" if image.ndim == 2 else None)
        ax.set_title(title, fontsize="small")
        ax.set_xticks([])
        ax.set_yticks([])
    if real is not None:
        mosaic, classes = real
        row_h = mosaic.shape[0] / max(1, len(classes))
        axes[0].set_yticks([row_h * (i + 0.5) for i in range(len(classes))], list(classes),
                           fontsize="small")
    return fig


def image_panel(images: Sequence[tuple[str, str | Path]], ncols: int = 3) -> Figure:
    """PNG files (title, path) in a grid: confusion matrices, Grad-CAM maps, t-SNE plots."""
    if not images:
        raise ValueError("image_panel: no images given")
    fig, axes = _grid(len(images), ncols=ncols, size=(5.0, 5.0))
    for ax, (title, path) in zip(axes, images):
        ax.imshow(imread(str(path)))
        ax.set_title(title, fontsize="small")
        ax.axis("off")
    return fig


# A trial's contact sheet: at most this many of its epochs' grids, evenly spaced, first and last.
CONTACT_ROWS = 8
SHEET_DPI = 110  # `save`'s default: the sheet's width in inches is the grids' pixels / this


def contact_epochs(epochs: Sequence[int], rows: int = CONTACT_ROWS) -> list[int]:
    """At most `rows` of `epochs` (sorted), evenly spaced, always the first and the last."""
    epochs = sorted(set(int(e) for e in epochs))
    if len(epochs) <= rows:
        return epochs
    picks = np.linspace(0, len(epochs) - 1, rows).round().astype(int)
    return [epochs[i] for i in sorted(set(picks))]


def epochs_sheet(grids: Sequence[tuple[int, str | Path]], title: str,
                  marked: Optional[int] = None) -> Figure:
    """One trial's sample grids over training in one image: a row per epoch (the grid PNGs
    as logged: classes as rows, fixed samples), labelled with the epoch; `marked` (the
    selected epoch) is said in its label."""
    if not grids:
        raise ValueError("no sample grids to put on a contact sheet")
    images = [(epoch, imread(str(path))) for epoch, path in grids]
    aspect = max(img.shape[0] / img.shape[1] for _, img in images)
    # the grids at their own pixels when saved at `save`'s dpi (a shrunk sheet hid the lungs)
    width = max(img.shape[1] for _, img in images) / SHEET_DPI + 0.3
    fig = Figure(figsize=(width, (width - 0.3) * aspect * len(images) + 0.4 * len(images) + 0.6),
                 layout="constrained")
    axes = fig.subplots(len(images), 1, squeeze=False).ravel()
    for ax, (epoch, img) in zip(axes, images):
        ax.imshow(img)
        ax.set_axis_off()
        label = f"epoch {epoch}" + ("  (selected)" if epoch == marked else "")
        ax.set_title(label, loc="left", fontsize=10,
                     color="crimson" if epoch == marked else "black")
    fig.suptitle(title, fontsize=11)
    return fig
