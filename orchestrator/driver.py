"""Runs one search: preflight checks, Ray, Tune + Optuna + ASHA/PBT, MLflow, final ranking."""
from __future__ import annotations

import functools
import importlib
import os
import re
import time
import sys
from dataclasses import replace
from pathlib import Path
from typing import Any, Callable

from orchestrator.search import SearchConfig, default_name
from orchestrator import tracking

# CPU smoke budget: what a 2-core laptop finishes in minutes.
SMOKE_GAN = {"resolution": 32, "channels": 1, "width": 0.125, "epochs": 3, "eval_every": 1,
             "steps_per_epoch": 20}
SMOKE_EVAL = {"metrics": ("fid", "kid", "cas", "visual"), "n_fake": 48}
FULL_EVAL = {"metrics": ("fid", "kid", "intra_fid", "is", "cas", "visual")}


class ConfigError(RuntimeError):
    """A bad setting found before any trial started."""


def run_search(cfg: SearchConfig):
    """Run (or resume) the search described by `cfg`; returns the final summary dict."""
    cfg = _resolve_name(cfg)
    storage = _storage_path(cfg.storage)
    try:
        tracking.prepare_tracking_uri(cfg.mlflow_uri)
    except (tracking.MlflowUnreachable, ValueError) as exc:
        raise ConfigError(str(exc)) from exc
    if cfg.experiment == "classifier" and not cfg.tune:
        from orchestrator.classifier_search import run_classifier_study

        return run_classifier_study(cfg)
    settings = trial_settings(cfg, storage)
    _preflight_data(settings)

    import ray

    _init_ray()
    _check_shared_storage(storage, ray.nodes())
    settings = _place(cfg, settings, ray.cluster_resources(), wait_for_gpus=_wait_for_gpus)
    from mlflow.tracking import MlflowClient

    client = MlflowClient(cfg.mlflow_uri)
    parent = tracking.start_parent_run(client, cfg.name, _parent_params(cfg, settings), {
        "cxr.experiment": cfg.experiment, "cxr.preset": cfg.preset,
        "cxr.data_fingerprint": settings["data_fingerprint"],
        "cxr.code_version": tracking.code_version()})
    _log_search_space(client, parent, cfg.experiment)
    callback = tracking.make_callback(cfg.mlflow_uri, cfg.name, parent, {})
    tuner = _build_tuner(cfg, settings, storage, callback)
    results = tuner.fit()
    from orchestrator.finalize import finalize_search

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
        return replace(cfg, name=candidates[-1].name)
    return replace(cfg, name=default_name(cfg))


def _storage_path(storage: str) -> str:
    return storage if "://" in storage else str(Path(storage).resolve())


# ------------------------------------------------------------------------------ settings
def trial_settings(cfg: SearchConfig, storage: str) -> dict:
    """The fixed part of every trial's config (bound with tune.with_parameters)."""
    settings: dict[str, Any] = {
        "experiment": cfg.experiment, "data": cfg.data, "storage": storage,
        "data_options": {"duplicates": cfg.duplicates, "skip_bad": cfg.skip_bad},
        "search_name": cfg.name, "seed": cfg.seed, "workers_per_trial": cfg.workers_per_trial,
        "execution": cfg.execution, "use_gpu": False, "gpus_per_worker": 0.0,
        "cpus_per_worker": 1.0,
    }
    if cfg.experiment == "classifier":
        from trainables.classifier_trial import classifier_settings

        settings.update(classifier_settings(cfg))
        return settings
    settings["gan"] = gan_base_config(cfg)
    settings["eval"] = eval_settings(cfg)
    return settings


def gan_base_config(cfg: SearchConfig) -> dict:
    """Preset values (+ smoke budget, + --set overrides), validated as a GANConfig."""
    from trainables.gan import GANConfig, preset

    try:
        base = {**preset(cfg.preset), "family": cfg.experiment, "seed": cfg.seed}
        if cfg.smoke:
            base.update(SMOKE_GAN)
        if cfg.max_epochs:
            base["epochs"] = cfg.max_epochs
        if cfg.eval_every:
            base["eval_every"] = cfg.eval_every
        base.update(parse_overrides(cfg.overrides))
        GANConfig.from_dict(base)
        space = experiment_space(cfg.experiment)
        for point in space.first_points(base, base.get("epochs", 100)):
            GANConfig.from_dict({**base, **space.to_config(point)})
    except ValueError as exc:
        raise ConfigError(f"bad trial configuration: {exc}") from exc
    return base


def eval_settings(cfg: SearchConfig) -> dict:
    out = dict(SMOKE_EVAL if cfg.smoke else FULL_EVAL)
    if cfg.eval_metrics is not None:
        out["metrics"] = tuple(m.strip() for m in cfg.eval_metrics.split(",") if m.strip())
    return out


