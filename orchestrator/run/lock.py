"""One driver per search: a lock file beside the search's Tune folder.

`<storage>/<name>.lock` (for a remote --storage: `./ray_results/<name>.lock`, beside the
Optuna study) is created with O_CREAT|O_EXCL before anything expensive starts, so of two
starts racing exactly one wins.  It records the holder (pid, host, start time, command
line, a random token) and is removed when the driver ends, on every path that runs Python's
`finally` (success, error, Ctrl-C).  A driver killed outright (SIGKILL, a crashed machine)
leaves it behind; the next start finds it stale and takes it over:

* same host: the recorded pid is not alive (or a zombie: killed, not yet reaped), or is
  another process by now (its start time in /proc differs from the recorded one);
* another host (a shared file system): the holder refreshes the file's mtime every
  HEARTBEAT_S seconds, so a lock not refreshed for FOREIGN_STALE_S (1 h) is stale;
* unreadable content older than WRITE_GRACE_S (a start killed between create and write).
"""
from __future__ import annotations

import json
import os
import secrets
import shlex
import socket
import sys
import threading
import time
from dataclasses import asdict, dataclass
from datetime import datetime
from pathlib import Path
from typing import Callable, Optional

from orchestrator.config import ConfigError

HEARTBEAT_S = 60.0
FOREIGN_STALE_S = 3600.0  # 60 missed heartbeats: generous for a loaded shared file system
WRITE_GRACE_S = 10.0

_COMMANDS = {"search.py": "python -m orchestrator.search", "cxr-search": "cxr-search"}


def lock_path(storage: str, name: str) -> Path:
    """Where the search `name` under `storage` is locked (next to `<name>-optuna.db`)."""
    root = Path(storage) if "://" not in storage else Path("ray_results").resolve()
    return root / f"{name}.lock"


def invocation() -> Optional[list[str]]:
    """This process's command line as typed (`python -m orchestrator.search acgan ...`), or
    None when the search was not started from its command (called from Python)."""
    prefix = _COMMANDS.get(Path(sys.argv[0]).name) if sys.argv else None
    return None if prefix is None else [*shlex.split(prefix), *sys.argv[1:]]


@dataclass(frozen=True)
class Holder:
    """Who holds a search's lock."""
    pid: int
    host: str
    started: float
    folder: str
    command: str
    token: str
    proc_start: str = ""  # /proc/<pid>/stat start time: tells a reused pid apart

    @classmethod
    def this_process(cls, folder: str) -> "Holder":
        argv = invocation() or [sys.executable, *sys.argv]
        return cls(pid=os.getpid(), host=socket.gethostname(), started=time.time(),
                   folder=folder, command=shlex.join(argv), token=secrets.token_hex(8),
                   proc_start=_proc_start(os.getpid()))

    def describe(self) -> str:
        since = datetime.fromtimestamp(self.started).isoformat(sep=" ", timespec="seconds")
        return f"pid {self.pid} on {self.host} since {since}"

    def stale_reason(self, mtime: float, now: float) -> Optional[str]:
        """Why this holder is gone, or None while it may be alive."""
        if self.host != socket.gethostname():
            idle = now - mtime
            return (f"no heartbeat for {idle / 3600:.1f} h (> {FOREIGN_STALE_S / 3600:g} h)"
                    if idle > FOREIGN_STALE_S else None)
        if not _pid_alive(self.pid):
            return "that process is gone"
        if self.proc_start and _proc_start(self.pid) not in ("", self.proc_start):
            return "that pid is another process now"
        return None


class SearchRunning(ConfigError):
    """The search is locked by a live driver."""


class SearchLock:
    """A taken lock: release() (or leaving the `with` block) removes it if it is still ours."""

    def __init__(self, path: Path, holder: Holder):
        self.path, self.holder = path, holder
        self._stop = threading.Event()
        self._beat = threading.Thread(target=self._heartbeat, name="cxr-lock-heartbeat",
                                      daemon=True)
        self._beat.start()

    def _heartbeat(self) -> None:
        while not self._stop.wait(HEARTBEAT_S):
            try:
                os.utime(self.path)
            except OSError:
                pass

    def release(self) -> None:
        self._stop.set()
        found = _read(self.path)
        if found is not None and found[0] is not None and found[0].token == self.holder.token:
            try:
                os.unlink(self.path)
            except FileNotFoundError:
                pass

    def __enter__(self) -> "SearchLock":
        return self

    def __exit__(self, *exc) -> None:
        self.release()


