"""Riding out a tracking server that goes away for a while (restarted, its SSH tunnel
re-opened, the head node busy).

MLflow's own HTTP retries are off (`layout.prepare_tracking_uri`: the start-up check must
fail in seconds when no server exists), so each request fails at once; the retries live here:

- `Outage` is the clock of one server's outage: when requests began failing, the last error,
  the back-off before the next try (0.5 s doubling to 5 s) and the bound after which the
  search gives up: `CXR_MLFLOW_OUTAGE_S` seconds, 120 unless set (0 gives up at once).
- `RetryingClient` wraps an `MlflowClient`: each call retries transient failures until the
  outage is older than the bound (the search's reads, run creation, the final ranking).
- `WriteQueue` holds the writes that must not hold the search up (a trial's metrics, tags,
  grids): in order, tried again at the next chance while the server is away, so nothing is
  lost or reordered; `MlflowOutage` when the bound is passed.

Only transport failures and 429/502/503/504 are transient; any other MLflow error (a bad
parameter, a missing run) is raised at once, as before.
"""
from __future__ import annotations

import os
import sys
import time
from typing import Any, Callable, Optional

OUTAGE_ENV = "CXR_MLFLOW_OUTAGE_S"
DEFAULT_OUTAGE_S = 120.0
_TRANSIENT_STATUS = {429, 502, 503, 504}


def outage_limit() -> float:
    """Seconds an outage may last before the search gives up (`$CXR_MLFLOW_OUTAGE_S`)."""
    value = os.environ.get(OUTAGE_ENV, "")
    try:
        return max(0.0, float(value)) if value.strip() else DEFAULT_OUTAGE_S
    except ValueError:
        raise ValueError(f"${OUTAGE_ENV}={value!r}: give a number of seconds") from None


def backoff(attempt: int) -> float:
    """Seconds before try `attempt + 1`: 0.5, 1, 2, 4, then every 5 s (a restarted server
    is written to within 5 s of its first answer)."""
    return min(0.5 * 2 ** max(attempt - 1, 0), 5.0)


def is_transient(exc: BaseException) -> bool:
    """A failure to reach the server (refused, reset, timed out, proxy 5xx), not an error
    the server answered with."""
    import requests
    from mlflow.exceptions import MlflowException, RestException

    seen: set[int] = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        if isinstance(exc, (requests.ConnectionError, requests.Timeout, ConnectionError,
                            TimeoutError)):
            return True
        if isinstance(exc, requests.HTTPError) and exc.response is not None:
            return exc.response.status_code in _TRANSIENT_STATUS
        if isinstance(exc, MlflowException):
            text = exc.message if isinstance(exc.message, str) else str(exc)
            # rest_utils wraps any transport error as "API request to URL failed with exception"
            if text.startswith("API request to ") and " failed with " in text and "exception" in text:
                return True
            if not isinstance(exc, RestException) and " failed with error code 5" in text:
                return True  # a proxy's or gateway's non-JSON 5xx page
            return exc.get_http_status_code() in _TRANSIENT_STATUS
        exc = exc.__cause__ or exc.__context__
    return False


def _first_line(exc: BaseException) -> str:
    """The root of a transport error in a few words ("Connection refused"), else its line."""
    text = str(exc)
    for marker in ("Connection refused", "Connection reset", "Read timed out",
                   "timed out", "Name or service not known", "Remote end closed"):
        if marker in text:
            return marker
    return (text.splitlines() or [type(exc).__name__])[0][:160]


class MlflowOutage(RuntimeError):
    """The tracking server stayed unreachable for longer than the bound.  `open_runs`: the
    runs the writer knows are still RUNNING in MLflow (trial id -> run id)."""

    def __init__(self, uri: str, seconds: float, error: str, limit: float,
                 open_runs: Optional[dict[str, str]] = None):
        self.uri, self.seconds, self.error, self.limit = uri, seconds, error, limit
        self.open_runs = dict(open_runs or {})
        self.writer = None  # the search's writer, whose records may still wait
        how_long = f" for {seconds:.0f} s" if seconds > 0 else ""
        super().__init__(f"MLflow tracking server {uri} unreachable{how_long} ({error}); a "
                         f"search waits at most {limit:.0f} s (${OUTAGE_ENV})")


def outage_in(exc: BaseException, uri: str) -> Optional[MlflowOutage]:
    """The `MlflowOutage` behind `exc` (Tune may wrap it), or one made for a transient
    failure that escaped a retry (an outage of unknown length); None for other errors."""
    seen: set[int] = set()
    cursor: Optional[BaseException] = exc
    while cursor is not None and id(cursor) not in seen:
        seen.add(id(cursor))
        if isinstance(cursor, MlflowOutage):
            return cursor
        cursor = cursor.__cause__ or cursor.__context__
    if isinstance(exc, Exception) and is_transient(exc):
        return MlflowOutage(uri, 0, _first_line(exc), outage_limit())
    return None


