"""`python -m orchestrator.report <search | latest> --out report/` (also `cxr-report`): figures
and report.md of a search (`orchestrator.view`)."""
from __future__ import annotations

import argparse
import os
from collections.abc import Sequence

from orchestrator.cli import check_out_folder, parse_then_run
from orchestrator.cli.search import HelpFormatter, add_mlflow_uri, add_search_name

TOP_K = 4  # orchestrator.view.TOP_K (tests/test_cli_help.py): not imported, it loads pandas
EXAMPLES = """examples:
  python -m orchestrator.report latest --out report/
  python -m orchestrator.report acgan-s0-20250101-120000 --mlflow-uri http://HEAD:5000 \\
      --out reports/acgan --top-k 8
"""


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m orchestrator.report", formatter_class=HelpFormatter, epilog=EXAMPLES,
        description="Figures and a Markdown summary (report.md) of one search "
                    "(also: cxr-report).")
    which = p.add_argument_group("which search")
    add_search_name(which)
    add_mlflow_uri(which)
    out = p.add_argument_group("output")
    out.add_argument("--out", default="report", metavar="DIR", help="output folder")
    out.add_argument("--top-k", type=int, default=TOP_K, metavar="K",
                     help="epochs whose grids are shown")
    return p


def checked(args: argparse.Namespace) -> argparse.Namespace:
    """The options, checked before the store is opened (ValueError / ConfigError)."""
    if args.top_k < 1:
        raise ValueError(f"--top-k must be >= 1, got {args.top_k}")
    check_out_folder(args.out)
    return args


def run(args: argparse.Namespace) -> None:
    # MLflow, pandas and matplotlib: only once the options are good
    from orchestrator.config import ConfigError
    from orchestrator.store.layout import StoreError
    from orchestrator.view import write_report

    try:
        path = write_report(args.search, args.mlflow_uri, args.out, top_k=args.top_k)
    except StoreError as exc:
        raise ConfigError(str(exc)) from None
    print(f"report: {path}")


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    # One progress bar per downloaded grid would bury the report's own messages.
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    return parse_then_run(lambda: checked(args), run)
