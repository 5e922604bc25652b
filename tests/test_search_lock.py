"""One driver per search, and Ctrl-C (issue 25): the lock beside the search's Tune folder
(refused starts, stale locks, racing starts, release), what an interrupt leaves in MLflow,
and one end-to-end test with two real drivers."""
from __future__ import annotations

import json
import multiprocessing
import os
import shlex
import signal
import socket
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

from orchestrator import pipeline
from orchestrator.cli import parse_then_run, search
from orchestrator.config import SearchConfig
from orchestrator.run import cluster, lock, preflight
from orchestrator.run.lock import SearchRunning
from orchestrator.run.tuner import InterruptWatch, watching_interrupts

from test_search_e2e import env_for, mlflow_runs, search_cmd
from test_search_survives import _kill_session


def _write_lock(path: Path, **fields) -> dict:
    holder = {"pid": os.getpid(), "host": socket.gethostname(), "started": time.time() - 600,
              "folder": str(path.with_suffix("")), "command": "python -m orchestrator.search acgan",
              "token": "0123456789abcdef", **fields}
    path.write_text(json.dumps(holder))
    return holder


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def _take(path: Path, **kw):
    lines = []
    held = lock.acquire(path, "s1", str(path.with_suffix("")), say=lines.append, **kw)
    return held, lines


def test_a_second_start_is_refused_naming_the_holder(tmp_path):
    path = tmp_path / "s1.lock"
    first, _ = _take(path)
    try:
        for resume, head in ((False, "search 's1' is already running"),
                             (True, "--resume: search 's1' is still running")):
            with pytest.raises(SearchRunning) as refused:
                _take(path, resume=resume)
            message = str(refused.value)
            assert message.startswith(head) and "\n" not in message
            assert f"pid {os.getpid()} on {socket.gethostname()} since " in message
            assert f"folder {tmp_path / 's1'}" in message and str(path) in message
        recorded = json.loads(path.read_text())
        assert recorded["pid"] == os.getpid() and recorded["command"]
    finally:
        first.release()
    assert not path.exists()


def test_release_removes_only_its_own_lock_and_runs_on_every_exit(tmp_path):
    path = tmp_path / "s1.lock"
    with pytest.raises(KeyboardInterrupt):
        with _take(path)[0]:
            assert path.exists()
            raise KeyboardInterrupt
    assert not path.exists()
    held, _ = _take(path)
    _write_lock(path, token="someone-else")  # taken over meanwhile (we were judged stale)
    held.release()
    assert json.loads(path.read_text())["token"] == "someone-else"


def test_a_dead_holder_on_this_host_is_taken_over_in_one_line(tmp_path):
    path = tmp_path / "s1.lock"
    pid = _dead_pid()
    _write_lock(path, pid=pid)
    held, lines = _take(path)
    assert len(lines) == 1 and f"pid {pid}" in lines[0] and "gone" in lines[0]
    assert "taking it over" in lines[0]
    assert json.loads(path.read_text())["token"] == held.holder.token
    held.release()


def test_a_killed_unreaped_driver_and_a_reused_pid_are_stale(tmp_path):
    path = tmp_path / "s1.lock"
    zombie = subprocess.Popen([sys.executable, "-c", "pass"])  # exits; not waited for yet
    deadline = time.time() + 30
    while lock._proc_field(zombie.pid, 0) != "Z" and time.time() < deadline:
        time.sleep(0.05)
    _write_lock(path, pid=zombie.pid)
    held, lines = _take(path)
    assert len(lines) == 1 and f"pid {zombie.pid}" in lines[0]
    held.release()
    zombie.wait()
    _write_lock(path, pid=os.getpid(), proc_start="1")  # our pid, another process's start
    held, lines = _take(path)
    assert len(lines) == 1 and "another process" in lines[0]
    held.release()