class Outage:
    """When requests to one server began failing, the last error, when to try next."""

    def __init__(self, uri: str, limit: Optional[float] = None, *,
                 clock: Callable[[], float] = time.monotonic,
                 sleep: Callable[[float], None] = time.sleep, quiet: bool = False):
        self.uri = uri
        self.limit = outage_limit() if limit is None else float(limit)
        self.clock, self.sleep, self.quiet = clock, sleep, quiet
        self.since: Optional[float] = None
        self.error = ""
        self.attempts = 0
        self.next_try = 0.0

    def failed(self, exc: BaseException) -> None:
        now = self.clock()
        if self.since is None:
            self.since = now
            self._say(f"MLflow at {self.uri} not answering ({_first_line(exc)}); the search "
                      f"goes on, keeps its records and retries for up to {self.limit:.0f} s")
        self.error = _first_line(exc)
        self.attempts += 1
        self.next_try = now + backoff(self.attempts)

    def recovered(self, written: int = 0) -> None:
        if self.since is not None:
            buffered = f"; {written} held record(s) written in order" if written else ""
            self._say(f"MLflow at {self.uri} answering again after {self.elapsed():.0f} s"
                      + buffered)
        self.since, self.attempts, self.next_try = None, 0, 0.0

    def elapsed(self) -> float:
        return 0.0 if self.since is None else self.clock() - self.since

    @property
    def expired(self) -> bool:
        return self.since is not None and self.elapsed() >= self.limit

    @property
    def due(self) -> bool:
        return self.clock() >= self.next_try

    def give_up(self, open_runs: Optional[dict[str, str]] = None) -> MlflowOutage:
        return MlflowOutage(self.uri, self.elapsed(), self.error or "no answer", self.limit,
                            open_runs)

    def wait(self) -> None:
        """Sleep until the next try, never past the bound."""
        assert self.since is not None
        self.sleep(max(0.0, min(self.next_try, self.since + self.limit) - self.clock()))

    def call(self, fn: Callable[..., Any], *args, **kwargs) -> Any:
        """`fn(*args, **kwargs)`, tried again on transient failures until the bound."""
        while True:
            if self.since is not None and not self.due:
                self.wait()
            try:
                out = fn(*args, **kwargs)
            except Exception as exc:
                if not is_transient(exc):
                    raise
                self.failed(exc)
                if self.expired:
                    raise self.give_up() from None
                continue
            self.recovered()
            return out

    def _say(self, line: str) -> None:
        if not self.quiet:
            print(f"warning: {line}", file=sys.stderr, flush=True)


class RetryingClient:
    """An `MlflowClient` whose every call rides out an outage (blocking, bounded).  Other
    attributes (`tracking_uri`) pass through; `.raw` is the client itself."""

    def __init__(self, client, outage: Optional[Outage] = None):
        self.raw = client
        self.outage = outage or Outage(client.tracking_uri)

    def __getattr__(self, name: str):
        attr = getattr(self.raw, name)
        if not callable(attr):
            return attr

        def retried(*args, **kwargs):
            return self.outage.call(attr, *args, **kwargs)
        retried.__name__ = name
        return retried

    def within(self, seconds: float) -> "RetryingClient":
        """The same client with a shorter bound (clean-up on a failure: do not wait long)."""
        return RetryingClient(self.raw, Outage(self.outage.uri, seconds, quiet=True))


class WriteQueue:
    """Writes applied in order; while the server is away they wait here and are tried again
    at the next `flush` after the back-off.  `execute(op, retrying)` applies one op; ops are
    plain tuples (picklable: the writer saves the pending ones with Tune's experiment state);
    `pending` is used as given (not copied), so two queues may share it."""

    def __init__(self, execute: Callable[[tuple, bool], None], outage: Outage,
                 pending: Optional[list] = None):
        self.execute = execute
        self.outage = outage
        self.pending: list[tuple] = pending if pending is not None else []
        self._retrying = False  # the head op failed once: it may have been half applied

    def put(self, op: tuple) -> None:
        self.pending.append(op)
        self.flush()

    def flush(self) -> bool:
        """Apply what waits, in order, unless the server is in back-off; True when empty.
        A non-transient error is raised (the op dropped); a transient one leaves the rest."""
        if not self.pending or not self.outage.due:
            return not self.pending
        written = 0
        while self.pending:
            try:
                self.execute(self.pending[0], self._retrying)
            except Exception as exc:
                if not is_transient(exc):
                    self.pending.pop(0)
                    self._retrying = False
                    raise
                self._retrying = True
                self.outage.failed(exc)
                return False
            self.pending.pop(0)
            self._retrying = False
            written += 1
        if self.outage.since is not None:
            self.outage.recovered(written)
        return True

    def drain(self) -> None:
        """Block until everything is written, or raise `MlflowOutage` at the bound."""
        while not self.flush():
            if self.outage.expired:
                raise self.outage.give_up()
            self.outage.wait()

    def check(self) -> None:
        """`MlflowOutage` once records have waited longer than the bound."""
        if self.pending and self.outage.expired:
            raise self.outage.give_up()
