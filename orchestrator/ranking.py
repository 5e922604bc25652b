"""Rank (trial, epoch) checkpoints of a finished search by several criteria.

Pure functions over a table with columns `trial_id`, `epoch` and metric columns (g_loss,
d_fake_acc, cas_acc, fid, intra_fid, kid, ...; NaN where not evaluated).  Every policy
returns all rows, ordered, with `rank` (1 = best; <NA> for rows that cannot be ranked),
`status` and a `reason` saying why the row is where it is:

* status "ranked": ranked by the policy;
* "not_evaluated": a metric the policy needs is NaN at this epoch (listed in the reason);
  these rows come after every ranked row, never silently first;
* "rejected": a human verdict rejected the epoch: never ranked, listed last;
* "collapsed", "memorised", "not_kept", "killed": an epoch no policy may select, whatever
  its scores (`unusable`): near-constant or within-class-collapsed samples, a generator that
  copies its training images (`memorised_share` above `--max-memorised`), a generator whose
  weights were not kept (`--keep-epochs`), a trial the driver's kill left unfinished.

Human verdicts (`verdict` column, "approve" / "reject") are honoured by every policy:
rejected rows are excluded; approved rows always enter the staged shortlist and win ties
(same Pareto front, equal weighted score).
"""
from __future__ import annotations

from pathlib import Path
from typing import Mapping, Sequence

import numpy as np
import pandas as pd

from trainables.metrics.registry import METRICS

VERDICTS = ("approve", "reject")


def _direction(metric: str, directions: Mapping[str, str] | None) -> str:
    known = METRICS[metric].direction if metric in METRICS else None
    d = (directions or {}).get(metric, known)
    if d not in ("min", "max"):
        raise ValueError(f"no direction for metric {metric!r}: pass directions={{{metric!r}: "
                         "'min' or 'max'}")
    return d


def _check(table: pd.DataFrame, metrics: Sequence[str]) -> pd.DataFrame:
    need = ["trial_id", "epoch", *metrics]
    missing = [c for c in need if c not in table.columns]
    if missing:
        raise KeyError(f"epoch table lacks column(s) {missing}; it has {list(table.columns)}")
    df = table.copy().reset_index(drop=True)
    if "verdict" not in df.columns:
        df["verdict"] = ""
    df["verdict"] = df["verdict"].fillna("").astype(str)
    bad = sorted(set(df["verdict"]) - {"", *VERDICTS})
    if bad:
        raise ValueError(f"unknown verdict(s) {bad}; use 'approve' or 'reject'")
    if "exclude_status" not in df.columns:
        df = mark_unusable(df)
    return df


# Collapse limits on the evaluator's visual checks (trainables/metrics): a sample grid where
# half the fakes are one flat colour, or whose within-class Inception spread is below 0.4 of
# the real images' (2026-11 runs, 768-d features, N=200: collapsed or noise epochs 0.04-0.38,
# varied ones 0.55-0.75), is never a champion.  At the smoke budget (48 fakes, 32 px) the
# ratio runs low for every generator: the search passes a lower limit there.
MAX_CONSTANT_FRAC = 0.5
MIN_DIVERSITY = 0.4
# A champion must not copy its training patients (issue 23): at most this share of its
# fakes may be nearer a training image than the 5 % quantile of unseen real images.
MAX_MEMORISED = 0.05


def mark_unusable(df: pd.DataFrame, max_constant_frac: float = MAX_CONSTANT_FRAC,
                  min_diversity: float = MIN_DIVERSITY,
                  max_memorised: float = MAX_MEMORISED) -> pd.DataFrame:
    """Columns `exclude_status`, `exclude_reason` from `unusable` (read by every policy)."""
    df = df.copy()
    marks = unusable(df, max_constant_frac, min_diversity, max_memorised)
    df["exclude_status"] = [status for status, _ in marks]
    df["exclude_reason"] = [reason for _, reason in marks]
    return df


