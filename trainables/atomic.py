"""Atomic file writes: a reader sees the old file or the new one, never half of one.

Checkpoints, cached statistics, decoded-image caches and manifests are read by other trials
while they are written, and a run can be killed mid-write; several processes may also build
the same cache at once (identical content, the last rename wins).
"""
from __future__ import annotations

import os
import uuid
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator


def temp_path_for(path: Path | str) -> Path:
    """A hidden, unique sibling of `path` that keeps its extension (np.save/np.savez append
    one when it is missing): `dir/.state.<hex>.tmp.pt` for `dir/state.pt`."""
    path = Path(path)
    # uuid4, not the pid: threads of one process and pid reuse must not share a name either.
    return path.with_name(f".{path.stem}.{uuid.uuid4().hex}.tmp{path.suffix}")


@contextmanager
def atomic_path(path: Path | str) -> Iterator[Path]:
    """Yield a temporary path beside `path` to write to; on a clean exit it replaces `path`
    (os.replace, atomic on one file system), on an exception it is removed and `path` is
    left as it was.  The folder must exist."""
    path = Path(path)
    tmp = temp_path_for(path)
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)  # gone already after a successful replace


def write_bytes_atomic(path: Path | str, data: bytes) -> Path:
    """Write `data` to `path` atomically; returns `path`."""
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)
    return Path(path)
