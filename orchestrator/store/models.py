"""The model registry: the best generator of a search as `cxr-<family>-generator`, alias
`champion`, and the way back from a registered name (or a trial run) to its generator.pt."""
from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Optional

import mlflow
import torch
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from orchestrator import registry
from orchestrator.store.layout import read_checkpoint_file
from trainables.gan import load_generator

CHAMPION = "champion"
_LOGGED = "best_generator_epoch_{epoch:04d}"


def registered_model_name(experiment: str) -> str:
    return f"cxr-{experiment}-generator"


def register_generator(cfg, run_id: str, checkpoint: str, epoch: int) -> Optional[dict]:
    """Log the best epoch's generator as an MLflow PyTorch model and alias it `champion`."""
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
            info = mlflow.pytorch.log_model(
                # "pickle": the generator's forward takes (z, labels) and routes per class
                # (per-class DCGAN), which a traced pt2 graph would freeze.
                generator, name="generator", registered_model_name=name,
                serialization_format="pickle",
                pip_requirements=[f"torch=={torch.__version__.split('+')[0]}"])
    client = MlflowClient(cfg.mlflow_uri)
    version = info.registered_model_version
    client.set_registered_model_alias(name, CHAMPION, version)
    for key, value in {"search": cfg.name, "epoch": str(epoch), "classes": ",".join(classes),
                       "latent_dim": str(gan_cfg.latent_dim), "family": gan_cfg.family,
                       "source_run_id": run_id}.items():
        client.set_model_version_tag(name, version, key, value)
    return {"name": name, "version": str(version), "alias": CHAMPION}


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


def champion_checkpoint(tracking_uri: str) -> Optional[tuple[str, Path]]:
    """(model version description, local generator.pt) of the newest champion of any GAN
    family, or None."""
    client = MlflowClient(tracking_uri)
    found = []
    for family in registry.GAN_EXPERIMENTS:
        try:
            found.append(client.get_model_version_by_alias(registered_model_name(family), CHAMPION))
        except MlflowException:
            continue
    if not found:
        return None
    version = max(found, key=lambda v: v.creation_timestamp)
    spec = f"{version.name}@{CHAMPION}"
    return f"models:/{spec} (v{version.version})", generator_artifact(spec, tracking_uri)
