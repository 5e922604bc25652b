"""`trainables.atomic`: a reader sees the old file or the new one, never a torn or stray file."""
from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

from trainables.atomic import atomic_path, temp_path_for, write_bytes_atomic


def test_success_replaces_and_leaves_only_the_target(tmp_path):
    target = tmp_path / "state.pt"
    target.write_text("old")
    with atomic_path(target) as tmp:
        assert tmp.parent == tmp_path and tmp.name.startswith(".state.") and tmp.suffix == ".pt"
        tmp.write_text("new")
        assert target.read_text() == "old"  # nothing visible before the block ends
    assert target.read_text() == "new"
    assert list(tmp_path.iterdir()) == [target]


def test_an_exception_keeps_the_old_file_and_removes_the_temporary(tmp_path):
    target = tmp_path / "manifest.json"
    target.write_text("old")
    with pytest.raises(RuntimeError, match="killed"):
        with atomic_path(target) as tmp:
            tmp.write_text("half")
            raise RuntimeError("killed mid-write")
    assert target.read_text() == "old"
    assert list(tmp_path.iterdir()) == [target]


def test_an_exception_before_anything_is_written_is_harmless(tmp_path):
    with pytest.raises(ValueError):
        with atomic_path(tmp_path / "new.bin"):
            raise ValueError
    assert list(tmp_path.iterdir()) == []


def test_two_writers_get_different_temporaries_and_the_last_replace_wins(tmp_path):
    target = tmp_path / "images.npy"
    with atomic_path(target) as a, atomic_path(target) as b:
        assert a != b
        a.write_bytes(b"A" * 1000)
        b.write_bytes(b"B" * 1000)
    # b's block closes first, then a's: a's complete content wins.
    assert target.read_bytes() == b"A" * 1000
    assert list(tmp_path.iterdir()) == [target]
    assert len({temp_path_for(target) for _ in range(100)}) == 100


def test_writers_in_two_processes_never_leave_a_torn_file(tmp_path):
    target = tmp_path / "cache.bin"
    code = ("import sys\nfrom trainables.atomic import write_bytes_atomic\n"
            "for _ in range(50):\n"
            "    write_bytes_atomic(sys.argv[1], sys.argv[2].encode() * 100_000)\n")
    procs = [subprocess.Popen([sys.executable, "-c", code, str(target), c]) for c in "xy"]
    assert [p.wait(timeout=120) for p in procs] == [0, 0]
    data = target.read_bytes()
    assert data in (b"x" * 100_000, b"y" * 100_000)
    assert list(tmp_path.iterdir()) == [target]


def test_the_temporary_keeps_the_extension_so_numpy_writes_exactly_there(tmp_path):
    # np.savez appends ".npz" to a name without it; the file would miss the rename.
    target = tmp_path / "stats.npz"
    with atomic_path(target) as tmp:
        np.savez(tmp, mu=np.arange(3))
    with np.load(target) as z:
        assert z["mu"].tolist() == [0, 1, 2]
    assert list(tmp_path.iterdir()) == [target]


def test_write_bytes_atomic(tmp_path):
    assert write_bytes_atomic(tmp_path / "a.csv", b"x,y\n").read_bytes() == b"x,y\n"
