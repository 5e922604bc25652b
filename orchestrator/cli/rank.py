"""`python -m orchestrator.rank`: re-rank a finished search from its stored MLflow metrics,
without retraining.

    python -m orchestrator.rank <search name> --policy staged|pareto|weighted \
        [--mlflow-uri URI] [--out DIR] [--verdicts CSV]

Reads the search's epoch table (`orchestrator.store.reader`; human verdicts as tags
`verdict.epoch_0007 = reject` or a CSV), ranks with `orchestrator.ranking`, and writes
`<out>/ranking_<policy>.parquet` and `.csv`.
"""
from __future__ import annotations

import argparse
from pathlib import Path

from orchestrator import ranking
from orchestrator.config import DEFAULT_MLFLOW_URI
from orchestrator.store.reader import load_epoch_table


def _weights(text: str | None) -> dict[str, float] | None:
    if not text:
        return None
    try:
        return {k.strip(): float(v) for k, v in (p.split("=") for p in text.split(","))}
    except ValueError:
        raise SystemExit(f"--weights {text!r}: write metric=weight pairs, e.g. cas_acc=1,fid=1")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m orchestrator.rank", description=__doc__.split("\n")[0])
    p.add_argument("search", help="search name (= MLflow experiment name)")
    p.add_argument("--policy", choices=list(ranking.POLICIES), default="staged")
    p.add_argument("--mlflow-uri", default=DEFAULT_MLFLOW_URI)
    p.add_argument("--out", type=Path, default=None, help="output folder (default rankings/<search>)")
    p.add_argument("--verdicts", type=Path, default=None, help="CSV trial_id,epoch,verdict")
    p.add_argument("--shortlist", type=int, default=10, help="staged: shortlist size")
    p.add_argument("--objectives", default="cas_acc,fid", help="pareto: comma-separated metrics")
    p.add_argument("--weights", default=None, help="weighted: e.g. cas_acc=1,fid=1,kid=0.5")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    table = load_epoch_table(args.search, args.mlflow_uri)
    verdicts = ranking.load_verdicts_csv(args.verdicts) if args.verdicts else None
    options = {"staged": {"shortlist": args.shortlist},
               "pareto": {"objectives": tuple(args.objectives.split(","))},
               "weighted": {"weights": _weights(args.weights)}}[args.policy]
    ranked = ranking.rank(table, args.policy, verdicts, **options)
    out = args.out or Path("rankings") / args.search
    pq, csv = ranking.write_ranking(ranked, out, f"ranking_{args.policy}")
    cols = [c for c in ("rank", "trial_id", "epoch", "status", "reason") if c in ranked]
    print(ranked[cols].head(10).to_string(index=False))
    print(f"wrote {pq} and {csv}")
    return 0
