"""The model registry: the best generator of a search as `cxr-<family>-generator`, alias
`champion`, and the way back from a registered name (or a trial run) to its generator.pt,
its classes and the data it was trained on (`RegisteredGenerator`)."""
from __future__ import annotations

import tempfile
from dataclasses import dataclass
from importlib.metadata import version as dist_version
from pathlib import Path
from typing import Optional

import mlflow
import pandas as pd
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

import trainables
from orchestrator import registry
from orchestrator.store.layout import PARENT, read_checkpoint_file, role_runs
from trainables.gan import load_generator, mlflow_model

CHAMPION = "champion"
_LOGGED = "best_generator_epoch_{epoch:04d}"


def registered_model_name(experiment: str) -> str:
    return f"cxr-{experiment}-generator"


def register_generator(cfg, run_id: str, checkpoint: str, epoch: int,
                       tags: Optional[dict[str, str]] = None,
                       description: str = "") -> Optional[dict]:
    """Log the best epoch's generator and register it as `cxr-<family>-generator`, alias
    `champion`; returns {"name", "version", "alias"} (None without a generator.pt).
    ``tags`` (e.g. the epoch's memorisation figures) are set on the version too.

    The run gets `best_generator_epoch_XXXX/generator.pt` (what `generator_artifact` reads).
    The registered model is an MLflow pyfunc "model from code" (`trainables.gan.mlflow_model`,
    with generator.pt as its artifact and the `trainables` package as its code), so loading
    it unpickles nothing: `mlflow.pyfunc.load_model("models:/NAME@champion").predict(df)`."""
    blob = read_checkpoint_file(checkpoint, "generator.pt")
    if blob is None:
        print(f"warning: {checkpoint}/generator.pt not found; best generator not registered")
        return None
    with tempfile.TemporaryDirectory() as tmp:
        local = Path(tmp) / "generator.pt"
        local.write_bytes(blob)
        generator, gan_cfg, classes = load_generator(local)
        name = registered_model_name(cfg.experiment)
        mlflow.set_tracking_uri(cfg.mlflow_uri)  # the fluent API below uses the global URI
        with mlflow.start_run(run_id=run_id):
            mlflow.log_artifact(str(local), artifact_path=_LOGGED.format(epoch=epoch))
            info = mlflow.pyfunc.log_model(
                name="generator", python_model=mlflow_model.__file__,
                artifacts={mlflow_model.ARTIFACT: str(local)},
                # The code it was trained with rebuilds the generator wherever it is loaded.
                code_paths=[str(Path(trainables.__file__).parent)],
                signature=mlflow_model.signature(gan_cfg.resolution, gan_cfg.channels),
                input_example=_input_example(generator, classes),
                registered_model_name=name, pip_requirements=_pip_requirements(),
                # the registry shows the metrics logged at this step: the chosen epoch's
                step=epoch)
    client = MlflowClient(cfg.mlflow_uri)
    version = info.registered_model_version
    client.set_registered_model_alias(name, CHAMPION, version)
    for key, value in {"search": cfg.name, "epoch": str(epoch), "classes": ",".join(classes),
                       "latent_dim": str(gan_cfg.latent_dim), "family": gan_cfg.family,
                       "source_run_id": run_id, **_data_tags(client, run_id),
                       **(tags or {})}.items():
        client.set_model_version_tag(name, version, key, value)
    if description:
        client.update_model_version(name, version, description=description)
    return {"name": name, "version": str(version), "alias": CHAMPION}


def _data_tags(client, run_id: str) -> dict[str, str]:
    """`data_fingerprint` and `data` of the search whose trial `run_id` is (its parent run),
    so that a study can tell whether the generator was trained on the study's images."""
    parent_id = client.get_run(run_id).data.tags.get(PARENT)
    if not parent_id:
        return {}
    parent = client.get_run(parent_id).data
    found = {"data_fingerprint": parent.tags.get("cxr.data_fingerprint"),
             "data": parent.params.get("data")}
    return {key: value for key, value in found.items() if value}


def _input_example(generator, classes: tuple[str, ...]) -> pd.DataFrame:
    """One row MLflow checks the model with at logging and shows in its UI; a class this
    generator makes (a per-class DCGAN may make only some)."""
    first = getattr(generator, "class_indices", (0,))[0]
    return pd.DataFrame({"label": [classes[first]], "seed": [0]})


def _pip_requirements() -> list[str]:
    """What loading `trainables.gan.mlflow_model` imports (MLflow adds itself), pinned to
    this environment.  Explicit: MLflow would otherwise infer them by loading the model in
    a subprocess, slowly, from whatever that import happens to pull in."""
    # A local tag such as torch's "+cu130" is not on PyPI.
    return [f"{dist}=={dist_version(dist).split('+')[0]}"
            for dist in ("torch", "numpy", "pandas", "pillow")]


