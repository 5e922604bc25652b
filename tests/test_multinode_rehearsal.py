"""A multi-node search rehearsed on one machine (issue 15): a Ray head with no CPUs (like the
cluster's) where the driver runs, and a worker node started by `ray start --address` inside a
private mount namespace where the data folder and the driver's caches are hidden behind empty
tmpfs mounts, so trials there can only read what the driver published under the storage.
Then the same with a fault: the worker node's raylet is SIGKILLed mid-trial, a fresh worker
node joins, and the trial resumes from its last checkpoint with no duplicate MLflow run.

Needs root and `unshare` (skipped otherwise).  Every process is started in its own session and
only those sessions are killed, by pid: never `ray stop`, which would hit other Ray work here.
"""
from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from orchestrator.run.cluster import DRIVER_RESOURCE
from test_search_e2e import REPO_ROOT, mlflow_runs

pytestmark = pytest.mark.slow


def _can_unshare() -> bool:
    return (os.geteuid() == 0 and shutil.which("unshare") is not None and shutil.which("ray")
            is not None and subprocess.run(["unshare", "-m", "true"]).returncode == 0)


requires_unshare = pytest.mark.skipif(not _can_unshare(),
                                      reason="needs root, unshare -m and the ray CLI")


def _free_ports(n: int) -> list[int]:
    sockets = [socket.socket() for _ in range(n)]
    for s in sockets:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in sockets]
    for s in sockets:
        s.close()
    return ports


def _node_ports() -> list[str]:
    # Two nodes on one host (and maybe other Ray work beside them): no default port twice.
    agent, grpc, metrics, runtime_env = _free_ports(4)
    return ["--dashboard-agent-listen-port", str(agent), "--dashboard-agent-grpc-port", str(grpc),
            "--metrics-export-port", str(metrics), "--runtime-env-agent-port", str(runtime_env)]


def _session_pids(sid: int) -> list[tuple[int, str]]:
    out = subprocess.run(["ps", "-ww", "-eo", "pid=,sid=,args="], capture_output=True, text=True).stdout
    found = []
    for line in out.splitlines():
        pid, session, args = line.split(None, 2) if len(line.split(None, 2)) == 3 else (*line.split(), "")
        if int(session) == sid:
            found.append((int(pid), args))
    return found


def _kill_session(sid: int) -> None:
    for pid, _ in _session_pids(sid):
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


