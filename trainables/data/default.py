"""The default data set, PneumoniaMNIST, found the way users obtain it.

Order: the MedMNIST root (``$MEDMNIST_ROOT`` or ``~/.medmnist``) -> the ``medmnist``
package's download (short timeout) -> the local stand-in
``<repo>/../shared/data/medmnist/pneumoniamnist.npz`` -> an error naming the file to put where.
Set CXR_OFFLINE=1 to skip the download attempt.
"""
from __future__ import annotations

import logging
import os
import socket
import threading
from pathlib import Path

from .errors import DataError

log = logging.getLogger(__name__)

FLAG = "pneumoniamnist"
SIZES = (28, 64, 128, 224)  # MedMNIST+ sizes; 28 is the file without a suffix
DOWNLOAD_TIMEOUT_S = 8.0
OFFLINE_ENV = "CXR_OFFLINE"  # set to 1 to skip the download attempt


def medmnist_root() -> Path:
    """``$MEDMNIST_ROOT`` or ``~/.medmnist`` (the medmnist package's default)."""
    return Path(os.environ.get("MEDMNIST_ROOT", Path.home() / ".medmnist"))


def npz_name(size: int) -> str:
    return f"{FLAG}.npz" if size == 28 else f"{FLAG}_{size}.npz"


def wanted_size(resolution: int) -> int:
    """Smallest MedMNIST size >= resolution (224 for anything larger)."""
    return next((s for s in SIZES if s >= resolution), SIZES[-1])


def stand_in_path() -> Path:
    """``../shared/data/medmnist/pneumoniamnist.npz`` relative to the repository root."""
    repo_root = Path(__file__).resolve().parents[2]
    return repo_root.parent / "shared" / "data" / "medmnist" / npz_name(28)


def _download(root: Path, size: int, timeout: float) -> Path | str:
    """Try the medmnist package's own download: the file, or on any failure the reason (one
    line), which the caller folds into the line that names the data set it uses instead."""
    result: dict = {}

    def target() -> None:
        old = socket.getdefaulttimeout()
        socket.setdefaulttimeout(timeout)
        try:
            import medmnist

            root.mkdir(parents=True, exist_ok=True)
            medmnist.PneumoniaMNIST(split="train", download=True, root=str(root),
                                    size=None if size == 28 else size)
            result["ok"] = True
        except Exception as exc:  # noqa: BLE001 - any failure means "not available"
            result["error"] = exc
        finally:
            socket.setdefaulttimeout(old)

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    thread.join(timeout)
    if result.get("ok") and (root / npz_name(size)).is_file():
        return root / npz_name(size)
    reason = str(result.get("error", f"no answer within {timeout:.0f} s")).strip()
    return reason.splitlines()[0] if reason else "unknown error"


_RESOLVED: dict[tuple[str, int], Path] = {}  # filled on use: one download attempt per process


def resolve_default(resolution: int, *, download_timeout: float = DOWNLOAD_TIMEOUT_S) -> Path:
    """Path of the PneumoniaMNIST npz to use for ``resolution``; logs which one it is.

    The answer is remembered per (MedMNIST root, size) for the life of the process, so a
    failed download is tried once, not once per split.
    """
    root = medmnist_root()
    size = wanted_size(resolution)
    key = (str(root), size)
    if key not in _RESOLVED or not _RESOLVED[key].is_file():
        _RESOLVED[key] = _resolve(root, size, resolution, download_timeout)
    return _RESOLVED[key]


def _resolve(root: Path, size: int, resolution: int, download_timeout: float) -> Path:
    present = [root / npz_name(s) for s in SIZES if (root / npz_name(s)).is_file()]
    if (root / npz_name(size)).is_file():
        log.warning("default data set: %s (MedMNIST root)", root / npz_name(size))
        return root / npz_name(size)
    offline = os.environ.get(OFFLINE_ENV, "") not in ("", "0")
    downloaded = f"{OFFLINE_ENV} is set" if offline else _download(root, size, download_timeout)
    if isinstance(downloaded, Path):
        log.warning("default data set: %s (downloaded by medmnist)", downloaded)
        return downloaded
    # One line says which data is used instead and why: the failed download is its reason,
    # not a separate warning above it.
    missing = (f"{npz_name(size)} is not in {root} and medmnist could not download it "
               f"({downloaded}); put it there for the real {size} px images")
    if present:
        log.warning("default data set: %s (MedMNIST root; %s)", present[-1], missing)
        return present[-1]
    stand_in = stand_in_path()
    if stand_in.is_file():
        log.warning("default data set: LOCAL STAND-IN %s, 28x28 images resized to %d (%s)",
                    stand_in, resolution, missing)
        return stand_in
    raise DataError(f"default data set not found: put {npz_name(size)} (or {npz_name(28)}) "
                    f"from https://zenodo.org/records/10519652 into {root} (or set "
                    "MEDMNIST_ROOT), or pass a data folder as the source")
