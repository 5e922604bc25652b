"""A search from start to end: checks, Ray, Tune, MLflow, the final ranking — and the
classifier study, which runs a GAN search first when no generator is registered."""
from __future__ import annotations

import dataclasses
import os
import sys
import tempfile
from pathlib import Path

import ray
from mlflow.tracking import MlflowClient

from orchestrator import registry
from orchestrator.config import ConfigError, SearchConfig, default_name
from orchestrator.finalize import finalize_search
from orchestrator.run import cluster
from orchestrator.run.preflight import preflight_data
from orchestrator.run.settings import study_settings, trial_settings
from orchestrator.run.tuner import build_tuner
from orchestrator.store import layout, writer
from orchestrator.store.models import champion_checkpoint
from orchestrator.study import resolve_strategies, run_study, study_markdown
from trainables.classifier.config import GAN_STRATEGIES
from trainables.trial import TrialSettings


def run_search(cfg: SearchConfig):
    """Run (or resume) the search described by `cfg`; returns the final summary dict."""
    cfg = _resolve_name(cfg)
    storage = _storage_path(cfg.storage)
    try:
        layout.prepare_tracking_uri(cfg.mlflow_uri)
    except (layout.MlflowUnreachable, ValueError) as exc:
        raise ConfigError(str(exc)) from exc
    if cfg.experiment == "classifier" and not cfg.tune:
        return run_classifier_study(cfg)
    settings = preflight_data(trial_settings(cfg, storage))
    cluster.init_ray()
    cluster.check_shared_storage(storage, ray.nodes())
    placement = cluster.place(cfg, ray.cluster_resources(), wait=cluster.wait_for_gpus)
    settings = dataclasses.replace(settings, placement=placement)
    client = MlflowClient(cfg.mlflow_uri)
    parent = writer.start_parent_run(client, cfg.name, _parent_params(cfg, settings), {
        "cxr.experiment": cfg.experiment, "cxr.preset": cfg.preset,
        "cxr.data_fingerprint": settings.data_fingerprint,
        "cxr.code_version": layout.code_version()})
    _log_search_space(client, parent, cfg.experiment)
    callback = writer.MlflowSearchCallback(cfg.mlflow_uri, cfg.name, parent)
    results = build_tuner(cfg, settings, storage, callback).fit()
    return finalize_search(cfg, settings, results, client, parent)


def _resolve_name(cfg: SearchConfig) -> SearchConfig:
    if cfg.name:
        return cfg
    if cfg.resume:
        root = _storage_path(cfg.storage)
        candidates = sorted(Path(root).glob(f"{cfg.experiment}-*"), key=os.path.getmtime) \
            if "://" not in root else []
        if not candidates:
            raise ConfigError(f"--resume: no earlier {cfg.experiment} search under {root}; "
                              "pass --name")
        return dataclasses.replace(cfg, name=candidates[-1].name)
    return dataclasses.replace(cfg, name=default_name(cfg))


def _storage_path(storage: str) -> str:
    return storage if "://" in storage else str(Path(storage).resolve())


def _log_search_space(client, parent_run_id: str, experiment: str) -> None:
    """The search space's source next to the search (`search_space/`): the space is code,
    so the code is the record of what was searched."""
    module = registry.experiment_space(experiment)
    files = {Path(module.__file__)}
    shared = getattr(module, "space", None)
    if shared is not None:  # the GAN families re-export search_spaces/gan.py's space
        files.add(Path(sys.modules[shared.__module__].__file__))
    for path in sorted(files):
        client.log_artifact(parent_run_id, str(path), artifact_path="search_space")


def _parent_params(cfg: SearchConfig, settings: TrialSettings) -> dict:
    placement = settings.placement
    space_file = Path(registry.experiment_space(cfg.experiment).__file__)
    return {
        "experiment": cfg.experiment, "preset": cfg.preset, "data": settings.data,
        "searcher": cfg.searcher, "scheduler": cfg.scheduler, "objective": cfg.objective or "",
        "policy": cfg.policy, "num_samples": cfg.num_samples, "smoke": cfg.smoke,
        "execution": placement.execution, "workers_per_trial": cfg.workers_per_trial,
        "gpus_per_worker": placement.gpus_per_worker, "seed": cfg.seed,
        "search_space_module": space_file.name,
        **{f"data_options.{k}": v for k, v in settings.data_options.items()},
        **{f"base.{k}": v for k, v in (settings.base if settings.is_gan else {}).items()},
    }


# ------------------------------------------------------------------------------ the study
def run_classifier_study(cfg: SearchConfig) -> dict:
    """`search classifier`: every imbalance strategy trained with the same budget and seeds;
    the test split read once, after all selection; the table (strategy x accuracy / macro-F1
    with bootstrap 95 % CIs) to MLflow, as Markdown and to the console.  GAN strategies use
    the registered `champion` generator; without one, a GAN search runs first."""
    strategies = resolve_strategies(cfg.strategies)
    budget, base = study_settings(cfg)
    generator = None
    if any(s in GAN_STRATEGIES for s in strategies):
        generator = _generator_for_study(cfg)
    client = MlflowClient(cfg.mlflow_uri)
    params = {"data": cfg.data, "strategies": ",".join(strategies), "smoke": cfg.smoke,
              "generator": generator[0] if generator else "none", **budget,
              **{f"base.{k}": v for k, v in base.items()}}
    parent = writer.start_parent_run(client, cfg.name, params, {
        "cxr.experiment": "classifier", "cxr.code_version": layout.code_version()},
        role="study")
    run_dir = Path(tempfile.mkdtemp(prefix="cxr-study-"))
    table = run_study(
        cfg.data, strategies, str(generator[1]) if generator else None,
        resolution=budget["resolution"], epochs=budget["epochs"], seeds=budget["seeds"],
        model=budget["model"], run_dir=run_dir, n_boot=budget["n_boot"], base=base,
        callback=writer.study_run_logger(client, cfg.name, parent))
    markdown = study_markdown(table)
    best = table.sort_values("macro_f1", ascending=False).iloc[0]
    writer.log_study_table(client, parent, run_dir, markdown, str(best["strategy"]))
    print(f"\n=== classifier study {cfg.name} ===\n{markdown}")
    print(f"look: mlflow ui --backend-store-uri {cfg.mlflow_uri} -> experiment '{cfg.name}'")
    return {"search": cfg.name, "table": table, "markdown": markdown, "parent_run_id": parent}


def _generator_for_study(cfg: SearchConfig):
    found = champion_checkpoint(cfg.mlflow_uri)
    if found is not None:
        print(f"GAN strategies use {found[0]}")
        return found
    print("No registered generator (alias 'champion') in MLflow at "
          f"{cfg.mlflow_uri}: training one first with the AC-GAN search "
          f"(`python -m orchestrator.search acgan{' --smoke' if cfg.smoke else ''} --data "
          f"{cfg.data}`).")
    gan_cfg = SearchConfig(experiment="acgan", preset="s0", data=cfg.data, smoke=cfg.smoke,
                           num_samples=4 if cfg.smoke else 20, storage=cfg.storage,
                           mlflow_uri=cfg.mlflow_uri, name=f"{cfg.name}-gan", seed=cfg.seed,
                           duplicates=cfg.duplicates)
    run_search(gan_cfg)
    found = champion_checkpoint(cfg.mlflow_uri)
    if found is None:
        raise RuntimeError("the GAN search registered no generator; see its summary above")
    return found