class Rehearsal:
    """Head (driver side, CPU 0) + worker nodes that cannot see `hidden`."""

    def __init__(self, tmp: Path, hidden: list[Path]):
        self.tmp, self.hidden = tmp, hidden
        self.port = _free_ports(1)[0]
        self.env = {**os.environ, "RAY_AUTH_MODE": "disabled", "PYTHONPATH": str(REPO_ROOT),
                    "CXR_CACHE_DIR": str(tmp / "cache"), "RAY_USAGE_STATS_ENABLED": "0",
                    "PYTHONUNBUFFERED": "1"}
        self.sessions: list[int] = []
        self.workers: list[subprocess.Popen] = []
        # Its own Ray temp dir (short: socket paths are limited): `ray start --head` records
        # its address in <temp>/ray_current_cluster, and a plain `ray.init()` elsewhere on this
        # machine (the next test's search) would join this cluster, dead after the test.
        self.temp_dir = Path(tempfile.mkdtemp(prefix="rt-", dir="/tmp"))

    def _start(self, cmd: list[str], log: str) -> subprocess.Popen:
        proc = subprocess.Popen(cmd, env=self.env, cwd=self.tmp, start_new_session=True,
                                stdout=(self.tmp / log).open("w"), stderr=subprocess.STDOUT)
        self.sessions.append(proc.pid)
        return proc

    def start_head(self) -> None:
        self._start(["ray", "start", "--head", "--block", "--port", str(self.port),
                     "--temp-dir", str(self.temp_dir),
                     "--num-cpus", "0", "--num-gpus", "0", "--include-dashboard", "true",
                     # the state API (which actor ran where) reads the dashboard: loopback only
                     "--dashboard-host", "127.0.0.1", "--dashboard-port", str(_free_ports(1)[0]),
                     "--resources", json.dumps({DRIVER_RESOURCE: 1000}), *_node_ports()],
                    "head.log")
        self._wait_for_nodes(1)

    def start_worker(self, cpus: int = 2) -> subprocess.Popen:
        mounts = " && ".join(f"mount -t tmpfs tmpfs '{p}'" for p in self.hidden)
        empty = " && ".join(f"test -z \"$(ls -A '{p}')\"" for p in self.hidden)
        ray = " ".join(["exec ray start --block", f"--address=127.0.0.1:{self.port}",
                        f"--num-cpus {cpus}", "--num-gpus 0", f"--temp-dir {self.temp_dir}",
                        *_node_ports()])
        log = f"worker{len(self.workers)}.log"
        proc = self._start(["unshare", "-m", "sh", "-c", f"set -e; {mounts}; {empty}; {ray}"], log)
        self.workers.append(proc)
        self._wait_for_nodes(len(self.workers) + 1 - self._dead_workers())
        return proc

    def _dead_workers(self) -> int:
        return sum(1 for w in self.workers if w.poll() is not None)

    def _gcs_listening(self) -> bool:
        with socket.socket() as s:
            s.settimeout(2)
            return s.connect_ex(("127.0.0.1", self.port)) == 0

    def _live_nodes(self, timeout: float) -> str | None:
        code = ("import ray; ray.init(address='127.0.0.1:%d', logging_level='ERROR'); "
                "print(sum(1 for x in ray.nodes() if x['Alive']))" % self.port)
        try:
            out = subprocess.run([sys.executable, "-c", code], env=self.env, capture_output=True,
                                 text=True, timeout=timeout)
        except subprocess.TimeoutExpired:
            return None  # a head still starting on a loaded machine keeps ray.init waiting
        lines = out.stdout.strip().splitlines()
        return lines[-1] if out.returncode == 0 and lines else None

    def _wait_for_nodes(self, n: int, timeout: float = 300) -> None:
        # CI's 2 cores, busy with the test before, have taken over a minute to start a head:
        # each probe is bounded and retried until the deadline, and ray.init is only tried
        # once the head's GCS port accepts connections.
        deadline = time.time() + timeout
        while time.time() < deadline:
            if self._gcs_listening() and self._live_nodes(
                    max(5.0, min(90.0, deadline - time.time()))) == str(n):
                return
            time.sleep(2)
        raise AssertionError(f"the rehearsal cluster did not reach {n} live node(s); logs in "
                             f"{self.tmp}: " + "".join(p.read_text()[-1500:] for p in
                                                       self.tmp.glob("*.log")))

    def raylet_of(self, worker: subprocess.Popen) -> int:
        for pid, args in _session_pids(worker.pid):
            if "/raylet" in args.split(" ", 1)[0]:
                return pid
        log = self.tmp / f"worker{self.workers.index(worker)}.log"
        raise AssertionError(f"no raylet in the worker node's session {worker.pid} (exit "
                             f"{worker.poll()}): {_session_pids(worker.pid)}\n"
                             f"{log.read_text()[-3000:]}")

    def search(self, name: str, data: Path, *extra: str) -> subprocess.Popen:
        cmd = [sys.executable, "-m", "orchestrator.search", "acgan", "--smoke", "--data",
               str(data), "--name", name, "--duplicates", "keep", "--storage",
               str(self.tmp / "storage"), "--mlflow-uri", f"sqlite:///{self.tmp}/mlflow.db",
               "--scheduler", "none", "--eval-metrics", "visual", "--objective", "g_loss",
               *extra]  # where trials run, not what they measure
        proc = subprocess.Popen(cmd, env={**self.env, "RAY_ADDRESS": f"127.0.0.1:{self.port}"},
                                cwd=self.tmp, start_new_session=True, stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, text=True)
        self.sessions.append(proc.pid)
        return proc

    def actor_nodes(self) -> dict[str, set[str]]:
        """{actor class: {"head" | "worker"}} of every actor this cluster ran (Ray's state API)."""
        code = f"""
import json, ray
from ray.util.state import list_actors
ray.init(address="127.0.0.1:{self.port}", logging_level="ERROR")
head = {{n["NodeID"] for n in ray.nodes() if n["Resources"].get("{DRIVER_RESOURCE}")}}
out = {{}}
for a in list_actors(limit=10000, raise_on_missing_output=False, timeout=120):
    out.setdefault(a.class_name, set()).add("head" if a.node_id in head else "worker")
print(json.dumps({{k: sorted(v) for k, v in out.items()}}))
"""
        for _ in range(3):  # the state API reads the dashboard, which a loaded machine can keep waiting
            done = subprocess.run([sys.executable, "-c", code], env=self.env, capture_output=True,
                                  text=True, timeout=300)
            if done.returncode == 0:
                break
        assert done.returncode == 0, done.stderr[-2000:]
        return {k: set(v) for k, v in json.loads(done.stdout.strip().splitlines()[-1]).items()}

    def seen_by_worker(self, paths: list[Path]) -> dict[str, list[str]]:
        """What a task on a worker node (the only node with CPUs) lists in each path."""
        code = f"""
import json, os, ray
ray.init(address="127.0.0.1:{self.port}", logging_level="ERROR")
listing = ray.remote(num_cpus=1)(lambda ps: {{p: sorted(os.listdir(p)) for p in ps}})
print(json.dumps(ray.get(listing.remote({[str(p) for p in paths]!r}))))
"""
        done = subprocess.run([sys.executable, "-c", code], env=self.env, capture_output=True,
                              text=True, timeout=120)
        assert done.returncode == 0, done.stderr[-2000:]
        return json.loads(done.stdout.strip().splitlines()[-1])

    def close(self) -> None:
        for sid in reversed(self.sessions):
            _kill_session(sid)
        shutil.rmtree(self.temp_dir, ignore_errors=True)


