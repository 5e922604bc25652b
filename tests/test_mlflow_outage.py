"""A tracking server that goes away mid-search (issue 25 item 2): short outages are ridden
out (records held in order, written when it answers again, nothing lost), a long one ends
the search with one line that says what, for how long and how to continue.

The fast tests drive the retry/queue logic and the Tune callback with a fake clock and a
client that fails like MLflow's REST client does; the slow one restarts a real
`mlflow server` under a real smoke search."""
from __future__ import annotations

import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from types import SimpleNamespace

import pytest
from mlflow.exceptions import MlflowException, RestException
from mlflow.tracking import MlflowClient

from orchestrator.store.layout import LAST_EPOCH, metric_key, trial_runs
from orchestrator.store.retry import (OUTAGE_ENV, MlflowOutage, Outage, RetryingClient,
                                      WriteQueue, is_transient, outage_in, outage_limit)
from orchestrator.store.writer import MlflowSearchCallback, start_parent_run
from test_search_survives import _kill_session

URI = "http://127.0.0.1:5999"


def refused(endpoint: str = "runs/log-batch") -> MlflowException:
    """What MLflow's REST client raises when nothing listens (its retries off)."""
    return MlflowException(
        f"API request to {URI}/api/2.0/mlflow/{endpoint} failed with exception "
        "HTTPConnectionPool(host='127.0.0.1', port=5999): Max retries exceeded with url: "
        f"/api/2.0/mlflow/{endpoint} (Caused by NewConnectionError(': Failed to establish a "
        "new connection: [Errno 111] Connection refused'))")


class FakeTime:
    def __init__(self):
        self.now = 1000.0
        self.slept: list[float] = []

    def clock(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)
        self.now += seconds


def outage(limit: float = 120, clock: FakeTime | None = None) -> Outage:
    clock = clock or FakeTime()
    return Outage(URI, limit, clock=clock.clock, sleep=clock.sleep, quiet=True)


def test_transport_failures_are_transient_and_answers_are_not():
    assert is_transient(refused())
    assert is_transient(MlflowException(f"API request to {URI}/x failed with timeout exception "
                                        "Read timed out."))
    assert is_transient(RestException({"error_code": "TEMPORARILY_UNAVAILABLE", "message": "busy"}))
    assert is_transient(MlflowException("API request to endpoint /api/2.0/mlflow/runs/get "
                                        "failed with error code 502 != 200. Response body: ''"))
    assert is_transient(ConnectionRefusedError(111, "Connection refused"))
    assert not is_transient(RestException({"error_code": "INVALID_PARAMETER_VALUE",
                                           "message": "Changing param values is not allowed"}))
    assert not is_transient(RestException({"error_code": "RESOURCE_DOES_NOT_EXIST", "message": "no"}))
    assert not is_transient(ValueError("bad"))


def test_the_bound_comes_from_the_environment(monkeypatch):
    monkeypatch.delenv(OUTAGE_ENV, raising=False)
    assert outage_limit() == 120
    monkeypatch.setenv(OUTAGE_ENV, "30")
    assert outage_limit() == 30
    monkeypatch.setenv(OUTAGE_ENV, "soon")
    with pytest.raises(ValueError, match=OUTAGE_ENV):
        outage_limit()


def test_writes_wait_in_order_through_an_outage_and_nothing_is_lost():
    clock = FakeTime()
    written, down = [], {"on": False}

    def execute(op, retrying):
        if down["on"]:
            raise refused()
        written.append(op)

    queue = WriteQueue(execute, outage(120, clock))
    queue.put(("batch", "r1", 0))
    down["on"] = True
    for epoch in (1, 2, 3):  # the trial goes on while the server is away
        queue.put(("batch", "r1", epoch))
        clock.now += 5
        queue.flush()
    assert written == [("batch", "r1", 0)] and len(queue.pending) == 3
    queue.check()  # 15 s: well inside the bound, no error
    down["on"] = False
    clock.now += 20
    queue.put(("end", "r1", "FINISHED"))
    assert written == [("batch", "r1", e) for e in range(4)] + [("end", "r1", "FINISHED")]
    assert queue.pending == [] and queue.outage.since is None


