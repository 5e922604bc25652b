"""`python -m orchestrator.study` (also `python -m orchestrator.search classifier` and
`cxr-study`): parse, then run; user mistakes end in one `error:` line and exit code 2."""
from __future__ import annotations

import sys
from typing import Optional, Sequence

from orchestrator.config import ConfigError
from orchestrator.study.config import config_from_args


def main(argv: Optional[Sequence[str]] = None, *,
         prog: str = "python -m orchestrator.study") -> int:
    try:
        cfg = config_from_args(argv, prog=prog)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    from orchestrator.study import driver  # MLflow and torch only once the options are good

    try:
        driver.run(cfg)
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
