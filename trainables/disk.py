"""Free disk space, checked before a write instead of discovered half-way through it.

A write that hits ENOSPC leaves torn files behind (ours are atomic, Ray's experiment state
and result files are not) and every later write fails too.  So a trial checks the folders it
is about to write before each checkpoint, and stops with `DiskFull` while a reserve is still
free: enough for Ray to record the error and its state, and for the search to end cleanly.
The reserve is `$CXR_MIN_FREE_MB` (default 64 MB)."""
from __future__ import annotations

import errno
import os
import shutil
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

RESERVE_ENV = "CXR_MIN_FREE_MB"
DEFAULT_RESERVE_MB = 64
MB = 1 << 20
_FULL_ERRNOS = (errno.ENOSPC, errno.EDQUOT)


class DiskFull(OSError):
    """A write that would leave less than the reserve free (or that hit ENOSPC)."""

    def __init__(self, path: Path | str, free: int, need: int, message: str | None = None):
        self.path, self.free, self.need = str(path), int(free), int(need)
        super().__init__(errno.ENOSPC, message or (
            f"disk full at {self.path}: {self.free / MB:.0f} MB free, need ~{self.need / MB:.0f} "
            f"MB (including the {reserve() / MB:.0f} MB reserve, ${RESERVE_ENV}); free space "
            "there, then resume"))

    def __str__(self) -> str:  # without OSError's "[Errno 28]" prefix
        return self.strerror

    def __reduce__(self):  # crosses Ray's process boundary intact
        return DiskFull, (self.path, self.free, self.need, self.strerror)


def reserve() -> int:
    """Bytes that must stay free after a write (`$CXR_MIN_FREE_MB`)."""
    raw = os.environ.get(RESERVE_ENV, str(DEFAULT_RESERVE_MB))
    try:
        value = float(raw)
    except ValueError:
        value = -1.0
    if value < 0:
        raise ValueError(f"${RESERVE_ENV}={raw!r}: expected a number of megabytes >= 0")
    return int(value * MB)


def free_bytes(path: Path | str) -> int:
    """Free bytes on the file system that holds `path` (or its nearest existing parent)."""
    path = Path(path).absolute()
    while not path.exists() and path != path.parent:
        path = path.parent
    return shutil.disk_usage(path).free


def require(paths: Iterable[Path | str], need: int) -> None:
    """Raise DiskFull unless `need` bytes plus the reserve are free at each of `paths`
    (local folders; remote stores are the store's business)."""
    total = int(need) + reserve()
    for path in paths:
        free = free_bytes(path)
        if free < total:
            raise DiskFull(path, free, total)


def nbytes(obj: Any) -> int:
    """The tensor bytes in a (nested) state dict: what torch.save will write, within a few KB."""
    if hasattr(obj, "nbytes") and hasattr(obj, "dtype"):
        return int(obj.nbytes)
    if isinstance(obj, dict):
        return sum(nbytes(v) for v in obj.values())
    if isinstance(obj, (list, tuple)):
        return sum(nbytes(v) for v in obj)
    return 0


def found_in(exc: BaseException | None) -> BaseException | None:
    """The full-disk error in `exc` or in what it was raised from (DiskFull, an OSError with
    ENOSPC/EDQUOT, or a library's error that says so, such as sqlite's "database or disk is
    full" inside MLflow's), else None."""
    chain = []
    while exc is not None and len(chain) < 10:
        chain.append(exc)
        exc = exc.__cause__ or exc.__context__
    for link in chain:  # the error itself first: it names the place
        if isinstance(link, DiskFull) or (isinstance(link, OSError) and link.errno in _FULL_ERRNOS):
            return link
    # Then a library's words; the innermost, since an outer one (Tune's) quotes a traceback.
    return next((link for link in reversed(chain) if mentions_disk_full(str(link))), None)


def mentions_disk_full(text: str) -> bool:
    """Whether an error's text (a trial's error file, say) is a full disk."""
    return any(sign in text for sign in ("disk full at ", "No space left on device",
                                         "Disk quota exceeded", "database or disk is full"))


@contextmanager
def translating(path: Path | str, need: int = 0) -> Iterator[None]:
    """Turn an ENOSPC/EDQUOT raised inside into DiskFull naming `path` (one clear reason
    instead of the library's traceback)."""
    try:
        yield
    except DiskFull:
        raise
    except OSError as exc:
        if exc.errno not in _FULL_ERRNOS:
            raise
        raise DiskFull(path, free_bytes(path), int(need) + reserve()) from exc


@contextmanager
def writing(folder: Path | str, need: int) -> Iterator[None]:
    """Around a write of `need` bytes into `folder`: the space is checked first, and an
    ENOSPC inside is DiskFull too (`require` + `translating`, the pair every write needs)."""
    require([folder], need)
    with translating(folder, need):
        yield