def test_back_off_spaces_the_tries_and_a_retry_is_flagged():
    clock = FakeTime()
    tries = []

    def execute(op, retrying):
        tries.append((clock.now, retrying))
        raise refused()

    queue = WriteQueue(execute, outage(120, clock))
    queue.put(("tag", "r1", "k", "v"))
    for _ in range(32):  # Tune's loop asks again and again
        clock.now += 0.125
        queue.flush()
    assert [t - 1000 for t, _ in tries] == [0.0, 0.5, 1.5, 3.5]
    assert [r for _, r in tries] == [False, True, True, True]


def test_an_outage_past_the_bound_is_one_clear_error():
    clock = FakeTime()

    def execute(op, retrying):
        raise refused()

    queue = WriteQueue(execute, outage(120, clock))
    queue.put(("batch", "r1", 0))
    clock.now += 119
    queue.check()
    clock.now += 2
    with pytest.raises(MlflowOutage) as caught:
        queue.check()
    message = str(caught.value)
    assert "\n" not in message and URI in message and "121 s" in message
    assert "Connection refused" in message and OUTAGE_ENV in message and "120 s" in message
    assert queue.pending == [("batch", "r1", 0)]  # kept: --resume writes it
    with pytest.raises(MlflowOutage):
        queue.drain()


def test_an_error_the_server_answers_is_raised_at_once():
    def execute(op, retrying):
        raise RestException({"error_code": "INVALID_PARAMETER_VALUE", "message": "nope"})

    queue = WriteQueue(execute, outage())
    with pytest.raises(RestException):
        queue.put(("params", "r1", {"a": 1}))
    assert queue.pending == []


def test_a_blocking_call_waits_with_back_off_then_gives_up():
    clock = FakeTime()
    answers = [refused(), refused(), "run"]

    class Client:
        tracking_uri = URI

        def get_run(self, run_id):
            answer = answers.pop(0)
            if isinstance(answer, Exception):
                raise answer
            return answer

    client = RetryingClient(Client(), outage(120, clock))
    assert client.get_run("r1") == "run" and clock.slept == [0.5, 1.0]
    assert client.tracking_uri == URI
    answers[:] = [refused()] * 100
    with pytest.raises(MlflowOutage, match="unreachable for 120 s"):
        client.get_run("r1")
    assert clock.now - 1001.5 == pytest.approx(120)


def test_outage_in_finds_it_behind_tune_and_names_an_escaped_transport_error():
    gone = MlflowOutage(URI, 130, "Connection refused", 120)
    try:
        try:
            raise gone
        except MlflowOutage as exc:
            raise RuntimeError("Tune wrapped it") from exc
    except RuntimeError as wrapped:
        assert outage_in(wrapped, URI) is gone
    escaped = outage_in(refused(), URI)
    assert escaped is not None and "Connection refused" in str(escaped)
    assert outage_in(ValueError("bad"), URI) is None


class FlakyClient:
    """A real (sqlite) MlflowClient that, while `down`, fails like a stopped server."""

    def __init__(self, real: MlflowClient):
        self.real, self.down = real, False
        self.tracking_uri = real.tracking_uri

    def __getattr__(self, name):
        attr = getattr(self.real, name)

        def call(*args, **kwargs):
            if self.down:
                raise refused(name)
            return attr(*args, **kwargs)
        return call


def _result(epoch: int) -> dict:
    return {"epoch": epoch, "fid": 3.0 - epoch / 10, "g_loss": 1.0 + epoch, "fid_dims": 768,
            "training_iteration": epoch + 1}


def _callback(uri: str, parent: str, flaky: FlakyClient, clock: FakeTime) -> MlflowSearchCallback:
    callback = MlflowSearchCallback(uri, "s", parent, epochs=6)
    callback._client = RetryingClient(flaky, Outage(uri, 120, clock=clock.clock,
                                                    sleep=clock.sleep, quiet=True))
    return callback