def test_another_host_is_stale_only_after_its_heartbeat_stops(tmp_path):
    path = tmp_path / "s1.lock"
    _write_lock(path, host="gpu-node-7", pid=1, started=time.time() - 30 * 86400)
    with pytest.raises(SearchRunning, match="pid 1 on gpu-node-7"):
        _take(path)  # a month-long search whose driver still beats
    old = time.time() - lock.FOREIGN_STALE_S - 60
    os.utime(path, (old, old))
    held, lines = _take(path)
    assert len(lines) == 1 and "gpu-node-7" in lines[0] and "no heartbeat" in lines[0]
    held.release()


def test_the_holder_refreshes_its_heartbeat(tmp_path, monkeypatch):
    monkeypatch.setattr(lock, "HEARTBEAT_S", 0.05)
    path = tmp_path / "s1.lock"
    with _take(path)[0]:
        os.utime(path, (0, 0))
        time.sleep(0.5)
        assert time.time() - path.stat().st_mtime < 5


def test_an_unreadable_lock_is_refused_while_young_then_taken_over(tmp_path):
    path = tmp_path / "s1.lock"
    path.write_bytes(b"")  # a start between its create and its write
    with pytest.raises(SearchRunning, match="taking its lock right now"):
        _take(path)
    old = time.time() - lock.WRITE_GRACE_S - 5
    os.utime(path, (old, old))
    held, lines = _take(path)
    assert len(lines) == 1 and "unreadable" in lines[0]
    held.release()


def _race(path: str, start, done, results) -> None:
    start.wait()
    try:
        held = lock.acquire(Path(path), "s1", "folder", say=lambda line: None)
    except SearchRunning:
        results.put("refused")
        return
    results.put("won")
    done.wait(30)  # hold it until every racer has tried
    held.release()


@pytest.mark.parametrize("stale_first", [False, True], ids=["free", "stale"])
def test_racing_starts_one_wins(tmp_path, stale_first):
    """Eight starts at once, on a free lock and on a stale one (all race to take it over)."""
    path = tmp_path / "s1.lock"
    if stale_first:
        _write_lock(path, pid=_dead_pid())
    ctx = multiprocessing.get_context("fork")
    start, done, results = ctx.Barrier(8), ctx.Event(), ctx.Queue()
    procs = [ctx.Process(target=_race, args=(str(path), start, done, results)) for _ in range(8)]
    for p in procs:
        p.start()
    try:
        outcomes = sorted(results.get(timeout=60) for _ in procs)
    finally:
        done.set()
        for p in procs:
            p.join(30)
    assert outcomes == ["refused"] * 7 + ["won"]
    assert not path.exists() and not list(tmp_path.glob(".s1.lock.*"))


def test_a_held_search_is_refused_before_data_or_ray(tmp_path, capsys, monkeypatch):
    def started(*a, **k):
        raise AssertionError("the second start went on to the data / Ray")
    monkeypatch.setattr(preflight, "preflight_data", started)
    monkeypatch.setattr(cluster, "init_ray", started)
    storage = tmp_path / "ray_results"
    storage.mkdir()
    argv = ["acgan", "--smoke", "--name", "s1", "--storage", str(storage),
            "--mlflow-uri", f"sqlite:///{tmp_path}/mlruns/mlflow.db"]
    with lock.acquire(lock.lock_path(str(storage), "s1"), "s1", str(storage / "s1")):
        for extra in ([], ["--resume"]):
            assert search.main(argv + extra) == 2
            err = capsys.readouterr().err
            errors = [line for line in err.splitlines() if line.startswith("error:")]
            assert len(errors) == 1 and f"pid {os.getpid()}" in errors[0], err
            assert f"folder {storage / 's1'}" in errors[0]
    assert not (storage / "s1.lock").exists()


def test_ctrl_c_ends_a_command_with_130_and_its_message(capsys):
    def run(cfg):
        raise KeyboardInterrupt("search 'x' interrupted by the user. Resume it with: ...")
    try:
        rc = parse_then_run(lambda: None, run)
    except KeyboardInterrupt:
        pytest.fail("the Ctrl-C escaped the command (a traceback, exit code 1)")
    assert rc == 130
    assert capsys.readouterr().err.startswith("interrupted: search 'x' interrupted by the user")