def acquire(path: Path, name: str, folder: str, *, resume: bool = False,
            say: Callable[[str], None] = lambda line: print(line, file=sys.stderr)) -> SearchLock:
    """Take the lock of search `name` at `path`, taking over a stale one (said in one line);
    a live holder raises SearchRunning naming it (pid, host, since when, folder)."""
    me = Holder.this_process(folder)
    payload = json.dumps(asdict(me)).encode()
    for _ in range(5):
        try:
            fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            found = _read(path)
            if found is None:
                continue  # released between our create and our read: try again
            holder, raw, mtime = found
            why = _why_stale(holder, mtime)
            if why is None:
                raise SearchRunning(_running_message(name, path, holder, resume)) from None
            if _remove_if_unchanged(path, raw):
                who = holder.describe() if holder else "an unreadable lock"
                say(f"lock: search {name!r} was left locked by {who} ({why}); taking it over "
                    f"({path})")
            continue
        try:
            os.write(fd, payload)  # one write: a reader sees all of it or nothing
        finally:
            os.close(fd)
        return SearchLock(path, me)
    raise SearchRunning(f"search {name!r}: could not take its lock {path}: other starts of "
                        "the same search keep taking it; start it once")


def _why_stale(holder: Optional[Holder], mtime: float) -> Optional[str]:
    now = time.time()
    if holder is None:  # empty or torn: a start between its create and its write, or dead
        return f"unreadable for {now - mtime:.0f} s" if now - mtime > WRITE_GRACE_S else None
    return holder.stale_reason(mtime, now)


def _running_message(name: str, path: Path, holder: Optional[Holder], resume: bool) -> str:
    head = (f"--resume: search {name!r} is still running" if resume
            else f"search {name!r} is already running")
    if holder is None:
        return (f"{head}: another start is taking its lock right now ({path}); start a "
                "search once")
    return (f"{head}: {holder.describe()}, folder {holder.folder} (started as: "
            f"{holder.command}). Wait for it to end, stop it (Ctrl-C in its terminal, or "
            f"`kill -INT {holder.pid}` on {holder.host}) before resuming, or pick another "
            f"--name; lock: {path}")


def _read(path: Path) -> Optional[tuple[Optional[Holder], bytes, float]]:
    """(holder or None if unreadable, raw bytes, mtime); None if there is no lock."""
    try:
        raw, mtime = path.read_bytes(), path.stat().st_mtime
    except FileNotFoundError:
        return None
    try:
        fields = json.loads(raw)
        return Holder(**fields), raw, mtime
    except (ValueError, TypeError):
        return None, raw, mtime


def _remove_if_unchanged(path: Path, raw: bytes) -> bool:
    """Remove the stale lock we judged, never a fresh one a racing start just wrote: move it
    aside atomically, compare, and put it back if it was not the one we read."""
    aside = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}")
    try:
        os.rename(path, aside)
    except FileNotFoundError:
        return False  # another start removed it first
    try:
        if aside.read_bytes() == raw:
            return True
        try:
            os.link(aside, path)  # a live lock taken meanwhile: back where it was
        except FileExistsError:
            pass
        return False
    finally:
        aside.unlink(missing_ok=True)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # alive, someone else's
    return _proc_field(pid, 0) != "Z"  # a zombie (killed, not yet reaped) is gone


def _proc_start(pid: int) -> str:
    """The process's start time in clock ticks since boot (Linux), or '' where unknown."""
    return _proc_field(pid, 19)


def _proc_field(pid: int, index: int) -> str:
    """Field `index` after the command name in /proc/<pid>/stat (0: state, 19: start time)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return ""
    return stat.rsplit(")", 1)[1].split()[index]


