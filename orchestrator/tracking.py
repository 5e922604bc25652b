"""MLflow records for a search: one parent run, one child run per trial, every epoch.

Layout (the ranking CLI and the notebooks rely on it):
- experiment name = search name;
- parent run tagged `cxr.role=search`;
- child run per trial tagged `cxr.role=trial`, `cxr.trial_id`, `mlflow.parentRunId`;
- per-epoch metrics with `step=epoch`; grids as `grids/epoch_XXXX.png`;
- the checkpoint directory of each epoch as tag `ckpt.epoch_XXXX` on the child run.

Everything is logged from the driver (Ray's head), because on a cluster the tracking server
listens on the head's 127.0.0.1 only.
"""
from __future__ import annotations

import os
import subprocess
import tempfile
from pathlib import Path
from typing import Any, Optional

ROLE, TRIAL_ID, PARENT = "cxr.role", "cxr.trial_id", "mlflow.parentRunId"

# Numeric result keys that are Tune bookkeeping, not metrics of the experiment.
_TUNE_KEYS = {"training_iteration", "time_this_iter_s", "time_total_s", "timestamp", "pid",
              "time_since_restore", "iterations_since_restore", "done", "timesteps_total",
              "episodes_total", "timesteps_since_restore", "node_ip", "date", "hostname",
              "trial_id", "experiment_id", "config", "checkpoint_dir_name", "should_checkpoint"}


class MlflowUnreachable(RuntimeError):
    pass


def default_tracking_uri() -> str:
    return "sqlite:///mlruns/mlflow.db"


def prepare_tracking_uri(uri: str) -> str:
    """Make a local store usable (sqlite parent dir) and check a remote one answers."""
    import mlflow
    from mlflow.tracking import MlflowClient

    if uri.startswith("sqlite:///"):
        Path(uri[len("sqlite:///"):]).parent.mkdir(parents=True, exist_ok=True)
    elif uri.startswith(("http://", "https://")):
        # Fail in seconds, not after MLflow's default minutes of retries.
        os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
        os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "5")
    elif "://" not in uri:
        # A bare directory is MLflow's file store, which MLflow 3 refuses by default.
        raise ValueError(f"--mlflow-uri {uri!r}: give sqlite:///path/mlflow.db or http(s)://host:port")
    try:
        MlflowClient(uri).search_experiments(max_results=1)
    except Exception as exc:  # any transport/database failure means: not usable
        raise MlflowUnreachable(
            f"MLflow tracking URI {uri!r} is not reachable ({type(exc).__name__}: "
            f"{str(exc).splitlines()[0][:200]}). Start the server (e.g. `mlflow server "
            f"--backend-store-uri sqlite:///mlruns/mlflow.db --host 127.0.0.1 --port 5000`), "
            f"open the SSH tunnel, or pass --mlflow-uri sqlite:///mlruns/mlflow.db"
        ) from exc
    mlflow.set_tracking_uri(uri)
    return uri


def code_version() -> str:
    """The git commit of this checkout, "+dirty" when tracked files have local changes
    (then the commit alone does not say what ran)."""
    def git(*args: str) -> str:
        return subprocess.run(["git", *args], capture_output=True, text=True, timeout=5,
                              cwd=Path(__file__).resolve().parents[1]).stdout.strip()
    try:
        commit = git("rev-parse", "HEAD")
        if not commit:
            return "unknown"
        return commit + ("+dirty" if git("status", "--porcelain", "--untracked-files=no") else "")
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def start_parent_run(client, search_name: str, params: dict, tags: dict) -> str:
    """Create (or, on --resume, find) the search's parent run; returns its id."""
    experiment_id = _experiment_id(client, search_name)
    existing = client.search_runs([experiment_id], f"tags.`{ROLE}` = 'search'", max_results=1)
    if existing:
        return existing[0].info.run_id
    run = client.create_run(experiment_id, run_name=search_name,
                            tags={ROLE: "search", **{k: str(v) for k, v in tags.items()}})
    for key, value in params.items():
        client.log_param(run.info.run_id, key, _short(value))
    return run.info.run_id


def _experiment_id(client, name: str) -> str:
    experiment = client.get_experiment_by_name(name)
    if experiment is not None:
        return experiment.experiment_id
    return client.create_experiment(name)


def _short(value: Any) -> str:
    text = str(value)
    return text if len(text) <= 6000 else text[:5990] + "…"


def flatten(prefix: str, value: Any) -> dict[str, Any]:
    if isinstance(value, dict):
        out: dict[str, Any] = {}
        for key, sub in value.items():
            out.update(flatten(f"{prefix}.{key}" if prefix else str(key), sub))
        return out
    return {prefix: value}


