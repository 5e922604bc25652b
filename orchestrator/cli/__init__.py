"""The commands: argparse -> `main(argv)`; `python -m orchestrator.<command>` runs them."""

import sys
import tempfile
from pathlib import Path
from typing import Callable, TypeVar

Config = TypeVar("Config")


def parse_then_run(parse: Callable[[], Config], run: Callable[[Config], object]) -> int:
    """The commands' shared ending: a bad option (ValueError or ConfigError while parsing) or
    a bad setting found before anything started (ConfigError while running) is one `error:`
    line and exit code 2; a Ctrl-C is `interrupted:` and what the command says about it (how
    to resume), exit code 130 (128 + SIGINT, as a shell reports it); success is 0."""
    from orchestrator.config import ConfigError

    try:
        cfg = parse()
    except (ValueError, ConfigError) as exc:
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


def check_out_folder(path: str | Path, flag: str = "--out") -> None:
    """ConfigError unless ``path`` is a folder this process can write, or can be created as
    one; checked before any work, and nothing is created (a probe file in the nearest
    existing folder is removed again)."""
    from orchestrator.config import ConfigError

    path = Path(path)
    existing = path
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        raise ConfigError(f"{flag} {path}: {existing} is a file, not a folder; pass {flag} a "
                          "folder (it is created if needed)")
    try:
        with tempfile.NamedTemporaryFile(dir=existing, prefix=".cxr-write-probe-"):
            pass
    except OSError as exc:
        raise ConfigError(f"{flag} {path}: cannot write to {existing} "
                          f"({exc.strerror or exc}); pass {flag} a folder you can write") from None


SET_HELP = "help"  # `--set help` lists the keys --set takes (search and study)


def config_table(kind, start: dict, column: str = "THIS SEARCH") -> str:
    """One line per dataclass field: key, type, default, and the start value if it differs."""
    import dataclasses

    rows = [("KEY", "TYPE", "DEFAULT", column)]
    for f in dataclasses.fields(kind):
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
        value = start.get(f.name, default)
        rows.append((f.name, str(f.type), as_set_value(default),
                     as_set_value(value) if value != default else ""))
    widths = [max(len(row[i]) for row in rows) for i in range(3)]
    return "\n".join("  ".join(cell.ljust(w) for cell, w in zip(row, widths + [0])).rstrip()
                     for row in rows)


def as_set_value(value) -> str:
    """How a value is written after `--set KEY=` (YAML): null, true/false, '' for empty."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return str(value).lower()
    return str(value) if value != "" else "''"
