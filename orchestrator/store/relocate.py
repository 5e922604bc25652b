"""A moved search folder keeps its images: `python -m orchestrator.store.relocate DIR/mlflow.db`.

A sqlite store keeps its artefacts beside it (`DIR/artifacts`, `layout.artifact_root`), but
MLflow records every artefact location as an absolute path when it creates an experiment.
After `mv DIR NEW`, the UI would look for the images under the old DIR.  `relocate` rewrites
the old prefix to the new one in every text column of the store (experiments, runs, logged
models, model versions), only for experiments whose old folder is gone and whose artefacts
are found under NEW/artifacts.  The commands that read a store (`existing_client`) call it.
"""
from __future__ import annotations

import sqlite3
import sys
from pathlib import Path
from typing import Sequence


def stale_roots(db: Path) -> list[tuple[str, str]]:
    """(old, new) artefact-root URIs of the experiments whose recorded root is gone while
    the folder beside the database has their artefacts."""
    here = (db.resolve().parent / "artifacts")
    if not here.is_dir():
        return []
    with sqlite3.connect(db) as con:
        locations = [row[0] for row in con.execute("SELECT artifact_location FROM experiments")
                     if row[0]]
    moved = set()
    for location in locations:
        if not location.startswith("file://"):
            continue
        root = Path(location[len("file://"):])  # every experiment shares DIR/artifacts
        if root.name == "artifacts" and root != here and not root.exists():
            moved.add((root.as_uri(), here.as_uri()))
    return sorted(moved)


def relocate(db: Path | str) -> int:
    """Rewrite moved artefact roots in the store at ``db``; returns the rows changed."""
    db = Path(db)
    pairs = stale_roots(db)
    if not pairs:
        return 0
    changed = 0
    with sqlite3.connect(db) as con:
        for table, column in _text_columns(con):
            for old, new in pairs:
                for a, b in ((old, new), (old[len("file://"):], new[len("file://"):])):
                    cur = con.execute(f'UPDATE "{table}" SET "{column}" = '
                                      f'REPLACE("{column}", ?, ?) WHERE "{column}" LIKE ?',
                                      (a, b, a + "%"))
                    changed += cur.rowcount
    return changed


def _text_columns(con) -> list[tuple[str, str]]:
    tables = [r[0] for r in con.execute("SELECT name FROM sqlite_master WHERE type='table'")]
    return [(t, c[1]) for t in tables for c in con.execute(f'PRAGMA table_info("{t}")')
            if (c[2] or "").upper().startswith(("VARCHAR", "TEXT", "CHAR"))]


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if len(args) != 1 or args[0] in ("-h", "--help"):
        print(__doc__)
        return 0 if args and args[0] in ("-h", "--help") else 2
    db = Path(args[0][len("sqlite:///"):] if args[0].startswith("sqlite:///") else args[0])
    if not db.is_file():
        print(f"error: {db}: no MLflow sqlite store there", file=sys.stderr)
        return 2
    print(f"{db}: {relocate(db)} path(s) moved to {db.resolve().parent / 'artifacts'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