def _make_callback_class():
    from ray.tune import Callback

    class MlflowSearchCallback(Callback):
        """Driver-side Tune callback: child runs, per-epoch metrics, grids, checkpoint paths."""

        def __init__(self, tracking_uri: str, search_name: str, parent_run_id: str,
                     fixed_params: dict):
            self.tracking_uri = tracking_uri
            self.search_name = search_name
            self.parent_run_id = parent_run_id
            self.fixed_params = fixed_params
            self._client = None
            self._runs: dict[str, str] = {}
            self._last_step: dict[str, int] = {}
            self.checkpoints: dict[tuple[str, int], str] = {}
            self._protocols: dict[str, str] = {}

        # Tune pickles callbacks into its experiment state: keep the client out of it.
        def __getstate__(self):
            state = dict(self.__dict__)
            state["_client"] = None
            return state

        @property
        def client(self):
            if self._client is None:
                from mlflow.tracking import MlflowClient

                self._client = MlflowClient(self.tracking_uri)
            return self._client

        def run_for(self, trial) -> str:
            if trial.trial_id in self._runs:
                return self._runs[trial.trial_id]
            experiment_id = _experiment_id(self.client, self.search_name)
            found = self.client.search_runs(
                [experiment_id],
                f"tags.`{TRIAL_ID}` = '{trial.trial_id}' and tags.`{PARENT}` = '{self.parent_run_id}'",
                max_results=1)
            if found:  # a resumed search: continue the trial's run, never duplicate it
                run_id = found[0].info.run_id
                history = self.client.get_metric_history(run_id, "epoch")
                self._last_step[run_id] = max((int(m.step) for m in history), default=-1)
            else:
                run = self.client.create_run(
                    experiment_id, run_name=f"trial-{trial.trial_id}",
                    tags={ROLE: "trial", TRIAL_ID: trial.trial_id, PARENT: self.parent_run_id})
                run_id = run.info.run_id
                for key, value in flatten("", trial.config).items():
                    self.client.log_param(run_id, key, _short(value))
                self._last_step[run_id] = -1
            self._runs[trial.trial_id] = run_id
            return run_id

        def on_trial_start(self, iteration, trials, trial, **info):
            self.run_for(trial)

        def on_trial_result(self, iteration, trials, trial, result, **info):
            run_id = self.run_for(trial)
            epoch = int(result.get("epoch", result.get("training_iteration", 1) - 1))
            if isinstance(result.get("resumed_from"), str):
                # PBT exploit: from here on this trial continues another trial's weights;
                # epochs it had already logged are superseded, not replays.
                self.client.set_tag(run_id, f"lineage.epoch_{epoch:04d}", result["resumed_from"])
                self._last_step[run_id] = min(self._last_step.get(run_id, -1), epoch - 1)
                for key in [k for k in self.checkpoints if k[0] == trial.trial_id and k[1] >= epoch]:
                    del self.checkpoints[key]
            if epoch <= self._last_step.get(run_id, -1):
                return  # replayed after a resume: already recorded
            self._last_step[run_id] = epoch
            self._log_metrics(run_id, result, epoch)
            if isinstance(result.get("stop_reason"), str) and result["stop_reason"]:
                self.client.set_tag(run_id, "stop_reason", result["stop_reason"])
            if isinstance(result.get("eval_protocol"), str):
                self._log_protocol(run_id, result["eval_protocol"])
            if result.get("checkpoint_path"):  # Ray Train path: the checkpoint is in Train storage
                self._record_checkpoint(trial, run_id, epoch, result["checkpoint_path"], None)

        def on_checkpoint(self, iteration, trials, trial, checkpoint, **info):
            run_id = self.run_for(trial)
            epoch = int((trial.last_result or {}).get("epoch", -1))
            if epoch >= 0:
                self._record_checkpoint(trial, run_id, epoch, checkpoint.path, checkpoint.filesystem)

        def on_trial_complete(self, iteration, trials, trial, **info):
            self.client.set_terminated(self.run_for(trial), "FINISHED")

        def on_trial_error(self, iteration, trials, trial, **info):
            run_id = self.run_for(trial)
            self.client.set_tag(run_id, "error", _short(getattr(trial, "error_file", "") or "failed"))
            self.client.set_terminated(run_id, "FAILED")

        def _log_protocol(self, run_id: str, text: str) -> None:
            """The evaluation protocol, once per trial: params `fid_protocol.*` + a JSON file."""
            if self._protocols.get(run_id) == text:
                return
            import json

            self._protocols[run_id] = text
            self.client.log_text(run_id, text, "eval_protocol.json")
            existing = self.client.get_run(run_id).data.params
            for key, value in flatten("fid_protocol", json.loads(text)).items():
                if key not in existing:  # params are immutable; the first protocol stands
                    self.client.log_param(run_id, key, _short(value))

        def _log_metrics(self, run_id: str, result: dict, epoch: int) -> None:
            from mlflow.entities import Metric
            import time

            now = int(time.time() * 1000)
            metrics = [Metric(key, float(value), now, epoch) for key, value in result.items()
                       if key not in _TUNE_KEYS and isinstance(value, (int, float))
                       and not isinstance(value, bool) and value == value]
            if metrics:
                self.client.log_batch(run_id, metrics=metrics)

        def _record_checkpoint(self, trial, run_id, epoch, path, filesystem) -> None:
            if (trial.trial_id, epoch) in self.checkpoints:
                return
            self.checkpoints[(trial.trial_id, epoch)] = path
            self.client.set_tag(run_id, f"ckpt.epoch_{epoch:04d}", path)
            grid = read_checkpoint_file(path, "grid.png", filesystem)
            if grid is not None:
                with tempfile.TemporaryDirectory() as tmp:
                    local = Path(tmp) / f"epoch_{epoch:04d}.png"
                    local.write_bytes(grid)
                    self.client.log_artifact(run_id, str(local), artifact_path="grids")

    return MlflowSearchCallback


def make_callback(tracking_uri: str, search_name: str, parent_run_id: str, fixed_params: dict):
    return _make_callback_class()(tracking_uri, search_name, parent_run_id, fixed_params)


def read_checkpoint_file(path: str, name: str, filesystem=None) -> Optional[bytes]:
    """Read one file of a checkpoint directory (local path or s3://, gs://) without copying all."""
    import pyarrow.fs as pafs

    if filesystem is None:
        filesystem, path = pafs.FileSystem.from_uri(path) if "://" in path else (pafs.LocalFileSystem(), path)
    target = f"{path.rstrip('/')}/{name}"
    if filesystem.get_file_info(target).type == pafs.FileType.NotFound:
        return None
    with filesystem.open_input_file(target) as handle:
        return handle.read()
