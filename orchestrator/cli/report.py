"""`python -m orchestrator.report <search | latest> --out report/`: figures + report.md of a
search (`orchestrator.view`)."""
from __future__ import annotations

import argparse
import os
import sys
from typing import Optional, Sequence

from orchestrator.config import DEFAULT_MLFLOW_URI
from orchestrator.store.layout import StoreError
from orchestrator.view import TOP_K, write_report


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m orchestrator.report",
                                description="Figures and a Markdown summary of one search.")
    p.add_argument("search", help="search name (= MLflow experiment) or 'latest'")
    p.add_argument("--out", default="report", help="output folder (default ./report)")
    p.add_argument("--mlflow-uri", default=DEFAULT_MLFLOW_URI,
                   help=f"MLflow tracking URI (default {DEFAULT_MLFLOW_URI})")
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
    except StoreError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"report: {path}")
    return 0
