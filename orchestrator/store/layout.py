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


# MLflow's UI groups a run's charts by the part of a metric's key before "/", so each per-epoch
# number is logged as `<group>/<name>`: `train/` how training went, `eval/` the evaluation on the
# selection hold-out, `eval_ci/` its confidence bounds, `search/` the scores Tune and Optuna
# read, `test/` a study's once-only test numbers, `time/` seconds per epoch phase.  The UI sorts
# the sections by name, so `eval` opens the page (bounds were `ci/`, which came first: still read).
# The rest of the product (epoch tables, ranking, report) uses the plain names; `metric_name`
# is the inverse.
METRIC_GROUPS = ("train", "eval", "eval_ci", "search", "test", "time", "ci")
_TRAIN_METRICS = frozenset({
    "g_loss", "d_loss", "d_x", "d_g_z1", "d_g_z2", "d_fake_acc", "d_real_acc", "aux_class_acc",
    "d_steps", "g_steps", "lr_d", "lr_g", "epoch_s", "images_per_s", "diverged",
    "train_loss", "train_accuracy", "epoch_time_s", "images_seen"})
# Per-trial constants, not curves: logged once as params (the first value stands, as for
# every MLflow param) under these names; `epoch` is the step itself and is not logged.
CONSTANT_PARAMS = {
    "fid_dims": "fid_protocol.dims", "fid_n_fake": "fid_protocol.n_fake",
    "fid_n_real": "fid_protocol.n_real", "cas_chance": "fid_protocol.cas_chance",
    "cas_n_train": "fid_protocol.cas_n_train", "cas_n_test": "fid_protocol.cas_n_test",
    "cas_real_acc": "fid_protocol.cas_real_acc", "cas_real_f1": "fid_protocol.cas_real_f1",
    "world_size": "world_size", "n_train": "n_train", "n_synthetic": "n_synthetic",
    "epoch": None}
# Tag `cxr.best_versus_lowest` when the selected epoch is the one with the best objective.
SAME_EPOCH = "the same epoch"
# The tag that remembers a trial run's last logged epoch (for resume), since `epoch` is no metric.
LAST_EPOCH = "cxr.last_epoch"


def metric_key(name: str) -> str:
    """The MLflow key of a per-epoch number: `fid` -> `eval/fid`, `g_loss` -> `train/g_loss`,
    `kid_ci_low` -> `eval_ci/kid_ci_low`, `best_fid` -> `search/best_fid`, `time_eval_s` ->
    `time/eval_s`."""
    if name.startswith("test_"):
        group = "test"
    elif name.endswith(("_ci_low", "_ci_high", "_se")):
        group = "eval_ci"
    elif name in _TRAIN_METRICS:
        group = "train"
    elif name.startswith("best_") or name == "keep_score":
        group = "search"
    elif name.startswith("time_"):  # seconds per epoch phase: time/train_s, time/eval_s, ...
        return f"time/{name[len('time_'):]}"
    else:
        group = "eval"
    return f"{group}/{name}"


def metric_name(key: str) -> str:
    """The plain name of an MLflow metric key (the inverse of `metric_key`; other keys as is)."""
    group, sep, rest = key.partition("/")
    if sep and group == "time":
        return f"time_{rest}"
    return rest if sep and group in METRIC_GROUPS else key


def dataset_input(data: str, fingerprint: str, context: str = "training"):
    """The search's data as an MLflow dataset (the runs table's Dataset column): where it
    lives, its name, and the data fingerprint as its digest (MLflow keeps 36 characters of
    it; the whole one is the `cxr.data_fingerprint` tag).  No image is copied."""
    from mlflow.data import sources
    from mlflow.data.meta_dataset import MetaDataset
    from mlflow.entities import DatasetInput, InputTag

    remote = {"s3": sources.S3ArtifactDatasetSource, "gs": sources.GCSArtifactDatasetSource}
    scheme = data.split("://", 1)[0] if "://" in data else ""
    if scheme:
        source = remote.get(scheme, sources.LocalArtifactDatasetSource)(data)
    else:  # a folder, or a named set such as pneumoniamnist
        local = Path(data).expanduser()
        source = sources.LocalArtifactDatasetSource(str(local.resolve()) if local.exists() else data)
    dataset = MetaDataset(source, name=Path(data.rstrip("/")).name or data,
                          digest=(fingerprint or "unknown")[:36])
    return DatasetInput(dataset._to_mlflow_entity(), tags=[InputTag("mlflow.data.context", context)])