def test_the_resume_command_is_the_start_command_with_resume(monkeypatch):
    cfg = SearchConfig(experiment="acgan", preset="s0", name="acgan-s0-20261205-101010",
                       storage="runs", mlflow_uri="sqlite:///m.db")
    monkeypatch.setattr(sys, "argv", ["/x/orchestrator/search.py", "acgan", "--smoke",
                                      "--data", "my data", "--name=old", "--resume"])
    assert pipeline.resume_command(cfg) == ("python -m orchestrator.search acgan --smoke --data "
                                            "'my data' --name acgan-s0-20261205-101010 --resume")
    monkeypatch.setattr(sys, "argv", ["/venv/bin/cxr-search", "acgan", "--name", "old"])
    assert pipeline.resume_command(cfg) == ("cxr-search acgan --name acgan-s0-20261205-101010 "
                                            "--resume")
    monkeypatch.setattr(sys, "argv", ["pytest"])  # not started from the command
    assert pipeline.resume_command(cfg) == (
        "python -m orchestrator.search acgan --storage runs --mlflow-uri sqlite:///m.db "
        "--name acgan-s0-20261205-101010 --resume")


def test_a_sigint_that_tune_catches_is_noticed_and_the_handler_put_back():
    """Tune's handler (here a stand-in) is installed when fit() starts; InterruptWatch wraps it
    in `setup`; afterwards the handler from before fit() is back.  (That Tune 2.60 does call
    `setup` after installing its handler is checked by the end-to-end test below.)"""
    before = signal.getsignal(signal.SIGINT)
    tune_saw = []
    with watching_interrupts() as interrupted:
        signal.signal(signal.SIGINT, lambda *a: tune_saw.append(a))  # "Tune's" handler
        InterruptWatch().setup()
        assert not interrupted.is_set()
        os.kill(os.getpid(), signal.SIGINT)
        time.sleep(0.1)
    assert tune_saw and interrupted.is_set()
    assert signal.getsignal(signal.SIGINT) is before
    with watching_interrupts() as interrupted:
        signal.signal(signal.SIGINT, lambda *a: None)  # a run without a Ctrl-C
        InterruptWatch().setup()
    assert not interrupted.is_set() and signal.getsignal(signal.SIGINT) is before


def test_an_interrupt_is_recorded_and_resume_reopens_it(tmp_path):
    from mlflow.tracking import MlflowClient

    from orchestrator.store import writer
    from orchestrator.store.layout import experiment_id

    client = MlflowClient(f"sqlite:///{tmp_path}/mlflow.db")
    parent = writer.start_parent_run(client, "s1", {}, {})
    runs = {}
    for trial, status in (("t1", "FINISHED"), ("t2", "RUNNING")):
        run = client.create_run(experiment_id(client, "s1"), tags={
            "cxr.role": "trial", "cxr.trial_id": trial, "mlflow.parentRunId": parent})
        if status == "FINISHED":
            client.set_terminated(run.info.run_id, "FINISHED")
        runs[trial] = run.info.run_id
    assert writer.end_interrupted(client, "s1", parent, "cxr-search acgan --resume") == ["t2"]
    search_run = client.get_run(parent)
    assert search_run.info.status == "KILLED"
    assert search_run.data.tags["cxr.stop_reason"] == "interrupted by the user"
    assert search_run.data.tags["cxr.resume_command"] == "cxr-search acgan --resume"
    killed = client.get_run(runs["t2"])
    assert killed.info.status == "KILLED"
    assert "interrupted by the user" in killed.data.tags["stop_reason"]
    assert client.get_run(runs["t1"]).info.status == "FINISHED"
    writer.reopen_interrupted(client, "s1", parent)
    assert client.get_run(parent).info.status == "RUNNING"
    assert "cxr.stop_reason" not in client.get_run(parent).data.tags
    reopened = client.get_run(runs["t2"])
    assert reopened.info.status == "RUNNING" and "stop_reason" not in reopened.data.tags
    assert client.get_run(runs["t1"]).info.status == "FINISHED"


def _start(cmd: list[str], tmp_path: Path) -> subprocess.Popen:
    return subprocess.Popen(cmd, cwd=tmp_path, env=env_for(tmp_path), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, start_new_session=True)


