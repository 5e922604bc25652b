"""`python -m orchestrator.study` (also `python -m orchestrator.search classifier` and
`cxr-study`): parse, then run; user mistakes end in one `error:` line and exit code 2."""
from __future__ import annotations

import sys
from typing import Optional, Sequence

from orchestrator.cli import parse_then_run
from orchestrator.study.config import config_from_args


def main(argv: Optional[Sequence[str]] = None, *,
         prog: str = "python -m orchestrator.study") -> int:
    def run(cfg) -> None:
        from orchestrator.study import driver  # MLflow and torch only once the options are good

        driver.run(cfg)

    return parse_then_run(lambda: config_from_args(argv, prog=prog), run)


if __name__ == "__main__":
    sys.exit(main())