def test_the_callback_holds_a_trials_epochs_through_an_outage(tmp_path):
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    real = MlflowClient(uri)
    parent = start_parent_run(real, "s", {}, {})
    flaky, clock = FlakyClient(real), FakeTime()
    callback = _callback(uri, parent, flaky, clock)
    trial = SimpleNamespace(trial_id="t1", config={"lr_g": 2e-4}, last_result={}, status="RUNNING")
    callback.on_trial_start(0, [trial], trial)
    callback.on_trial_result(0, [trial], trial, _result(0))
    flaky.down = True
    for epoch in (1, 2, 3):  # Tune's loop is never held up: each call returns at once
        callback.on_trial_result(epoch, [trial], trial, _result(epoch))
        clock.now += 6
        callback.on_step_end(epoch, [trial])
    run_id = callback.run_for(trial)
    assert [m.step for m in real.get_metric_history(run_id, metric_key("g_loss"))] == [0]
    assert callback.get_state()["pending"]  # saved with Tune's state at every step
    flaky.down = False
    clock.now += 10
    callback.on_step_end(4, [trial])
    callback.on_trial_result(4, [trial], trial, _result(4))
    trial.last_result, trial.status = _result(4), "TERMINATED"
    callback.on_trial_complete(5, [trial], trial)
    callback.on_experiment_end([trial])
    history = real.get_metric_history(run_id, metric_key("g_loss"))
    assert [(m.step, m.value) for m in history] == [(e, 1.0 + e) for e in range(5)]
    assert [m.step for m in sorted(history, key=lambda m: m.timestamp)] == list(range(5))
    run = real.get_run(run_id)
    assert run.info.status == "FINISHED" and run.data.tags[LAST_EPOCH] == "4"
    assert run.data.params["fid_protocol.dims"] == "768"
    assert callback.get_state() == {"pending": []}


def _down_after_epoch_0(tmp_path):
    """A search run, a callback over a client that fails on demand, trial t1's epoch 0
    written, then the server gone and epoch 1 held."""
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    real = MlflowClient(uri)
    parent = start_parent_run(real, "s", {}, {})
    flaky, clock = FlakyClient(real), FakeTime()
    callback = _callback(uri, parent, flaky, clock)
    trial = SimpleNamespace(trial_id="t1", config={}, last_result={}, status="RUNNING")
    callback.on_trial_result(0, [trial], trial, _result(0))
    run_id = callback.run_for(trial)
    flaky.down = True
    callback.on_trial_result(1, [trial], trial, _result(1))
    return uri, real, parent, flaky, clock, callback, trial, run_id


def test_a_long_outage_gives_up_naming_open_runs_and_resume_writes_what_waited(tmp_path):
    uri, real, parent, flaky, clock, callback, trial, run_id = _down_after_epoch_0(tmp_path)
    callback.on_trial_result(2, [trial], trial, _result(2))
    clock.now += 119
    callback.on_step_end(3, [trial])
    clock.now += 2
    with pytest.raises(MlflowOutage) as caught:
        callback.on_step_end(4, [trial])
    assert caught.value.open_runs == {"t1": run_id} and caught.value.writer is callback
    saved = callback.get_state()  # what Tune saved just before the callback gave up
    callback.on_experiment_end([trial])  # Tune's clean-up: one try, no second error

    # --resume: Tune restores a fresh callback from tuner.pkl and gives it the saved state;
    # the trial restarts from its checkpoint at epoch 1, which must not be logged twice.
    again = MlflowSearchCallback(uri, "s", parent, epochs=6)
    again.set_state(saved)
    again.on_step_begin(0, [])
    again.on_trial_result(0, [trial], trial, _result(1))
    again.on_trial_result(1, [trial], trial, _result(3))
    steps = [m.step for m in real.get_metric_history(run_id, metric_key("g_loss"))]
    assert sorted(steps) == [0, 1, 2, 3]
    assert len(trial_runs(real, real.get_experiment_by_name("s").experiment_id, parent)) == 1


