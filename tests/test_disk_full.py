"""A full disk (issue 25): every write checks the free space first and stops with one line
that names the place (`trainables.disk.DiskFull`) while a reserve is still free; a write that
hits the wall anyway leaves the old file whole; the search ends FAILED and --resume, once
space is freed, continues it.

The "small disk" is a tmpfs mounted for the test (this machine's tests run as root); where
mounting is not allowed those tests are skipped with the reason."""
from __future__ import annotations

import errno
import json
import os
import pickle
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from orchestrator.config import ConfigError
from orchestrator.run import preflight
from orchestrator.store.writer import error_line
from trainables import disk
from trainables.atomic import write_bytes_atomic
from trainables.gan.checkpoint import STATE_SEAL, StateStore, atomic_save

MB = 1 << 20


class SmallDisk:
    """A tmpfs of a given size at `path`, resizable (`mount -o remount,size=`)."""

    def __init__(self, path: Path):
        self.path = path

    def mount(self, size_mb: int) -> None:
        self.path.mkdir(parents=True, exist_ok=True)
        _mount(["-t", "tmpfs", "-o", f"size={size_mb}m", "tmpfs", str(self.path)])

    def resize(self, size_mb: int) -> None:
        _mount(["-o", f"remount,size={size_mb}m", str(self.path)])

    def unmount(self) -> None:
        subprocess.run(["umount", "-l", str(self.path)], capture_output=True, check=False)


def _mount(args: list[str]) -> None:
    out = subprocess.run(["mount", *args], capture_output=True, text=True, check=False)
    if out.returncode != 0:
        pytest.skip(f"a small file system is needed (mount {' '.join(args)}: "
                    f"{out.stderr.strip() or out.returncode}); run the tests as root")


@pytest.fixture
def small_disk(tmp_path):
    d = SmallDisk(tmp_path / "small")
    yield d
    d.unmount()


# --- the check and its message -------------------------------------------------------------

def test_the_reserve_comes_from_the_environment(monkeypatch):
    monkeypatch.delenv(disk.RESERVE_ENV, raising=False)
    assert disk.reserve() == 64 * MB
    monkeypatch.setenv(disk.RESERVE_ENV, "0.5")
    assert disk.reserve() == MB // 2
    for bad in ("lots", "-1"):
        monkeypatch.setenv(disk.RESERVE_ENV, bad)
        with pytest.raises(ValueError, match=f"CXR_MIN_FREE_MB={bad!r}: expected a number"):
            disk.reserve()


def test_a_full_disk_is_one_line_naming_the_place_and_the_fix(tmp_path):
    with pytest.raises(disk.DiskFull) as caught:
        disk.require([tmp_path], 1 << 60)
    line = str(caught.value)
    assert line.startswith(f"disk full at {tmp_path}: ") and "\n" not in line
    assert "MB free, need ~" in line and "CXR_MIN_FREE_MB" in line
    assert line.endswith("free space there, then resume") and "[Errno" not in line
    assert caught.value.errno == errno.ENOSPC
    again = pickle.loads(pickle.dumps(caught.value))  # crosses Ray's process boundary
    assert isinstance(again, disk.DiskFull) and str(again) == line
    disk.require([tmp_path / "not" / "made" / "yet"], 0)  # the nearest existing parent's


def test_the_full_disk_is_found_behind_what_raised_it_and_in_error_files(tmp_path):
    full = OSError(errno.ENOSPC, "No space left on device")
    try:
        try:
            raise full
        except OSError as exc:
            raise RuntimeError("Tune: trial failed") from exc
    except RuntimeError as outer:
        assert disk.found_in(outer) is full
    assert disk.found_in(ValueError("no")) is None
    assert disk.found_in(OSError(errno.EACCES, "denied")) is None

    error_file = tmp_path / "error.txt"
    error_file.write_text("Failure # 1 (occurred at 2026-12-05)\nTraceback (most recent call "
                          "last):\n  File \"x.py\", line 3, in f\n    save()\n"
                          "trainables.disk.DiskFull: disk full at /data/run: 3 MB free, need "
                          "~68 MB (including the 64 MB reserve, $CXR_MIN_FREE_MB); free space "
                          "there, then resume\n")
    line = error_line(SimpleNamespace(error_file=str(error_file)))
    assert line.startswith("DiskFull: disk full at /data/run: 3 MB free")
    assert disk.mentions_disk_full(line)
    assert not disk.mentions_disk_full("ValueError: nan in the generator's loss")
    assert error_line(SimpleNamespace(error_file=None)) == ""
    assert error_line(SimpleNamespace(error_file=str(tmp_path / "gone.txt"))) == ""