def _stop_session(proc: subprocess.Popen) -> None:
    """A driver still running when the test fails: Ctrl-C, then SIGKILL its session, by pid."""
    if proc.poll() is not None:
        return
    os.killpg(proc.pid, signal.SIGINT)
    try:
        proc.communicate(timeout=60)
        return
    except subprocess.TimeoutExpired:
        pass
    _kill_session(proc.pid)
    proc.communicate()


@pytest.mark.slow
def test_two_drivers_one_search_then_ctrl_c(tmp_path, covid3_dir):
    """Driver 1 runs; driver 2 with the same --name/--storage, and with --resume, is refused
    at once naming driver 1; Ctrl-C on driver 1's process group ends it with exit code 130,
    the search run KILLED "interrupted by the user", no run RUNNING, the lock gone and the
    product's own resume command printed."""
    name, started = "e2e-lock", time.monotonic()
    cmd = search_cmd(tmp_path, name, covid3_dir, "--num-samples", "2", "--max-epochs", "20",
                     "--scheduler", "none", "--max-concurrent", "1")
    uri = f"sqlite:///{tmp_path}/mlruns/mlflow.db"
    lock_file = tmp_path / "ray_results" / f"{name}.lock"
    drivers = [_start(cmd, tmp_path)]
    first = drivers[0]
    try:
        deadline = time.monotonic() + 120
        while not lock_file.exists():
            assert first.poll() is None and time.monotonic() < deadline, "no lock file"
            time.sleep(0.2)
        since = time.monotonic()
        others = {resume: _start(cmd + (["--resume"] if resume else []), tmp_path)
                  for resume in (False, True)}
        drivers += others.values()
        for resume, proc in others.items():
            _, err = proc.communicate(timeout=120)
            errors = [line for line in err.splitlines() if line.startswith("error:")]
            assert proc.returncode == 2 and len(errors) == 1, err[-3000:]
            assert f"pid {first.pid} on {socket.gethostname()} since " in errors[0]
            assert f"folder {tmp_path / 'ray_results' / name}" in errors[0]
            assert ("--resume: search" in errors[0]) == resume
        refused_in = time.monotonic() - since
        assert first.poll() is None and refused_in < 60, refused_in
        # Ctrl-C once a trial runs (its MLflow run exists), to the terminal's process group
        deadline = time.monotonic() + 240
        while not _trial_started(tmp_path / "mlruns" / "mlflow.db"):
            assert first.poll() is None and time.monotonic() < deadline, "no trial started"
            time.sleep(0.5)
        os.killpg(first.pid, signal.SIGINT)
        out, err = first.communicate(timeout=120)
    finally:
        for proc in drivers:
            _stop_session(proc)
    assert first.returncode == 130, (out[-2000:], err[-3000:])
    client, parents, children = mlflow_runs(uri, name)
    assert len(parents) == 1 and parents[0].info.status == "KILLED"
    assert parents[0].data.tags["cxr.stop_reason"] == "interrupted by the user"
    assert children and all(c.info.status != "RUNNING" for c in children)
    assert any(c.info.status == "KILLED" for c in children)
    assert "best:" not in out  # no ranking / champion of a cut-short search
    assert "Tuner.restore" not in out + err
    hint = err.split("Resume it with:\n", 1)[1].splitlines()[0].strip()
    assert hint.startswith("python -m orchestrator.search acgan ") and hint.endswith("--resume")
    resumed = search.config_from_args(shlex.split(hint)[3:])
    assert (resumed.resume, resumed.name, resumed.num_samples) == (True, name, 2)
    assert resumed.storage == str(tmp_path / "ray_results")
    assert not lock_file.exists()
    print(f"two drivers + Ctrl-C: {time.monotonic() - started:.0f} s")


def _trial_started(db: Path) -> bool:
    """A trial run exists (read-only: an MlflowClient would create the database the driver is
    about to create)."""
    if not db.exists():
        return False
    con = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        return con.execute("select count(*) from tags where key = 'cxr.role' and "
                           "value = 'trial'").fetchone()[0] > 0
    except sqlite3.Error:
        return False
    finally:
        con.close()