def grid_artifact(epoch: int) -> str:
    return f"grids/epoch_{int(epoch):04d}.png"


def prepare_tracking_uri(uri: str) -> str:
    """Make a local store usable (sqlite parent dir) and check a remote one answers."""
    if uri.startswith("sqlite:///"):
        Path(uri[len("sqlite:///"):]).parent.mkdir(parents=True, exist_ok=True)
    elif uri.startswith(("http://", "https://")):
        # Fail in seconds, not after MLflow's default minutes of retries: a server that
        # never started is reported at once.  A running search rides out a server that goes
        # away for a while with its own bounded retries (`orchestrator.store.retry`,
        # $CXR_MLFLOW_OUTAGE_S), which need each request to fail fast too.
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
        from orchestrator.store.relocate import relocate
        if relocate(path):  # the folder was moved: its artefacts are beside it now
            print(f"note: {path.parent} was moved; its artefact paths now point into it")
    elif "://" not in tracking_uri:
        raise StoreError(f"MLflow URI {tracking_uri!r}: give sqlite:///path/mlflow.db or "
                         "http(s)://host:port")
    return MlflowClient(tracking_uri)


# MLflow 3's UI opens an experiment in its GenAI view (traces) unless told this is model
# training: the experiment's kind, and the workflow type in every link we print or write.
EXPERIMENT_KIND = {"mlflow.experimentKind": "custom_model_development"}
UI_QUERY = "workflowType=machine_learning"


def experiment_id(client, name: str, artifact_location: Optional[str] = None) -> str:
    """The id of experiment `name`, created (as a model-training experiment) when missing,
    its artefacts under `artifact_location` (--artifact-root) or `artifact_root(...)`.
    MLflow cannot move an existing experiment's artefacts: asking for another root is an
    error that names both."""
    experiment = client.get_experiment_by_name(name)
    wanted = artifact_uri(artifact_location) if artifact_location else None
    if experiment is not None:
        if wanted and experiment.artifact_location.rstrip("/") != wanted.rstrip("/"):
            raise StoreError(f"experiment {name!r} keeps its artefacts at "
                             f"{experiment.artifact_location}; --artifact-root {wanted} applies to "
                             "new searches only (drop it, or choose a new --name)")
        return experiment.experiment_id
    return client.create_experiment(name, artifact_location=wanted or artifact_root(
        client.tracking_uri), tags=EXPERIMENT_KIND)


def artifact_uri(root: str) -> str:
    """--artifact-root as MLflow wants it: a URI (s3://…, file://…), or a local path made
    absolute (a relative one would depend on the folder each command runs from)."""
    return root if "://" in root else Path(root).expanduser().resolve().as_uri()


def artifact_root(tracking_uri: str) -> Optional[str]:
    """Where a new experiment's artefacts go: beside a sqlite store (`DIR/artifacts` for
    `sqlite:///DIR/mlflow.db`), so the folder holds the whole search (MLflow's own default
    is ./mlruns of whatever folder the command ran from); a server decides for itself."""
    if not tracking_uri.startswith("sqlite:///"):
        return None
    return (Path(tracking_uri[len("sqlite:///"):]).resolve().parent / "artifacts").as_uri()


def ui_link(experiment: str, run_id: str | None = None, artifact: str | None = None) -> str:
    """The MLflow UI's relative link to an experiment's runs, a run, or a run's artefact."""
    path = f"#/experiments/{experiment}" + (f"/runs/{run_id}" if run_id else "/runs")
    if run_id and artifact:
        path += f"/artifacts/{artifact}"
    return f"{path}?{UI_QUERY}"


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
    (then the commit alone does not say what ran).  `$CXR_CODE_VERSION` wins: `ray up` copies
    the checkout to the cluster without `.git`, so the commit is passed from the laptop."""
    if os.environ.get("CXR_CODE_VERSION"):
        return os.environ["CXR_CODE_VERSION"]
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


def numeric(values: dict) -> dict[str, float]:
    return {k: float(v) for k, v in values.items()
            if isinstance(v, (int, float)) and not isinstance(v, bool)}