def test_a_search_that_gave_up_closes_its_runs_or_names_them(tmp_path, monkeypatch):
    """The end of a search whose server stayed away: if it is back, the held records are
    written, the trial runs end KILLED and the search run FAILED, and --resume reopens them;
    if not, the one line names the runs left RUNNING.  Either way: one line, the resume."""
    from orchestrator import pipeline
    from orchestrator.store import writer

    uri, real, parent, flaky, clock, callback, trial, run_id = _down_after_epoch_0(tmp_path)
    clock.now += 121
    with pytest.raises(MlflowOutage) as caught:
        callback.on_step_end(2, [trial])
    cfg = SimpleNamespace(name="s", experiment="acgan", storage=str(tmp_path), mlflow_uri=uri)
    monkeypatch.setattr(pipeline.lock, "invocation", lambda: ["cxr-search", "acgan"])
    monkeypatch.setattr(pipeline, "CLEANUP_WAIT_S", 0.5)

    gone = FlakyClient(real)
    gone.down = True  # still away: nothing can be recorded, the runs are named
    line = pipeline._end_outage(cfg, RetryingClient(gone), parent, caught.value)
    assert "\n" not in line and "unreachable for 121 s" in line
    assert f"{parent} (search)" in line and f"{run_id} (trial t1)" in line
    assert "RUNNING" in line and "cxr-search acgan --name s --resume" in line
    assert real.get_run(run_id).info.status == "RUNNING"

    flaky.down = False  # back: held records written, runs closed, --resume reopens them
    line = pipeline._end_outage(cfg, RetryingClient(real), parent, caught.value)
    assert "\n" not in line and "FAILED" in line and "1 running trial run(s) KILLED" in line
    assert sorted(m.step for m in real.get_metric_history(run_id, metric_key("g_loss"))) == [0, 1]
    run, search = real.get_run(run_id), real.get_run(parent)
    assert run.info.status == "KILLED" and search.info.status == "FAILED"
    assert "unreachable" in search.data.tags[writer.STOP_REASON]
    writer.reopen_interrupted(real, "s", parent)
    assert real.get_run(run_id).info.status == real.get_run(parent).info.status == "RUNNING"
    assert "stop_reason" not in real.get_run(run_id).data.tags


# --- a real tracking server restarted under a real search (slow) ---------------------------

def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _answers(port: int) -> bool:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2):
            return True
    except OSError:
        return False


def _start_server(root: Path, port: int, log: Path) -> subprocess.Popen:
    """`mlflow server` on a sqlite store in `root`, in its own session (stopped by its pid)."""
    server = subprocess.Popen(
        [sys.executable, "-m", "mlflow", "server", "--backend-store-uri",
         f"sqlite:///{root}/mlflow.db", "--artifacts-destination", str(root / "artifacts"),
         "--host", "127.0.0.1", "--port", str(port), "--workers", "1"],
        stdout=log.open("a"), stderr=subprocess.STDOUT, start_new_session=True)
    deadline = time.time() + 90
    while not _answers(port):
        assert server.poll() is None and time.time() < deadline, log.read_text()[-3000:]
        time.sleep(0.3)
    return server


def _stop_session(proc: subprocess.Popen) -> None:
    """SIGKILL every process of the session of a process this test started (a search's Ray
    daemons, the server's workers), by pid."""
    if proc.poll() is None:
        _kill_session(proc.pid)
    proc.wait(timeout=30)


def _reported(trial_dir: Path) -> dict[tuple[str, int], float]:
    """(metric, epoch) -> value of what one trial reported to Tune (its result.json)."""
    import json
    import math

    out = {}
    for line in (trial_dir / "result.json").read_text().splitlines():
        result = json.loads(line)
        for name in ("g_loss", "d_loss", "constant_frac"):
            if isinstance(result.get(name), float) and math.isfinite(result[name]):
                out[(name, int(result["epoch"]))] = result[name]
    return out


def _lines(results: Path) -> int:
    """The most epochs any trial under `results` has reported to Tune so far."""
    files = list(results.glob("*/result.json")) if results.is_dir() else []
    return max((len(f.read_text().splitlines()) for f in files), default=0)