def unusable(df: pd.DataFrame, max_constant_frac: float = MAX_CONSTANT_FRAC,
             min_diversity: float = MIN_DIVERSITY,
             max_memorised: float = MAX_MEMORISED) -> list[tuple[str, str]]:
    """Per row, (status, reason) when no policy may select it, else ("", "").  A metric
    that was not evaluated (NaN) excludes nothing here."""
    def why(row) -> tuple[str, str]:
        if str(row.get("run_status", "")) == "KILLED":
            return "killed", ("not ranked: the driver was killed while this trial ran and the "
                              "resumed search did not continue it (partial trial)")
        constant, diversity = row.get("constant_frac"), row.get("diversity_ratio")
        if pd.notna(constant) and constant >= max_constant_frac:
            return "collapsed", (f"not ranked: near-constant samples (constant_frac="
                                 f"{constant:.2f} >= {max_constant_frac})")
        if pd.notna(diversity) and diversity < min_diversity:
            return "collapsed", (f"not ranked: samples collapsed within a class "
                                 f"(diversity_ratio={diversity:.2f} < {min_diversity})")
        memorised = row.get("memorised_share")
        if pd.notna(memorised) and memorised > max_memorised:
            return "memorised", (f"not ranked: copies its training images (memorised_share="
                                 f"{memorised:.2f} > {max_memorised})")
        kept = row.get("kept")
        if kept is not None and pd.notna(kept) and not bool(kept):
            return "not_kept", ("not ranked: its generator weights were not kept (only the "
                                "--keep-epochs best epochs by the objective keep them)")
        return "", ""
    return [why(row) for _, row in df.iterrows()]


def apply_verdicts(table: pd.DataFrame, verdicts: pd.DataFrame | None) -> pd.DataFrame:
    """Add a `verdict` column from a (trial_id, epoch, verdict) table (later rows win)."""
    df = table.copy()
    if "verdict" not in df.columns:
        df["verdict"] = ""
    if verdicts is None or verdicts.empty:
        return df
    v = validate_verdicts(verdicts).drop_duplicates(["trial_id", "epoch"], keep="last")
    key = df["trial_id"].astype(str) + "#" + df["epoch"].astype(int).astype(str)
    vmap = dict(zip(v["trial_id"] + "#" + v["epoch"].astype(str), v["verdict"]))
    df["verdict"] = [vmap.get(k, old) for k, old in zip(key, df["verdict"].fillna(""))]
    return df


def validate_verdicts(verdicts: pd.DataFrame, source: str = "verdicts") -> pd.DataFrame:
    """Check columns trial_id, epoch, verdict (approve|reject); normalise types."""
    missing = {"trial_id", "epoch", "verdict"} - set(verdicts.columns)
    if missing:
        raise ValueError(f"{source}: missing column(s) {sorted(missing)}; expected "
                         "trial_id,epoch,verdict")
    v = verdicts.copy()
    v["trial_id"] = v["trial_id"].astype(str)
    v["epoch"] = v["epoch"].astype(int)
    v["verdict"] = v["verdict"].astype(str).str.strip().str.lower()
    bad = sorted(set(v["verdict"]) - set(VERDICTS))
    if bad:
        raise ValueError(f"{source}: unknown verdict(s) {bad}; use 'approve' or 'reject'")
    return v


def load_verdicts_csv(path: Path | str) -> pd.DataFrame:
    """A small CSV of human verdicts: trial_id,epoch,verdict."""
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"verdicts file {p} not found; write a CSV with columns "
                                "trial_id,epoch,verdict (approve|reject)")
    return validate_verdicts(pd.read_csv(p, dtype={"trial_id": str}), str(p))