# --- writes on a disk that fills -------------------------------------------------------------

def test_a_write_that_hits_the_wall_leaves_the_old_file_whole(small_disk, monkeypatch):
    """The check refuses before writing; a write that still hits ENOSPC (the estimate was
    short, another program filled the disk) is DiskFull too, and the old file is intact."""
    monkeypatch.setenv(disk.RESERVE_ENV, "0")
    small_disk.mount(2)
    old = small_disk.path / "note.bin"
    write_bytes_atomic(old, b"old")
    with pytest.raises(disk.DiskFull, match=f"disk full at {small_disk.path}"):
        with disk.translating(small_disk.path):
            write_bytes_atomic(old, b"x" * (3 * MB))  # no check: a real ENOSPC
    assert old.read_bytes() == b"old"
    assert sorted(p.name for p in small_disk.path.iterdir()) == ["note.bin"]  # no temp left

    state = small_disk.path / "state.pt"
    atomic_save({"w": torch.zeros(1000)}, state)
    with pytest.raises(disk.DiskFull) as caught:
        atomic_save({"w": torch.zeros(1 * MB)}, state)  # 4 MB of float32 on a 2 MB disk
    assert caught.value.need >= 4 * MB and caught.value.__cause__ is None  # refused up front
    assert torch.load(state)["w"].shape == (1000,)


def test_a_state_store_on_a_full_disk_keeps_its_last_good_state(small_disk, monkeypatch):
    monkeypatch.setenv(disk.RESERVE_ENV, "1")
    small_disk.mount(4)
    store = StateStore(small_disk.path / "states")
    store.save({"format": "cxr-gan-state/1", "epoch": 0, "w": torch.ones(1000)}, 0)
    with pytest.raises(disk.DiskFull, match="including the 1 MB reserve"):
        store.save({"format": "cxr-gan-state/1", "epoch": 1, "w": torch.ones(MB)}, 1)
    assert store.epochs() == [0]
    assert store.load(0)["w"].sum() == 1000
    folder = small_disk.path / "states" / "epoch_0000"
    assert json.loads((folder / STATE_SEAL).read_text())["bytes"] == (folder / "state.pt").stat().st_size


def test_a_search_on_a_full_disk_is_refused_before_ray_starts(small_disk, monkeypatch):
    small_disk.mount(2)
    monkeypatch.setenv(disk.RESERVE_ENV, "8")
    with pytest.raises(ConfigError, match=f"--storage: disk full at {small_disk.path}: 2 MB free"):
        preflight.check_storage(str(small_disk.path))
    with pytest.raises(ConfigError, match="--mlflow-uri: disk full at"):
        preflight.check_tracking_store(f"sqlite:///{small_disk.path}/mlflow.db")
    monkeypatch.setenv(disk.RESERVE_ENV, "plenty")
    with pytest.raises(ConfigError, match="CXR_MIN_FREE_MB='plenty'"):
        preflight.check_storage(str(small_disk.path))
    monkeypatch.setenv(disk.RESERVE_ENV, "1")
    preflight.check_storage(str(small_disk.path))


# --- a real search that fills its disk (slow) ------------------------------------------------

