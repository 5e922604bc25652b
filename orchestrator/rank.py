"""Re-rank a finished search from its stored MLflow metrics, without retraining.

    python -m orchestrator.rank <search name> --policy staged|pareto|weighted \
        [--mlflow-uri URI] [--out DIR] [--verdicts CSV]

Reads the experiment named after the search (trial runs tagged `cxr.role=trial`,
`cxr.trial_id`; per-epoch metrics logged with step=epoch; human verdicts as tags
`verdict.epoch_0007 = reject`), ranks with `orchestrator.ranking`, and writes
`<out>/ranking_<policy>.parquet` and `.csv`.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import pandas as pd

from . import ranking

DEFAULT_URI = "sqlite:///mlruns/mlflow.db"


def load_epoch_table(search_name: str, tracking_uri: str = DEFAULT_URI) -> pd.DataFrame:
    """One row per (trial_id, epoch) with every metric logged at that step, plus `run_id`,
    `checkpoint` (from `ckpt.epoch_NNNN` tags) and `verdict` (from `verdict.epoch_NNNN` tags).
    """
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri)
    exp = client.get_experiment_by_name(search_name)
    if exp is None:
        names = [e.name for e in client.search_experiments(max_results=50)]
        raise LookupError(f"no search named {search_name!r} in MLflow at {tracking_uri}; "
                          f"searches there: {names} (is --mlflow-uri right?)")
    runs = client.search_runs([exp.experiment_id], "tags.`cxr.role` = 'trial'", max_results=50000)
    if not runs:
        raise LookupError(f"search {search_name!r} at {tracking_uri} has no trial runs "
                          "(tag cxr.role=trial)")
    rows: dict[tuple[str, int], dict] = {}
    verdicts = []
    for run in runs:
        tags = run.data.tags
        trial = tags.get("cxr.trial_id", run.info.run_id)
        for key in run.data.metrics:
            for m in client.get_metric_history(run.info.run_id, key):
                row = rows.setdefault((trial, int(m.step)), {"trial_id": trial,
                                                             "epoch": int(m.step),
                                                             "run_id": run.info.run_id})
                row[key] = m.value  # history is in logging order: the last value wins
        for key, value in tags.items():
            if key.startswith("ckpt.epoch_"):
                row = rows.setdefault((trial, int(key.split("_")[-1])),
                                      {"trial_id": trial, "epoch": int(key.split("_")[-1]),
                                       "run_id": run.info.run_id})
                row["checkpoint"] = value
            elif key.startswith("lineage.epoch_"):
                row = rows.setdefault((trial, int(key.split("_")[-1])),
                                      {"trial_id": trial, "epoch": int(key.split("_")[-1]),
                                       "run_id": run.info.run_id})
                row["resumed_from"] = value
        verdicts.append(ranking.verdicts_from_tags(trial, tags))
    if not rows:  # trials exist but none has reported an epoch yet (e.g. mid-search)
        return pd.DataFrame(columns=["trial_id", "epoch", "run_id"])
    table = pd.DataFrame(list(rows.values())).sort_values(["trial_id", "epoch"])
    return ranking.apply_verdicts(table.reset_index(drop=True), pd.concat(verdicts))


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
    p.add_argument("--policy", choices=ranking.POLICIES, default="staged")
    p.add_argument("--mlflow-uri", default=DEFAULT_URI)
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


if __name__ == "__main__":
    sys.exit(main())