def verdicts_from_tags(trial_id: str, tags: Mapping[str, str]) -> pd.DataFrame:
    """Verdicts stored as MLflow tags `verdict.epoch_0007 = reject` on a trial's run."""
    rows = [{"trial_id": str(trial_id), "epoch": int(k.split("_")[-1]), "verdict": v}
            for k, v in tags.items() if k.startswith("verdict.epoch_")]
    return validate_verdicts(pd.DataFrame(rows, columns=["trial_id", "epoch", "verdict"]),
                             f"tags of trial {trial_id}")


def _split(df: pd.DataFrame, needed: Sequence[str]) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(candidates, excluded-with-reasons); excluded = rejected, unusable (`unusable`) or
    missing a needed metric."""
    rejected = df["verdict"] == "reject"
    barred = (df["exclude_status"] != "") & ~rejected
    missing = df[list(needed)].isna()
    not_eval = missing.any(axis=1) & ~rejected & ~barred
    ex = df[rejected | barred | not_eval].copy()
    ex["status"] = np.where(ex["verdict"] == "reject", "rejected",
                            np.where(barred[ex.index], ex["exclude_status"], "not_evaluated"))
    ex["reason"] = [
        "rejected by human verdict: never ranked" if r else barred_reason if b else
        "not ranked: " + ", ".join(c for c in needed if m[c]) + " not evaluated at this epoch"
        for r, b, barred_reason, (_, m) in zip(ex["verdict"] == "reject", barred[ex.index],
                                               ex["exclude_reason"],
                                               missing.loc[ex.index].iterrows())]
    keep = ~(rejected | barred | not_eval)
    return df[keep].copy(), ex


def _finish(ranked: pd.DataFrame, excluded: pd.DataFrame) -> pd.DataFrame:
    ranked = ranked.copy()
    ranked["status"] = "ranked"
    ranked["rank"] = np.arange(1, len(ranked) + 1)
    excluded = excluded.sort_values(["status", "trial_id", "epoch"])  # not_evaluated, rejected
    out = pd.concat([ranked, excluded.assign(rank=pd.NA)], ignore_index=True)
    out = out.drop(columns=["exclude_status", "exclude_reason"], errors="ignore")
    out["rank"] = out["rank"].astype("Int64")
    first = ["rank", "trial_id", "epoch", "status", "reason", "verdict"]
    return out[first + [c for c in out.columns if c not in first]]


def _score_rank(df: pd.DataFrame, metric: str, directions) -> pd.Series:
    """Rank in [0, 1] (0 = best) of one metric among the rows."""
    asc = _direction(metric, directions) == "min"
    r = df[metric].rank(ascending=asc, method="average")
    return (r - 1) / max(len(df) - 1, 1)


def staged(table: pd.DataFrame, *, shortlist: int = 10,
           stage1: Sequence[str] = ("g_loss", "d_fake_acc"), stage2: str = "cas_acc",
           stage3: Sequence[str] = ("fid", "intra_fid", "kid"),
           directions: Mapping[str, str] | None = None) -> pd.DataFrame:
    """S0's procedure: shortlist by low G loss + low D accuracy on fakes (approved epochs
    always enter), order the shortlist by CAS, break CAS ties by the mean rank of
    FID / intra-FID / KID (those present).  Rows not shortlisted follow, by stage-1 score.
    """
    df = _check(table, stage1)
    cand, excluded = _split(df, stage1)
    s3 = [m for m in stage3 if m in df.columns]
    cand["stage1_score"] = sum(_score_rank(cand, m, directions) for m in stage1) / len(stage1)
    cand["_approved"] = cand["verdict"] == "approve"
    cand = cand.sort_values(["_approved", "stage1_score", "trial_id", "epoch"],
                            ascending=[False, True, True, True])
    n_short = max(shortlist, int(cand["_approved"].sum()))
    short, rest = cand.iloc[:n_short].copy(), cand.iloc[n_short:].copy()
    has_cas = short[stage2].notna() if stage2 in short.columns else pd.Series(False, short.index)
    short["_cas"] = short[stage2] if stage2 in short.columns else np.nan
    if _direction(stage2, directions) == "min":
        short["_cas"] = -short["_cas"]
    short["_has_cas"] = has_cas
    short["stage3_score"] = (sum(_score_rank(short, m, directions).fillna(1.0) for m in s3) / len(s3)
                             if s3 else 0.0)
    short = short.sort_values(["_has_cas", "_cas", "stage3_score", "_approved"],
                              ascending=[False, False, True, False])
    short["reason"] = [
        (f"shortlisted (stage-1 score {s1:.3f}{', approved' if a else ''}); "
         + (f"{stage2}={c:.4g}" if h else f"{stage2} not evaluated: after CAS-scored epochs")
         + (f"; tie-break {'/'.join(s3)} mean rank {s:.3f}" if s3 else ""))
        for s1, a, h, c, s in zip(short["stage1_score"], short["_approved"], short["_has_cas"],
                                  short[stage2] if stage2 in short else [np.nan] * len(short),
                                  short["stage3_score"])]
    rest["reason"] = [f"not shortlisted: stage-1 score {s:.3f} (top {n_short} kept)"
                      for s in rest["stage1_score"]]
    ranked = pd.concat([short, rest]).drop(columns=["_approved", "_cas", "_has_cas"],
                                           errors="ignore")
    return _finish(ranked, excluded)


def pareto_fronts(values: np.ndarray) -> np.ndarray:
    """Front index (0 = non-dominated) of each row of a minimisation matrix (rows x objectives)."""
    n = len(values)
    front = np.full(n, -1)
    left, k = np.arange(n), 0
    while left.size:
        v = values[left]
        dominated = np.array([np.any(np.all(v <= v[i], 1) & np.any(v < v[i], 1))
                              for i in range(len(v))])
        front[left[~dominated]] = k
        left, k = left[dominated], k + 1
    return front


def pareto(table: pd.DataFrame, *, objectives: Sequence[str] = ("cas_acc", "fid"),
           tie_break: str | None = None,
           directions: Mapping[str, str] | None = None) -> pd.DataFrame:
    """Non-dominated fronts over `objectives`; within a front approved rows first, then
    `tie_break` (default: the first objective)."""
    df = _check(table, objectives)
    tie_break = tie_break or objectives[0]
    cand, excluded = _split(df, list(dict.fromkeys([*objectives, tie_break])))
    sign = {m: (1.0 if _direction(m, directions) == "min" else -1.0) for m in objectives}
    vals = np.column_stack([cand[m].to_numpy(float) * sign[m] for m in objectives]) \
        if len(cand) else np.zeros((0, len(objectives)))
    cand["pareto_front"] = pareto_fronts(vals) + 1 if len(cand) else []
    tb_asc = _direction(tie_break, directions) == "min"
    cand["_approved"] = cand["verdict"] == "approve"
    cand = cand.sort_values(["pareto_front", "_approved", tie_break],
                            ascending=[True, False, tb_asc])
    n_fronts = int(cand["pareto_front"].max()) if len(cand) else 0
    cand["reason"] = [
        f"Pareto front {f} of {n_fronts} over {', '.join(objectives)}"
        + (", approved" if a else "") + f"; tie-break {tie_break}={t:.4g}"
        for f, a, t in zip(cand["pareto_front"], cand["_approved"], cand[tie_break])]
    return _finish(cand.drop(columns="_approved"), excluded)


def weighted(table: pd.DataFrame, *, weights: Mapping[str, float] | None = None,
             directions: Mapping[str, str] | None = None) -> pd.DataFrame:
    """Weighted mean of per-metric normalised ranks (0 = best, 1 = worst); lower is better."""
    weights = dict(weights or {"cas_acc": 1.0, "fid": 1.0, "kid": 0.5})
    if not weights or any(w < 0 for w in weights.values()) or sum(weights.values()) <= 0:
        raise ValueError(f"weights must be non-negative with a positive sum; got {weights}")
    df = _check(table, list(weights))
    cand, excluded = _split(df, list(weights))
    total = sum(weights.values())
    parts = {m: _score_rank(cand, m, directions) for m in weights}
    cand["weighted_score"] = sum(w * parts[m] for m, w in weights.items()) / total
    cand["_approved"] = cand["verdict"] == "approve"
    cand = cand.sort_values(["weighted_score", "_approved"], ascending=[True, False])
    cand["reason"] = [
        f"weighted rank score {s:.3f} = " + " + ".join(
            f"{weights[m] / total:.2f}*rank({m}={cand.at[i, m]:.4g})={parts[m][i]:.2f}"
            for m in weights) + (", approved" if a else "")
        for i, s, a in zip(cand.index, cand["weighted_score"], cand["_approved"])]
    return _finish(cand.drop(columns="_approved"), excluded)


# The ranking policies, by the name `--policy` takes.
POLICIES = {"staged": staged, "pareto": pareto, "weighted": weighted}


def rank(table: pd.DataFrame, policy: str, verdicts: pd.DataFrame | None = None, *,
         max_constant_frac: float = MAX_CONSTANT_FRAC, min_diversity: float = MIN_DIVERSITY,
         max_memorised: float = MAX_MEMORISED, **options) -> pd.DataFrame:
    """Apply verdicts and the collapse limits (`unusable`), then the named policy (`staged`,
    `pareto` or `weighted`)."""
    if policy not in POLICIES:
        raise ValueError(f"unknown ranking policy {policy!r}; choose one of {tuple(POLICIES)}")
    table = mark_unusable(apply_verdicts(table, verdicts), max_constant_frac, min_diversity,
                          max_memorised)
    return add_lineage(POLICIES[policy](table, **options))


def add_lineage(table: pd.DataFrame) -> pd.DataFrame:
    """A `lineage` column: under PBT an epoch's weights descend from other trials'
    checkpoints ("b@3 <- a@1": trial b's epoch 3 continued from trial a's epoch 1).

    Needs `checkpoint` (each row's checkpoint path) and `resumed_from` (the foreign checkpoint
    a trial restarted from, at the first epoch after the restart); without them, unchanged."""
    if "resumed_from" not in table.columns or "checkpoint" not in table.columns:
        return table
    owner = {path: (t, int(e)) for t, e, path in
             zip(table["trial_id"], table["epoch"], table["checkpoint"]) if isinstance(path, str)}
    switches: dict[str, list[tuple[int, str]]] = {}
    for t, e, origin in zip(table["trial_id"], table["epoch"], table["resumed_from"]):
        if isinstance(origin, str):
            switches.setdefault(t, []).append((int(e), origin))

    def chain(trial: str, epoch: int, seen: int = 0) -> list[str]:
        here = f"{trial}@{epoch}"
        before = sorted(s for s in switches.get(trial, []) if s[0] <= epoch)
        if not before or seen > len(table):
            return [here]
        start, origin = before[-1]
        if origin not in owner:
            return [here, f"<{origin}>"]
        return [here, *chain(*owner[origin], seen + 1)]

    out = table.copy()
    out["lineage"] = [" <- ".join(chain(t, int(e))) for t, e in zip(out["trial_id"], out["epoch"])]
    return out


def best(ranked: pd.DataFrame) -> pd.Series:
    """The rank-1 row; an error if nothing could be ranked."""
    top = ranked[ranked["rank"] == 1]
    if top.empty:
        raise ValueError("no epoch could be ranked: " + "; ".join(ranked["reason"].head(3)))
    return top.iloc[0]


def write_ranking(ranked: pd.DataFrame, out_dir: Path | str, stem: str) -> tuple[Path, Path]:
    """Save the ranked table as `<stem>.parquet` and `<stem>.csv`; returns both paths."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    pq, csv = out / f"{stem}.parquet", out / f"{stem}.csv"
    ranked.to_parquet(pq, index=False)
    ranked.to_csv(csv, index=False)
    return pq, csv