_NUMBER = re.compile(r"[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?")


def parse_overrides(items) -> dict:
    """`("width=0.25", "amp=false", "lr_g=1e-4")` -> {"width": 0.25, "amp": False,
    "lr_g": 0.0001} (YAML scalars; a number YAML 1.1 reads as text, such as 1e-4 without a
    dot, is a number)."""
    import yaml

    out = {}
    for item in items:
        key, _, value = item.partition("=")
        parsed = yaml.safe_load(value)
        if isinstance(parsed, str) and _NUMBER.fullmatch(parsed.strip()):
            parsed = float(parsed)
        out[key.strip()] = parsed
    return out


def experiment_space(experiment: str):
    return importlib.import_module(f"search_spaces.{experiment}")


def _preflight_data(settings: dict) -> None:
    """Build the manifest and the decoded cache once, here, so every trial memory-maps it."""
    from trainables.data import DataError
    from trainables.data.default import resolve_default
    from trainables.ray_glue import load_selection

    gan = settings.get("gan") or settings.get("classifier") or {}
    resolution, channels = gan.get("resolution", 64), gan.get("channels", 1)
    try:
        if settings["data"] == "default":
            # Resolve once here (cache, download or stand-in): trials get the file itself,
            # and MLflow records which one it was.
            settings["data"] = str(resolve_default(resolution))
        train, _ = load_selection(settings, resolution, channels)
    except (DataError, FileNotFoundError, ValueError) as exc:
        hint = " (on the command line: --duplicates keep)" if "duplicates=" in str(exc) else ""
        raise ConfigError(f"data {settings['data']!r}: {exc}{hint}") from exc
    settings["data_fingerprint"] = train.fingerprint
    settings["classes"] = list(train.classes)


# ------------------------------------------------------------------------------ Ray
def _init_ray() -> None:
    import ray

    if ray.is_initialized():
        return
    # On a cluster (`ray up` + `ray submit`, or RAY_ADDRESS) join it; otherwise a local Ray.
    ray.init(address=os.environ.get("RAY_ADDRESS"), include_dashboard=False,
             log_to_driver=True, configure_logging=False)


def _check_shared_storage(storage: str, nodes: list[dict]) -> None:
    """Checkpoints of trials on other machines must land where the ranking can read them."""
    hosts = {n.get("NodeManagerAddress") for n in nodes if n.get("Alive")}
    if len(hosts) > 1 and "://" not in storage:
        raise ConfigError(
            f"--storage {storage!r} is a local path but the cluster spans {len(hosts)} machines: "
            "Ray does not sync checkpoints to the head, so the ranking could not read them. "
            "Use --storage s3://BUCKET/… or gs://…, or file:///PATH on a file system every node "
            "mounts")


def _wait_for_gpus(per_worker: float, workers: int, timeout_s: float) -> float:
    """Ask the autoscaler for one trial's GPUs and wait (up to timeout_s) until they exist."""
    import ray
    from ray.autoscaler.sdk import request_resources

    need = per_worker * workers
    request_resources(bundles=[{"GPU": per_worker}] * workers)
    deadline = time.monotonic() + timeout_s
    try:
        while True:
            gpus = ray.cluster_resources().get("GPU", 0.0)
            if gpus >= need or time.monotonic() >= deadline:
                return gpus
            print(f"waiting for the autoscaler: {gpus:g} of {need:g} GPUs up", file=sys.stderr)
            time.sleep(10)
    finally:
        # Tune's own pending trials drive further scaling; drop the standing request so
        # idle nodes can be released after the search.
        request_resources(bundles=[])