@pytest.mark.slow
def test_a_search_rides_out_a_tracking_server_restart(tmp_path, covid3_dir):
    """The server is SIGKILLed as soon as the trial has logged epoch 0 and started again on the
    same port and store once Tune has received another epoch (at least 8 s later): the search
    ends rc 0, each epoch Tune received is in MLflow once with its values (those reported
    during the outage written afterwards), its grids too, no run RUNNING.  Before, the first failed request ended the search (rc 1,
    a chain of tracebacks, runs left RUNNING)."""
    from test_search_e2e import env_for, search_cmd

    name, port = "outage", _free_port()
    uri = f"http://127.0.0.1:{port}"
    server_root, log = tmp_path / "server", tmp_path / "server.log"
    server_root.mkdir()
    started = [_start_server(server_root, port, log)]
    out, err = (tmp_path / "search.out").open("w"), (tmp_path / "search.err").open("w")
    search = subprocess.Popen(
        # the smallest search: one trial of 4 epochs, the visual checks at epochs 1 and 3 (no
        # Inception network: what is measured is not the subject)
        search_cmd(tmp_path, name, covid3_dir, "--num-samples", "1", "--max-epochs", "4",
                   "--scheduler", "none", "--eval-metrics", "visual", "--objective", "g_loss",
                   "--eval-every", "2",
                   "--mlflow-uri", uri),
        cwd=tmp_path, env=env_for(tmp_path), stdout=out, stderr=err, start_new_session=True)
    started.append(search)
    client = MlflowClient(uri)
    try:
        deadline = time.time() + 300
        # Epoch 0 of the trial is in MLflow: its set-up (data, the reference classifier; up to
        # a minute on a slow 2-core machine) is over and epoch 1 follows
        # within seconds, so the outage below falls on reported epochs, not on the set-up.
        while True:
            assert search.poll() is None and time.time() < deadline, \
                (tmp_path / "search.err").read_text()[-3000:]
            experiment = client.get_experiment_by_name(name)
            trials = experiment and client.search_runs([experiment.experiment_id],
                                                       "tags.`cxr.role` = 'trial'")
            if trials and metric_key("g_loss") in trials[0].data.metrics:
                break
            time.sleep(0.5)
        killed = time.time()
        _stop_session(started[0])
        # The server stays away until Tune has received another epoch (the trial's result.json
        # grows past epoch 0), at least 8 s: on a slow machine an evaluated epoch takes longer
        # than the outage would otherwise last.
        results = tmp_path / "ray_results" / name
        while time.time() < killed + 8 or (
                _lines(results) < 2 and time.time() < killed + 120 and search.poll() is None):
            time.sleep(0.5)
        started.append(_start_server(server_root, port, log))
        back = time.time()
        assert search.wait(timeout=400) == 0, (tmp_path / "search.err").read_text()[-4000:]

        stderr = (tmp_path / "search.err").read_text()
        assert "not answering" in stderr and "answering again" in stderr, stderr[-3000:]
        assert "Traceback" not in stderr, stderr[-3000:]
        experiment = client.get_experiment_by_name(name)
        runs = client.search_runs([experiment.experiment_id])
        assert not [r.info.run_id for r in runs if r.info.status == "RUNNING"]
        (parent,) = [r for r in runs if r.data.tags.get("cxr.role") == "search"]
        assert parent.info.status == "FINISHED"
        trial_dirs = [p for p in (tmp_path / "ray_results" / name).iterdir()
                      if (p / "result.json").is_file()]
        children = {r.data.tags["cxr.trial_id"]: r for r in runs
                    if r.data.tags.get("cxr.role") == "trial"}
        assert len(trial_dirs) == len(children) == 1
        held = 0
        for trial_dir in trial_dirs:
            run = next(r for t, r in children.items() if t in trial_dir.name)
            reported = _reported(trial_dir)
            logged = {}
            for name in ("g_loss", "d_loss", "constant_frac"):
                history = client.get_metric_history(run.info.run_id, metric_key(name))
                assert len({m.step for m in history}) == len(history), f"{name} logged twice"
                logged.update({(name, m.step): m.value for m in history})
                held += sum(killed * 1000 <= m.timestamp <= back * 1000 for m in history)
            assert logged == reported and {e for _, e in reported} == set(range(4))
            grids = {a.path for a in client.list_artifacts(run.info.run_id, "grids")}
            assert len(grids) == 4, grids
        assert held >= 1, "no epoch was reported while the server was away"
        assert back - killed >= 12
    finally:
        for proc in reversed(started):
            _stop_session(proc)
