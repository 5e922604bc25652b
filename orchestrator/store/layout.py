"""Names and lookups of the MLflow layout (see `orchestrator.store`), and the tracking URI."""
from __future__ import annotations

import os
import subprocess
import tempfile
from pathlib import Path
from typing import Any, Optional, Sequence

import mlflow
import pyarrow.fs as pafs
from mlflow.tracking import MlflowClient

ROLE, TRIAL_ID, PARENT = "cxr.role", "cxr.trial_id", "mlflow.parentRunId"
# How a trial ended: finished | stopped_early (ASHA) | diverged (the guard) | failed | killed
STATUS = "cxr.status"


class StoreError(LookupError):
    """The store or a search in it cannot be read; the message says what to do."""


class MlflowUnreachable(RuntimeError):
    pass


def epoch_tag(kind: str, epoch: int) -> str:
    """`ckpt.epoch_0007`, `verdict.epoch_0007`, `lineage.epoch_0007`."""
    return f"{kind}.epoch_{int(epoch):04d}"


def tag_epoch(key: str) -> int:
    return int(key.split("_")[-1])


def grid_artifact(epoch: int) -> str:
    return f"grids/epoch_{int(epoch):04d}.png"


def prepare_tracking_uri(uri: str) -> str:
    """Make a local store usable (sqlite parent dir) and check a remote one answers."""
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


def existing_client(tracking_uri: str) -> MlflowClient:
    """A client for an existing store (a missing sqlite file is an error, not a new DB)."""
    if tracking_uri.startswith("sqlite:///"):
        path = Path(tracking_uri[len("sqlite:///"):])
        if not path.is_file():
            raise StoreError(f"no MLflow store at {path} (from {tracking_uri!r}): run a search "
                             "first, or pass --mlflow-uri / set MLFLOW_TRACKING_URI to its store")
    elif "://" not in tracking_uri:
        raise StoreError(f"MLflow URI {tracking_uri!r}: give sqlite:///path/mlflow.db or "
                         "http(s)://host:port")
    return MlflowClient(tracking_uri)


def experiment_id(client, name: str) -> str:
    """The id of experiment `name`, created when missing."""
    experiment = client.get_experiment_by_name(name)
    if experiment is not None:
        return experiment.experiment_id
    return client.create_experiment(name)


def role_runs(client, role: str, experiment_ids: Sequence[str], max_results: int = 1000):
    """Runs tagged `cxr.role=<role>` in the experiments, newest first."""
    if not experiment_ids:
        return []
    return client.search_runs(list(experiment_ids), f"tags.`{ROLE}` = '{role}'",
                              order_by=["attributes.start_time DESC"], max_results=max_results)


def trial_runs(client, experiment_id_: str, parent_run_id: str, trial_id: str | None = None,
               max_results: int = 10000):
    """The trial runs of a search's parent run (or the one of `trial_id`)."""
    query = f"tags.`{ROLE}` = 'trial' and tags.`{PARENT}` = '{parent_run_id}'"
    if trial_id is not None:
        query += f" and tags.`{TRIAL_ID}` = '{trial_id}'"
    return client.search_runs([experiment_id_], query, max_results=max_results)


def code_version() -> str:
    """The git commit of this checkout, "+dirty" when tracked files have local changes
    (then the commit alone does not say what ran)."""
    def git(*args: str) -> str:
        return subprocess.run(["git", *args], capture_output=True, text=True, timeout=5,
                              cwd=Path(__file__).resolve().parents[2]).stdout.strip()
    try:
        commit = git("rev-parse", "HEAD")
        if not commit:
            return "unknown"
        return commit + ("+dirty" if git("status", "--porcelain", "--untracked-files=no") else "")
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def source_tags(entry_point: str) -> dict[str, str]:
    """MLflow's own source fields (the UI's Source and git columns) and ours with "+dirty"."""
    version = code_version()
    tags = {"cxr.code_version": version, "mlflow.source.name": entry_point,
            "mlflow.source.type": "LOCAL"}
    if version != "unknown":
        tags["mlflow.source.git.commit"] = version.removesuffix("+dirty")
    return tags


def short(value: Any) -> str:
    """A param value MLflow accepts (it limits their length)."""
    text = str(value)
    return text if len(text) <= 6000 else text[:5990] + "…"


def flatten(prefix: str, value: Any) -> dict[str, Any]:
    if isinstance(value, dict):
        out: dict[str, Any] = {}
        for key, sub in value.items():
            out.update(flatten(f"{prefix}.{key}" if prefix else str(key), sub))
        return out
    return {prefix: value}


def log_params(client, run_id: str, params: dict) -> None:
    for key, value in params.items():
        client.log_param(run_id, key, short(value))


def log_as(client, run_id: str, path: Path, folder: str, name: str) -> None:
    """Log `path` under `folder/name` (MLflow keeps file names, so copy under the new one)."""
    with tempfile.TemporaryDirectory() as tmp:
        target = Path(tmp) / name
        target.write_bytes(Path(path).read_bytes())
        client.log_artifact(run_id, str(target), artifact_path=folder)


def _checkpoint_target(path: str, name: str, filesystem=None):
    """(filesystem, path of `name` in the checkpoint folder `path`): local, s3://, gs://."""
    if filesystem is None:
        filesystem, path = pafs.FileSystem.from_uri(path) if "://" in path else (pafs.LocalFileSystem(), path)
    return filesystem, f"{path.rstrip('/')}/{name}"


def read_checkpoint_file(path: str, name: str, filesystem=None) -> Optional[bytes]:
    """Read one file of a checkpoint directory without copying all; None when absent."""
    filesystem, target = _checkpoint_target(path, name, filesystem)
    if filesystem.get_file_info(target).type == pafs.FileType.NotFound:
        return None
    with filesystem.open_input_file(target) as handle:
        return handle.read()


def checkpoint_has(path: str, name: str, filesystem=None) -> bool:
    filesystem, target = _checkpoint_target(path, name, filesystem)
    return filesystem.get_file_info(target).type != pafs.FileType.NotFound


def remove_checkpoint_file(path: str, name: str, filesystem=None) -> bool:
    """Delete one file of a checkpoint folder; False when it was not there (Ray may have
    deleted the whole folder already)."""
    filesystem, target = _checkpoint_target(path, name, filesystem)
    if filesystem.get_file_info(target).type == pafs.FileType.NotFound:
        return False
    filesystem.delete_file(target)
    return True