def _place(cfg: SearchConfig, settings: dict, resources: dict,
           wait_for_gpus: Callable[[float, int, float], float] | None = None) -> dict:
    """GPUs and workers per trial, checked against what the cluster has (or, with
    --gpu-wait, what an autoscaling cluster brings up)."""
    gpus, cpus = resources.get("GPU", 0.0), resources.get("CPU", 1.0)
    per_worker = cfg.gpus_per_worker if cfg.gpus_per_worker is not None else (1.0 if gpus else 0.0)
    need = per_worker * cfg.workers_per_trial
    autoscaling = need > gpus and cfg.gpu_wait > 0 and wait_for_gpus is not None
    if autoscaling:
        gpus = wait_for_gpus(per_worker, cfg.workers_per_trial, cfg.gpu_wait)
    if need > gpus:
        hint = (f" after waiting {cfg.gpu_wait:g} s for the autoscaler" if autoscaling else
                "; on an autoscaling cluster (GPU nodes from zero) add --gpu-wait 900")
        raise ConfigError(f"a trial needs {need:g} GPUs ({cfg.workers_per_trial} workers x "
                          f"{per_worker:g}) but the cluster has {gpus:g}{hint}")
    if cfg.workers_per_trial > cpus and not autoscaling:
        raise ConfigError(f"--workers-per-trial {cfg.workers_per_trial} exceeds the cluster's "
                          f"{cpus:g} CPUs")
    execution = _execution(cfg, per_worker)
    # With a Train trial the trial actor itself only coordinates: a sliver of a CPU.
    cpus_per_worker = 0.99 if execution == "train" and cpus <= 2 else 1.0
    settings = {**settings, "execution": execution, "use_gpu": per_worker > 0,
                "gpus_per_worker": per_worker, "cpus_per_worker": cpus_per_worker}
    if autoscaling:  # the cluster grows as trials wait: let Tune queue them
        settings["max_concurrent"] = cfg.max_concurrent
    elif cfg.smoke and cfg.scheduler == "asha" and cfg.max_concurrent is None:
        # ASHA compares a trial with those that reached the rung before it, so concurrent
        # trials make its stops depend on which process finished an epoch first. The smoke
        # run is a check anyone reruns: one trial at a time gives the same stops every time.
        settings["max_concurrent"] = 1
    else:
        settings["max_concurrent"] = cfg.max_concurrent or max(
            1, int(gpus // need) if need else int(cpus // (cpus_per_worker * cfg.workers_per_trial)))
    return settings


def _execution(cfg: SearchConfig, per_worker: float) -> str:
    """function: the loop runs in the Tune trial (one process, CPU or GPU); train: a Ray
    Train TorchTrainer per trial (DDP over several workers)."""
    if cfg.scheduler == "pbt":
        # PBT exploits by restarting a trial from another trial's Tune checkpoint; Train V2
        # keeps checkpoints in the Train run's own storage, where Tune cannot hand them over.
        if cfg.workers_per_trial > 1 or cfg.execution == "train":
            raise ConfigError("--scheduler pbt needs one worker per trial (--execution function;"
                              " it may use a GPU): Ray Train trials keep their checkpoints where "
                              "PBT cannot exploit them. Use --scheduler asha for DDP trials")
        return "function"
    execution = cfg.execution
    if execution == "auto":
        execution = "train" if (per_worker > 0 or cfg.workers_per_trial > 1) else "function"
    if execution == "function" and cfg.workers_per_trial > 1:
        raise ConfigError("--execution function runs one worker per trial; use --execution "
                          "train for --workers-per-trial > 1")
    return execution


def trial_resources(settings: dict):
    from ray import tune

    if settings["execution"] == "train":
        return {"CPU": 0.01}
    resources = {"CPU": settings["cpus_per_worker"]}
    if settings["use_gpu"]:
        resources["GPU"] = settings["gpus_per_worker"]
    return resources


def make_trainable(settings: dict):
    from ray import tune

    from trainables.ray_glue import trial

    bound = tune.with_parameters(_trial_entry, settings=settings)
    return tune.with_resources(bound, trial_resources(settings))


def _trial_entry(config: dict, settings: dict) -> None:
    """Searched parameters -> trial config (space.to_config), then the shared trial runner."""
    from trainables.ray_glue import trial

    space = experiment_space(settings["experiment"])
    trial(space.to_config(config), settings)


def _build_tuner(cfg: SearchConfig, settings: dict, storage: str, callback):
    from ray import tune

    trainable = make_trainable(settings)
    path = f"{storage.rstrip('/')}/{cfg.name}"
    if cfg.resume:
        if not tune.Tuner.can_restore(path):
            raise ConfigError(f"--resume: nothing to resume at {path}")
        return tune.Tuner.restore(path, trainable=trainable, resume_unfinished=True,
                                  resume_errored=True)
    objectives = cfg.objectives()
    metric, mode = objectives[0]
    space_module = experiment_space(cfg.experiment)
    epochs = settings.get("gan", {}).get("epochs") or settings.get("epochs", 10)
    search_alg, param_space = _searcher(cfg, space_module, settings, objectives, storage)
    tune_config = tune.TuneConfig(
        num_samples=cfg.num_samples,
        max_concurrent_trials=settings["max_concurrent"],
        search_alg=search_alg,
        scheduler=_scheduler(cfg, metric, mode, epochs, space_module,
                             own_metric=len(objectives) > 1),
        # Multi-objective Optuna gets metric/mode itself; Tune then must not (the scheduler
        # gets the first objective instead).
        **({"metric": metric, "mode": mode} if len(objectives) == 1 else {}),
    )
    run_config = tune.RunConfig(
        name=cfg.name, storage_path=storage, callbacks=[callback],
        failure_config=tune.FailureConfig(max_failures=2),
        checkpoint_config=tune.CheckpointConfig(num_to_keep=None),
        progress_reporter=tune.CLIReporter(
            metric_columns=["epoch", metric, "g_loss", "d_loss"], max_report_frequency=30),
        verbose=1,
    )
    return tune.Tuner(trainable, param_space=param_space, tune_config=tune_config,
                      run_config=run_config)


def _searcher(cfg, space_module, settings, objectives, storage):
    """OptunaSearch (TPE or random sampler) over the define-by-run space; none under PBT."""
    if cfg.scheduler == "pbt":
        from ray.tune.search.basic_variant import BasicVariantGenerator

        # seeded random starting points, so a PBT search is reproducible like an Optuna one
        return BasicVariantGenerator(random_state=cfg.seed), _pbt_initial_space(space_module)
    import optuna
    from ray.tune.search.optuna import OptunaSearch

    sampler = (optuna.samplers.TPESampler(seed=cfg.seed) if cfg.searcher == "optuna"
               else optuna.samplers.RandomSampler(seed=cfg.seed))
    epochs = settings.get("gan", {}).get("epochs") or settings.get("epochs", 10)
    base = settings.get("gan") or settings.get("classifier") or {}
    names = [m for m, _ in objectives]
    modes = [d for _, d in objectives]
    searcher = OptunaSearch(
        space=functools.partial(space_module.space, max_epochs=epochs),
        metric=names[0] if len(names) == 1 else names,
        mode=modes[0] if len(modes) == 1 else modes,
        points_to_evaluate=space_module.first_points(base, epochs),
        sampler=sampler,
        study_name=cfg.name,
        storage=_optuna_storage(cfg, storage),
    )
    return searcher, None


def _optuna_storage(cfg: SearchConfig, storage: str):
    """A study optuna-dashboard can open: sqlite beside the Tune results (or ./ray_results)."""
    import optuna

    root = Path(storage) if "://" not in storage else Path("ray_results").resolve()
    root.mkdir(parents=True, exist_ok=True)
    return optuna.storages.RDBStorage(f"sqlite:///{root / (cfg.name + '-optuna.db')}")


def _pbt_initial_space(space_module) -> dict:
    from ray import tune

    return {key: tune.loguniform(lo, hi) if key.startswith("lr") else tune.uniform(lo, hi)
            for key, (lo, hi) in space_module.PBT_MUTATIONS.items()}


def _scheduler(cfg, metric, mode, epochs, space_module, own_metric=False):
    from ray.tune.schedulers import ASHAScheduler, FIFOScheduler, PopulationBasedTraining

    if cfg.scheduler == "asha":
        extra = {"metric": metric, "mode": mode} if own_metric else {}
        return ASHAScheduler(time_attr="training_iteration", max_t=max(epochs, 1),
                             grace_period=1, reduction_factor=2, **extra)
    if cfg.scheduler == "pbt":
        from ray import tune

        return PopulationBasedTraining(
            time_attr="training_iteration", perturbation_interval=max(1, epochs // 4),
            # learning rates span decades: perturb them on a log scale
            hyperparam_mutations={k: tune.loguniform(lo, hi) if k.startswith("lr")
                                  else tune.uniform(lo, hi)
                                  for k, (lo, hi) in space_module.PBT_MUTATIONS.items()},
            )
    return FIFOScheduler()


def _log_search_space(client, parent_run_id: str, experiment: str) -> None:
    """The search space's source next to the search (`search_space/`): the space is code,
    so the code is the record of what was searched."""
    module = experiment_space(experiment)
    files = {Path(module.__file__)}
    shared = getattr(module, "space", None)
    if shared is not None:  # the GAN families re-export search_spaces/gan.py's space
        files.add(Path(sys.modules[shared.__module__].__file__))
    for path in sorted(files):
        client.log_artifact(parent_run_id, str(path), artifact_path="search_space")


def _parent_params(cfg: SearchConfig, settings: dict) -> dict:
    space_file = Path(sys.modules[experiment_space(cfg.experiment).__name__].__file__)
    return {
        "experiment": cfg.experiment, "preset": cfg.preset, "data": settings["data"],
        "searcher": cfg.searcher, "scheduler": cfg.scheduler, "objective": cfg.objective or "",
        "policy": cfg.policy, "num_samples": cfg.num_samples, "smoke": cfg.smoke,
        "execution": settings["execution"], "workers_per_trial": cfg.workers_per_trial,
        "gpus_per_worker": settings["gpus_per_worker"], "seed": cfg.seed,
        "search_space_module": space_file.name,
        **{f"data_options.{k}": v for k, v in settings.get("data_options", {}).items()},
        **{f"base.{k}": v for k, v in (settings.get("gan") or {}).items()},
    }
