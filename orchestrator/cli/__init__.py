"""The commands: argparse -> `main(argv)`; `python -m orchestrator.<command>` runs them."""

import sys
from typing import Callable, TypeVar

Config = TypeVar("Config")


def parse_then_run(parse: Callable[[], Config], run: Callable[[Config], object]) -> int:
    """The commands' shared ending: a bad option (ValueError while parsing) or a bad setting
    found before anything started (ConfigError while running) is one `error:` line and exit
    code 2; a Ctrl-C is `interrupted:` and what the command says about it (how to resume),
    exit code 130 (128 + SIGINT, as a shell reports it); success is 0."""
    from orchestrator.config import ConfigError

    try:
        cfg = parse()
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    try:
        run(cfg)
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt as exc:
        print(f"interrupted: {exc}" if str(exc) else "interrupted", file=sys.stderr)
        return 130
    return 0