@pytest.fixture
def rehearsal(tmp_path, covid3_dir):
    (tmp_path / "cache").mkdir()
    cluster = Rehearsal(tmp_path, hidden=[covid3_dir, tmp_path / "cache"])
    try:
        cluster.start_head()
        cluster.start_worker()
        yield cluster
    finally:
        cluster.close()


def _finish(proc: subprocess.Popen, timeout: float = 900) -> str:
    try:
        out, _ = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, _ = proc.communicate()
        raise AssertionError("search timed out:\n" + out[-4000:])
    assert proc.returncode == 0, out[-5000:]
    return out


@requires_unshare
def test_trials_on_a_node_without_the_data_read_the_published_bundle(rehearsal, covid3_dir):
    # the rehearsal's premise: on the worker node the data folder and the caches are empty,
    # so a trial that read the driver's data path there would fail
    assert os.listdir(covid3_dir)
    assert rehearsal.seen_by_worker(rehearsal.hidden) == {str(p): [] for p in rehearsal.hidden}
    # --execution train: as on the GPU cluster, each trial's actor sits on the head (its
    # cxr_driver resource) and its Ray Train worker on the node without the data
    out = _finish(rehearsal.search("rehearsal", covid3_dir, "--num-samples", "2",
                                   "--max-epochs", "2", "--execution", "train"))
    assert "best: trial" in out, out[-3000:]
    _, parents, children = mlflow_runs(f"sqlite:///{rehearsal.tmp}/mlflow.db", "rehearsal")
    assert len(children) == 2 and all(c.info.status == "FINISHED" for c in children)
    assert parents[0].data.tags.get("cxr.best_epoch") is not None
    # the bundle the trials read, under the storage
    assert list((rehearsal.tmp / "storage" / "cxr-data").glob("*/bundle.json"))
    # the trials' actors on the head, their training on the worker node
    actors = rehearsal.actor_nodes()
    assert actors["ImplicitFunc"] == {"head"} and actors["RayTrainWorker"] == {"worker"}, actors


@requires_unshare
def test_a_lost_worker_node_resumes_its_trial_on_a_fresh_node(rehearsal, covid3_dir):
    # 10 epochs: the node is lost after epoch 1, and the trial (visual checks only, a few
    # seconds an epoch) must still be running when Ray notices (4 epochs finished first once)
    proc = rehearsal.search("rehearsal-fault", covid3_dir, "--num-samples", "1",
                            "--max-epochs", "10", "--set", "state_every=2")
    uri = f"sqlite:///{rehearsal.tmp}/mlflow.db"
    deadline = time.time() + 600
    first = rehearsal.workers[0]
    # wait until the trial has a checkpoint (epoch 1 done), then take its node away
    while time.time() < deadline:
        assert proc.poll() is None, proc.communicate()[0][-4000:]
        ckpts = list((rehearsal.tmp / "storage" / "rehearsal-fault").glob("*/checkpoint_000001"))
        if ckpts:
            break
        time.sleep(2)
    else:
        raise AssertionError("no checkpoint within 10 minutes")
    os.kill(rehearsal.raylet_of(first), signal.SIGKILL)
    first.wait(timeout=120)
    _kill_session(first.pid)  # whatever of that node is left
    rehearsal.start_worker()
    out = _finish(proc)
    assert "finished: 1 trial(s)" in out, out[-3000:]
    _, parents, children = mlflow_runs(uri, "rehearsal-fault")
    assert len(children) == 1, [c.info.run_name for c in children]  # no duplicate run
    from mlflow.tracking import MlflowClient

    from orchestrator.store.layout import metric_key
    steps = [m.step for m in MlflowClient(uri).get_metric_history(children[0].info.run_id,
                                                                 metric_key("g_loss"))]
    assert sorted(steps) == list(range(10)), steps  # every epoch once
    assert children[0].info.status == "FINISHED" and parents[0].info.status == "FINISHED"
    # Tune's own record: the trial was restored from a checkpoint (epochs 0 and 1 were not
    # trained again), on the fresh node
    (results,) = (rehearsal.tmp / "storage" / "rehearsal-fault").glob("*/result.json")
    epochs = [json.loads(line)["epoch"] for line in results.read_text().splitlines()]
    assert epochs.count(0) == 1 and epochs.count(1) == 1 and epochs[-1] == 9, epochs
    assert "Failure # 1" in (results.parent / "error.txt").read_text()  # the lost node
    assert rehearsal.workers[1].poll() is None