@pytest.mark.slow
def test_a_search_that_fills_its_disk_stops_failed_and_resumes_once_space_is_freed(
        small_disk, covid3_dir, tmp_path):
    """Storage and MLflow on a 20 MB disk: the data bundle, the first trial and its records
    fit, the second trial's checkpoints do not.  The search ends with one line (rc 2), its run
    FAILED with the reason, no run left RUNNING, every file it wrote whole; with the disk
    grown, --resume finishes both trials."""
    from mlflow.tracking import MlflowClient

    from orchestrator.store.layout import metric_key
    from orchestrator.store.writer import STOP_REASON, TRIAL_DISK_FULL
    from test_search_e2e import env_for, mlflow_runs, search_cmd

    small_disk.mount(20)
    # the visual checks and the G loss: the disk fills with checkpoints whatever is measured,
    # and neither loads the Inception network
    cmd = search_cmd(small_disk.path, "full", covid3_dir, "--num-samples", "2",
                     "--scheduler", "none", "--eval-metrics", "visual", "--objective", "g_loss")
    env = {**env_for(tmp_path), disk.RESERVE_ENV: "2"}  # the decoded-image cache off the disk
    first = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=900)
    assert first.returncode == 2, first.stderr[-3000:]
    last = first.stderr.strip().splitlines()[-1]
    assert last.startswith("error: ") and "disk full at " in last, first.stderr[-3000:]
    assert "--name full --resume" in last and "Free space, then" in last

    uri = f"sqlite:///{small_disk.path}/mlruns/mlflow.db"
    _, parents, children = mlflow_runs(uri, "full")
    assert parents[0].info.status == "FAILED"
    assert "disk full at " in parents[0].data.tags[STOP_REASON]
    assert all(run.info.status != "RUNNING" for run in children)
    stopped = [run for run in children if run.info.status == "KILLED"]
    assert stopped and all(run.data.tags["stop_reason"] == TRIAL_DISK_FULL for run in stopped)
    _assert_whole(small_disk.path / "ray_results")

    small_disk.resize(80)
    again = subprocess.run(cmd + ["--resume"], env=env, capture_output=True, text=True,
                           timeout=900)
    assert again.returncode == 0, again.stderr[-3000:]
    _, parents, children = mlflow_runs(uri, "full")
    assert parents[0].info.status == "FINISHED" and len(children) == 2
    assert all(run.info.status == "FINISHED" for run in children)
    client = MlflowClient(uri)
    for run in children:  # every trial's epochs all there, after the stop and the resume
        steps = {m.step for m in client.get_metric_history(run.info.run_id, metric_key("g_loss"))}
        assert steps == {0, 1, 2}, (run.info.run_name, steps)
    _assert_whole(small_disk.path / "ray_results")


def _assert_whole(storage: Path) -> None:
    """Every JSON file parses (Tune's result.json line by line; its searcher state, a pickle
    named .json, is not JSON) and every sealed state has the bytes its seal says."""
    for path in storage.rglob("*.json"):
        data = path.read_bytes()
        if data[:1] not in (b"{", b"["):
            continue
        for record in data.splitlines() if path.name == "result.json" else [data]:
            json.loads(record)
    for seal in storage.rglob(STATE_SEAL):
        state = seal.with_name("state.pt")
        if state.is_file():
            assert json.loads(seal.read_text())["bytes"] == state.stat().st_size, state
    assert not list(storage.rglob(".*.tmp.*")), "a temporary file was left behind"


def test_the_trial_run_records_a_skipped_state_and_what_a_failed_trial_died_of(tmp_path):
    """What a user reads in MLflow: the resume warning as an epoch tag, and a failed trial's
    exception line before the path of its traceback."""
    from mlflow.tracking import MlflowClient

    from orchestrator.store.writer import MlflowSearchCallback, start_parent_run

    uri = f"sqlite:///{tmp_path}/mlflow.db"
    client = MlflowClient(uri)
    parent = start_parent_run(client, "s", {}, {})
    callback = MlflowSearchCallback(uri, "s", parent, epochs=3)
    trial = SimpleNamespace(trial_id="t1", config={}, last_result={}, status="RUNNING",
                            error_file=None)
    warning = ("unreadable training state epoch_0003/state.pt (sha256 differs); resumed from "
               "epoch_0002")
    callback.on_trial_result(0, [trial], trial, {"epoch": 3, "g_loss": 1.0,
                                                 "training_iteration": 1,
                                                 "resume_warning": warning})
    run_id = callback.run_for(trial)
    assert client.get_run(run_id).data.tags["resume_warning.epoch_0003"] == warning

    error_file = tmp_path / "error.txt"
    error_file.write_text("Traceback (most recent call last):\n  File \"t.py\", line 1\n"
                          "trainables.disk.DiskFull: disk full at /x: 1 MB free, need ~65 MB\n")
    trial.error_file = str(error_file)
    callback.on_trial_error(1, [trial], trial)
    run = client.get_run(run_id)
    assert run.data.tags["error"] == f"DiskFull: disk full at /x: 1 MB free, need ~65 MB ({error_file})"
    assert run.info.status == "FAILED"