def generator_artifact(spec: str, tracking_uri: str, dst: Optional[str] = None) -> Path:
    """The generator.pt behind a registered model or a run, downloaded locally.

    spec: `NAME` (alias champion), `NAME@ALIAS`, `NAME/VERSION`, `models:/…` of those, or
    `runs:/RUN_ID` (the best generator logged in that trial run)."""
    client = MlflowClient(tracking_uri)
    dst = dst or tempfile.mkdtemp(prefix="cxr-generator-")
    text = spec[len("models:/"):] if spec.startswith("models:/") else spec
    try:
        if text.startswith("runs:/"):
            run_id = text[len("runs:/"):].strip("/")
            logged = [a.path for a in client.list_artifacts(run_id)
                      if a.is_dir and a.path.startswith("best_generator_epoch_")]
            if not logged:
                raise LookupError(f"run {run_id} has no best_generator_epoch_*/generator.pt: "
                                  "it is not the best trial of a finished search")
            return Path(client.download_artifacts(run_id, f"{sorted(logged)[-1]}/generator.pt", dst))
        version = _model_version(client, text)
    except MlflowException as exc:
        raise LookupError(f"{spec!r} not found in MLflow at {tracking_uri}: "
                          f"{str(exc).splitlines()[0]}") from exc
    run_id, epoch = version.tags["source_run_id"], int(version.tags["epoch"])
    return Path(client.download_artifacts(run_id, f"{_LOGGED.format(epoch=epoch)}/generator.pt",
                                          dst))


def _model_version(client, text: str):
    if "@" in text:
        name, alias = text.split("@", 1)
        return client.get_model_version_by_alias(name, alias)
    if "/" in text:
        name, number = text.split("/", 1)
        return client.get_model_version(name, number)
    return client.get_model_version_by_alias(text, CHAMPION)


@dataclass(frozen=True)
class RegisteredGenerator:
    """One registered generator version: where it came from, what it makes, what it saw."""

    name: str
    version: str
    epoch: int
    search: str
    source_run_id: str
    data_fingerprint: Optional[str]  # the search's `cxr.data_fingerprint`; None if unknown
    classes: tuple[str, ...]
    resolution: int
    channels: int
    path: Path  # generator.pt, downloaded

    @property
    def uri(self) -> str:
        return f"models:/{self.name}/{self.version}"

    def tags(self) -> dict[str, str]:
        """What a study records about the generator that fed its GAN strategies."""
        return {"cxr.generator": self.uri, "cxr.generator_epoch": str(self.epoch),
                "cxr.generator_search": self.search,
                "cxr.generator_run_id": self.source_run_id,
                "cxr.generator_data_fingerprint": self.data_fingerprint or "unknown"}


def find_generator(spec: str, tracking_uri: str) -> RegisteredGenerator:
    """The version `spec` names: `NAME` (alias champion), `NAME@ALIAS`, `NAME/VERSION`, or
    `models:/…` of those.  LookupError when there is no such version."""
    client = MlflowClient(tracking_uri)
    text = spec[len("models:/"):] if spec.startswith("models:/") else spec
    try:
        version = _model_version(client, text)
    except MlflowException as exc:
        raise LookupError(f"--generator {spec!r}: not found in MLflow at {tracking_uri} "
                          f"({str(exc).splitlines()[0]})") from exc
    return _record(client, version, tracking_uri)


def search_generator(search: str, tracking_uri: str) -> RegisteredGenerator:
    """The generator search `search` registered (its newest version, whichever family);
    LookupError when it registered none."""
    client = MlflowClient(tracking_uri)
    versions = [v for family in registry.GAN_EXPERIMENTS
                for v in client.search_model_versions(f"name = '{registered_model_name(family)}'")
                if v.tags.get("search") == search]
    if not versions:
        raise LookupError(f"search {search!r} registered no generator in MLflow at "
                          f"{tracking_uri} (not finished, or every epoch was rejected; see its "
                          "summary)")
    return _record(client, max(versions, key=lambda v: v.creation_timestamp), tracking_uri)


def champions(tracking_uri: str) -> list[RegisteredGenerator]:
    """The `champion` of every GAN family that has one, newest first."""
    client = MlflowClient(tracking_uri)
    found = []
    for family in registry.GAN_EXPERIMENTS:
        try:
            found.append(client.get_model_version_by_alias(registered_model_name(family), CHAMPION))
        except MlflowException:
            continue
    found.sort(key=lambda v: v.creation_timestamp, reverse=True)
    return [_record(client, version, tracking_uri) for version in found]


def _record(client, version, tracking_uri: str) -> RegisteredGenerator:
    path = generator_artifact(f"{version.name}/{version.version}", tracking_uri)
    _, gan_cfg, classes = load_generator(path)
    search = version.tags.get("search", "")
    return RegisteredGenerator(
        name=version.name, version=str(version.version), epoch=int(version.tags["epoch"]),
        search=search, source_run_id=version.tags["source_run_id"],
        data_fingerprint=version.tags.get("data_fingerprint") or _search_fingerprint(client, search),
        classes=tuple(classes), resolution=gan_cfg.resolution, channels=gan_cfg.channels,
        path=path)


def _search_fingerprint(client, search: str) -> Optional[str]:
    """A version registered before versions carried `data_fingerprint`: its search's."""
    experiment = client.get_experiment_by_name(search) if search else None
    runs = role_runs(client, "search", [experiment.experiment_id], 1) if experiment else []
    return runs[0].data.tags.get("cxr.data_fingerprint") if runs else None
