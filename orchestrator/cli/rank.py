"""`python -m orchestrator.rank`: re-rank a finished search from its stored MLflow metrics,
without retraining, and move its selection (best-run tags, `champion` alias) to the new
rank 1 unless `--dry-run`.

    python -m orchestrator.rank <search | latest> --policy staged|pareto|weighted \\
        [--verdicts CSV] [--dry-run] [--mlflow-uri URI] [--out DIR]

Reads the search's epoch table (`orchestrator.store.reader`; human verdicts as tags
`verdict.epoch_0007 = reject` or a CSV), ranks with `orchestrator.ranking`, writes
`<out>/ranking_<policy>.parquet` and `.csv`, and records the new ranking on the search.
"""
from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import pandas as pd
from mlflow.tracking import MlflowClient

from orchestrator import ranking
from orchestrator.config import DEFAULT_MLFLOW_URI, SearchConfig
from orchestrator.finalize import mark_kept, record_best
from orchestrator.store.layout import StoreError
from orchestrator.store.reader import SearchRecord, load_epoch_table, load_search

POLICY_HELP = ("staged: S0's procedure (shortlist by low G loss and D fake-accuracy, then "
               "CAS, then FID/intra-FID/KID); pareto: non-dominated fronts over --objectives; "
               "weighted: weighted mean of per-metric ranks (--weights). Default staged")


def _weights(text: str | None) -> dict[str, float] | None:
    if not text:
        return None
    try:
        return {k.strip(): float(v) for k, v in (p.split("=") for p in text.split(","))}
    except ValueError:
        raise SystemExit(f"--weights {text!r}: write metric=weight pairs, e.g. cas_acc=1,fid=1")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m orchestrator.rank",
                                description=__doc__.split("\n\n")[0])
    p.add_argument("search", help="search name (= MLflow experiment name) or 'latest'")
    p.add_argument("--policy", choices=list(ranking.POLICIES), default="staged", help=POLICY_HELP)
    p.add_argument("--mlflow-uri", default=DEFAULT_MLFLOW_URI,
                   help=f"MLflow tracking URI of the search (default {DEFAULT_MLFLOW_URI})")
    p.add_argument("--out", type=Path, default=None,
                   help="folder for ranking_<policy>.parquet/.csv (default rankings/<search>)")
    p.add_argument("--verdicts", type=Path, default=None,
                   help="CSV trial_id,epoch,verdict (approve|reject): human verdicts, e.g. "
                        "after looking at the grids")
    p.add_argument("--dry-run", action="store_true",
                   help="only print and write the ranking; leave the search's best-run tags "
                        "and the champion alias as they are")
    p.add_argument("--min-diversity", type=float, default=None,
                   help="never rank an epoch whose diversity_ratio is below this (collapsed "
                        "within a class; default: what the search used, 0.4 or 0.25 at the "
                        "smoke budget)")
    p.add_argument("--max-constant-frac", type=float, default=ranking.MAX_CONSTANT_FRAC,
                   help="never rank an epoch where this share of the fakes is one flat image "
                        f"(default {ranking.MAX_CONSTANT_FRAC})")
    p.add_argument("--max-memorised", type=float, metavar="SHARE",
                   help="never rank an epoch whose memorised_share is above SHARE (default: "
                        "the search's --max-memorised, else 0.05)")
    p.add_argument("--shortlist", type=int, default=10,
                   help="staged: how many epochs stage 1 keeps for CAS (default 10)")
    p.add_argument("--objectives", default="cas_acc,fid",
                   help="pareto: comma-separated metrics (default cas_acc,fid)")
    p.add_argument("--weights", default=None,
                   help="weighted: metric=weight pairs (default cas_acc=1,fid=1,kid=0.5)")
    return p


def search_config(record: SearchRecord, policy: str) -> SearchConfig:
    """The search's own settings, as far as ranking and registering need them."""
    params = record.params
    experiment = params.get("experiment") or record.tags.get("cxr.experiment", "acgan")
    return SearchConfig(experiment=experiment, preset=params.get("preset", "s0"),
                        name=record.name, mlflow_uri=record.tracking_uri, policy=policy,
                        smoke=params.get("smoke") == "True",
                        objective=params.get("objective") or None,
                        max_memorised=float(params.get("max_memorised", ranking.MAX_MEMORISED)))


def shown(ranked: pd.DataFrame, rows: int = 10) -> str:
    cols = [c for c in ("rank", "trial_id", "epoch", "status", "reason") if c in ranked]
    top = ranked[cols].head(rows).copy()
    top["epoch"] = top["epoch"].astype(int)
    return top.to_string(index=False)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        record = load_search(args.search, args.mlflow_uri)
    except StoreError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    cfg = search_config(record, args.policy)
    table = load_epoch_table(record)
    if cfg.is_gan:
        table = mark_kept(table)
    verdicts = ranking.load_verdicts_csv(args.verdicts) if args.verdicts else None
    options = {"staged": {"shortlist": args.shortlist},
               "pareto": {"objectives": tuple(args.objectives.split(","))},
               "weighted": {"weights": _weights(args.weights)}}[args.policy]
    limit = args.min_diversity if args.min_diversity is not None else cfg.diversity_limit()
    memorised = args.max_memorised if args.max_memorised is not None else cfg.max_memorised
    ranked = ranking.rank(table, args.policy, verdicts, min_diversity=limit,
                          max_constant_frac=args.max_constant_frac, max_memorised=memorised,
                          **options)
    out = args.out or Path("rankings") / record.name
    pq, csv = ranking.write_ranking(ranked, out, f"ranking_{args.policy}")
    print(shown(ranked))
    print(f"wrote {pq} and {csv}")
    print(update_selection(record, cfg, ranked, args.dry_run))
    return 0


def update_selection(record: SearchRecord, cfg: SearchConfig, ranked: pd.DataFrame,
                     dry_run: bool) -> str:
    """Move the search's selection to the new rank 1 (tags, note, ranking artefact, a new
    registry version aliased `champion`); returns what happened, in a sentence."""
    try:
        best = ranking.best(ranked).to_dict()
    except ValueError as exc:
        return f"nothing rankable ({exc}); the search's selection is unchanged"
    new = (str(best["trial_id"]), int(best["epoch"]))
    old = (record.tags.get("cxr.best_trial_id"), record.tags.get("cxr.best_epoch"))
    if old == (new[0], str(new[1])):
        return f"the selection is unchanged: trial {new[0]}, epoch {new[1]}"
    if dry_run:
        return (f"--dry-run: would select trial {new[0]}, epoch {new[1]} (now: trial {old[0]}, "
                f"epoch {old[1]}); nothing changed")
    client = MlflowClient(record.tracking_uri)
    parent = record.parent.info.run_id
    with tempfile.TemporaryDirectory() as tmp:
        for path in ranking.write_ranking(ranked, tmp, "ranking"):
            client.log_artifact(parent, str(path), artifact_path="ranking")
    done = record_best(cfg, None, client, parent, best)
    client.set_tag(parent, "cxr.reranked", f"policy {cfg.policy}; was trial {old[0]}, epoch {old[1]}")
    registered = done.get("registered_model")
    return (f"selected trial {new[0]}, epoch {new[1]} (was trial {old[0]}, epoch {old[1]})"
            + (f"; champion -> {registered['name']} version {registered['version']}"
               if registered else ""))