def test_the_driver_stops_at_the_first_full_disk_and_lets_other_errors_retry(tmp_path,
                                                                           monkeypatch):
    from orchestrator.run.tuner import DiskWatch, watched_folders

    assert watched_folders("s3://bucket/runs", f"sqlite:///{tmp_path}/m/mlflow.db") == \
        [str(tmp_path / "m")]
    assert watched_folders(str(tmp_path), "http://127.0.0.1:5000") == [str(tmp_path)]
    watch = DiskWatch([str(tmp_path)])
    watch.on_step_end(0, [])
    nan = tmp_path / "nan.txt"
    nan.write_text("Traceback\nValueError: the generator's loss is nan\n")
    watch.on_trial_recover(0, [], SimpleNamespace(trial_id="a", error_file=str(nan)))
    full = tmp_path / "full.txt"
    full.write_text("Traceback\nOSError: [Errno 28] No space left on device\n")
    with pytest.raises(disk.DiskFull, match="trial b: OSError: .Errno 28. No space left"):
        watch.on_trial_error(0, [], SimpleNamespace(trial_id="b", error_file=str(full)))
    monkeypatch.setenv(disk.RESERVE_ENV, str(1 << 40))  # a reserve no disk has
    with pytest.raises(disk.DiskFull, match=f"disk full at {tmp_path}"):
        watch.on_step_end(1, [])


def test_a_tracking_store_on_a_full_disk_ends_the_search_in_one_line(tmp_path, monkeypatch):
    """sqlite's "database or disk is full", wrapped by MLflow (at registration, say), is the
    same stop: found behind what raised it, the search ended in one line with --resume."""
    from mlflow.exceptions import MlflowException
    from mlflow.tracking import MlflowClient

    from orchestrator import pipeline
    from orchestrator.store.retry import RetryingClient
    from orchestrator.store.writer import start_parent_run

    inner = MlflowException("(sqlite3.OperationalError) database or disk is full\n[SQL: ...]")
    outer = RuntimeError("registering the champion failed")
    outer.__cause__ = inner
    assert disk.found_in(outer) is inner
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    real = MlflowClient(uri)
    parent = start_parent_run(real, "s", {}, {})
    cfg = SimpleNamespace(name="s", experiment="acgan", storage=str(tmp_path), mlflow_uri=uri)
    monkeypatch.setattr(pipeline.lock, "invocation", lambda: ["cxr-search", "acgan"])
    line = pipeline._end_disk_full(cfg, RetryingClient(real), parent, inner)
    assert line.startswith("disk full: MlflowException: (sqlite3.OperationalError) database or "
                           "disk is full. Search 's' stopped: its MLflow run FAILED")
    assert "\n" not in line and line.endswith("`cxr-search acgan --name s --resume` continues it")
    assert real.get_run(parent).info.status == "FAILED"


def test_the_full_disk_error_itself_is_preferred_to_a_wrapper_quoting_it():
    """Tune's error quotes the trial's traceback, 'disk full at' included: the stop names
    the DiskFull behind it, not the wrapper's first line ("Traceback ...")."""
    full = disk.DiskFull("/data/run", 3 * MB, 68 * MB)
    wrapper = RuntimeError(f"Traceback (most recent call last):\n  ...\n{full}")
    wrapper.__cause__ = full
    assert disk.found_in(wrapper) is full
