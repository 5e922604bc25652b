"""A search from start to end: checks, Ray, Tune, MLflow, the final ranking.  (The
imbalance-strategy study is `orchestrator.study`.)"""
from __future__ import annotations

import dataclasses
import logging
import os
import shlex
import sys
from pathlib import Path

import ray
from mlflow.tracking import MlflowClient

from orchestrator import registry
from orchestrator.config import ConfigError, SearchConfig, default_name
from orchestrator.finalize import finalize_search
from orchestrator.run import cluster, lock, preflight
from orchestrator.run.settings import trial_settings
from orchestrator.run.tuner import build_tuner, watching_interrupts
from orchestrator.store import layout, retry, writer
from trainables import disk
from trainables.gan import GANConfig
from trainables.trial import TrialSettings


def run_search(cfg: SearchConfig):
    """Run (or resume) the search described by `cfg`; returns the final summary dict.

    Every check that can fail on the user's input runs before Ray or MLflow start; once the
    parent run exists, any error ends it FAILED with the reason.  A Ctrl-C ends it KILLED
    ("interrupted by the user") and raises KeyboardInterrupt with the command that resumes it.
    One driver per search: a second start of the same search (or a --resume of a live one)
    is refused before anything expensive starts (`orchestrator.run.lock`)."""
    # MLflow's per-download progress bars would bury the summary at the end.
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    # "Creating initial MLflow database tables..." / "Updating database tables": bookkeeping.
    logging.getLogger("mlflow.store.db.utils").setLevel(logging.WARNING)
    storage = _storage_path(cfg.storage)
    preflight.check_storage(storage)
    preflight.check_tracking_store(cfg.mlflow_uri)
    preflight.check_artifact_root(cfg.artifact_root)
    cfg = _resolve_name(cfg, storage)
    with lock.acquire(lock.lock_path(storage, cfg.name), cfg.name,
                      f"{storage.rstrip('/')}/{cfg.name}", resume=cfg.resume):
        return _run_locked(cfg, storage)


def _run_locked(cfg: SearchConfig, storage: str):
    settings = preflight.preflight_data(trial_settings(cfg, storage))
    prepare_tracking(cfg.mlflow_uri)
    cluster.init_ray()
    cluster.check_shared_storage(storage, ray.nodes())
    placement = cluster.place(cfg, ray.cluster_resources(), wait=cluster.wait_for_gpus)
    settings = preflight.publish_data(dataclasses.replace(settings, placement=placement), storage)
    # Every call rides out a short outage of the tracking server (`orchestrator.store.retry`).
    client = retry.RetryingClient(MlflowClient(cfg.mlflow_uri))
    params = _parent_params(cfg, settings)
    try:
        if cfg.resume:
            _check_resume_matches(client, cfg, params, settings.data_fingerprint)
        parent = writer.start_parent_run(client, cfg.name, params, {
            "cxr.experiment": cfg.experiment, "cxr.preset": cfg.preset,
            "cxr.data_fingerprint": settings.data_fingerprint,
            **layout.source_tags("orchestrator.search")}, artifact_root=cfg.artifact_root)
    except retry.MlflowOutage as outage:
        raise ConfigError(f"{outage}. Search {cfg.name!r} did not start; run the command "
                          "again when the server answers") from None
    except layout.StoreError as exc:  # e.g. --artifact-root against an existing experiment
        raise ConfigError(str(exc)) from None
    try:
        return _search(cfg, settings, storage, client, parent)
    except KeyboardInterrupt:
        raise KeyboardInterrupt(_end_interrupted(cfg, client, parent)) from None
    except Exception as exc:
        outage = retry.outage_in(exc, cfg.mlflow_uri)
        if outage is not None:  # one line, not the chain of MLflow's and Tune's tracebacks
            raise ConfigError(_end_outage(cfg, client, parent, outage)) from None
        full = disk.found_in(exc)
        if full is not None:
            raise ConfigError(_end_disk_full(cfg, client, parent, full)) from None
        _record_failure(client, parent, exc, "FAILED")
        raise
    except BaseException as exc:
        _record_failure(client, parent, exc, "KILLED")
        raise


# How long the clean-up after a failure waits for the tracking server (the search is over).
CLEANUP_WAIT_S = 10.0


def _record_failure(client, parent: str, exc: BaseException, status: str) -> None:
    """The search run ends `status` with the error; if MLflow cannot take that, a warning
    line, never a second traceback on top of the first."""
    try:
        quick = client.within(CLEANUP_WAIT_S)
        quick.set_tag(parent, "cxr.error", layout.short(f"{type(exc).__name__}: {exc}"))
        quick.set_terminated(parent, status)
    except Exception as err:
        print(f"warning: MLflow could not record the failure ({type(err).__name__}: "
              f"{str(err).splitlines()[0][:200] if str(err) else ''}); run {parent} stays "
              "RUNNING there until --resume", file=sys.stderr)


def _search(cfg: SearchConfig, settings: TrialSettings, storage: str, client, parent: str):
    if cfg.resume:
        writer.reopen_interrupted(client, cfg.name, parent)
    else:
        _log_search_space(client, parent, cfg.experiment)
        client.log_inputs(parent, datasets=[layout.dataset_input(settings.data,
                                                                 settings.data_fingerprint)])
    # Tune's experiment state after every step, not every ~10 s or more: a driver killed
    # between two saves forgets the trials started since (their runs stay RUNNING).
    os.environ.setdefault("TUNE_GLOBAL_CHECKPOINT_S", "0")
    # Tune's new output engine prints its configuration box and a TensorBoard hint (not
    # installed) even at verbose=0; the legacy engine at verbose=0 prints nothing, and the
    # console callback says what a user needs.
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")
    callback = writer.MlflowSearchCallback(cfg.mlflow_uri, cfg.name, parent, settings.epochs,
                                           (settings.data, settings.data_fingerprint))
    tuner = build_tuner(cfg, settings, storage, callback)
    with watching_interrupts() as interrupted:
        results = tuner.fit()
    if interrupted.is_set():
        raise KeyboardInterrupt  # Tune caught the Ctrl-C and saved its state: end KILLED
    client.search_experiments(max_results=1)  # the server answers before the ranking starts
    return finalize_search(cfg, settings, results, client, parent)


def _end_interrupted(cfg: SearchConfig, client, parent: str) -> str:
    """Record a Ctrl-C (trial runs and the search run KILLED, with the reason) and return
    the message that says how to resume."""
    command = resume_command(cfg)
    try:
        stopped = writer.end_interrupted(client.within(CLEANUP_WAIT_S), cfg.name, parent, command)
    except Exception:  # the tracking server is away: Ctrl-C must not wait for it
        return (f"search {cfg.name!r} {writer.INTERRUPTED}; MLflow at {cfg.mlflow_uri} did not "
                f"answer, so its runs stay RUNNING until the search is resumed with:\n  {command}")
    return (f"search {cfg.name!r} {writer.INTERRUPTED}; {len(stopped)} running trial(s) "
            f"stopped and recorded as KILLED. Resume it with:\n  {command}")


def _end_outage(cfg: SearchConfig, client, parent: str, outage: retry.MlflowOutage) -> str:
    """The one line of a search that gave up on its tracking server: what was unreachable,
    for how long, how to continue.  If the server is back, the records that waited are
    written and the runs closed (trials KILLED, the search FAILED; --resume reopens them);
    if not, the runs left RUNNING are named (--resume closes them)."""
    command = resume_command(cfg)
    quick = client.within(CLEANUP_WAIT_S)
    try:
        quick.search_experiments(max_results=1)
        if outage.writer is not None:
            outage.writer.write_pending(CLEANUP_WAIT_S)
        stopped = writer.end_interrupted(quick, cfg.name, parent, command, reason=str(outage),
                                         status="FAILED")
    except Exception:
        runs = ", ".join([f"{parent} (search)", *(f"{run} (trial {trial})" for trial, run
                                                  in sorted(outage.open_runs.items()))])
        return (f"{outage}. Search {cfg.name!r} stopped; MLflow is still away, so run(s) "
                f"{runs} stay RUNNING there. `{command}` continues the search and closes them")
    return (f"{outage}. Search {cfg.name!r} stopped: its MLflow run FAILED, {len(stopped)} "
            f"running trial run(s) KILLED. `{command}` continues it")


def _end_disk_full(cfg: SearchConfig, client, parent: str, full: BaseException) -> str:
    """The one line of a search stopped by a full disk (`orchestrator.run.tuner.DiskWatch`,
    or a write of the driver's own): the search run FAILED with the reason, its running
    trials KILLED (reopened by --resume, which continues them from their last complete
    checkpoint).  A tracking store on the full disk may refuse even that: then the runs
    left RUNNING are said."""
    reason = str(full) if isinstance(full, disk.DiskFull) else \
        f"disk full: {type(full).__name__}: {(str(full).splitlines() or [''])[0][:300]}"
    command = resume_command(cfg)
    try:
        stopped = writer.end_interrupted(client.within(CLEANUP_WAIT_S), cfg.name, parent,
                                         command, reason=reason, status="FAILED",
                                         trial_reason=writer.TRIAL_DISK_FULL)
    except Exception:
        return (f"{reason}. Search {cfg.name!r} stopped; MLflow could not record it, so its "
                f"runs stay RUNNING until `{command}` continues it")
    return (f"{reason}. Search {cfg.name!r} stopped: its MLflow run FAILED, {len(stopped)} "
            f"running trial run(s) KILLED. Free space, then `{command}` continues it")


def resume_command(cfg: SearchConfig) -> str:
    """The command line that continues this search: the one it was started with (`--name`
    made explicit, since a default name is a time) plus `--resume`; when the search was not
    started from its command, the options that find it (the rest must match the first run's)."""
    argv = lock.invocation()
    if argv is None:
        argv = ["python", "-m", "orchestrator.search", cfg.experiment, "--storage",
                cfg.storage, "--mlflow-uri", cfg.mlflow_uri]
    kept, skip = [], False
    for arg in argv:
        if skip or arg == "--resume" or arg.startswith("--name="):
            skip = False
            continue
        skip = arg == "--name"
        if not skip:
            kept.append(arg)
    return shlex.join([*kept, "--name", cfg.name, "--resume"])


def prepare_tracking(uri: str) -> None:
    try:
        retry.outage_limit()  # a bad $CXR_MLFLOW_OUTAGE_S fails here, not mid-search
        layout.prepare_tracking_uri(uri)
    except (layout.MlflowUnreachable, ValueError) as exc:
        raise ConfigError(str(exc)) from exc


def _resolve_name(cfg: SearchConfig, storage: str) -> SearchConfig:
    if cfg.name:
        return cfg
    if not cfg.resume:
        return dataclasses.replace(cfg, name=default_name(cfg))
    found = newest_search(storage, cfg.experiment)
    if found is None:
        raise ConfigError(f"--resume: no earlier {cfg.experiment} search under {storage} (a "
                          "folder with Tune's tuner.pkl); pass --name, or --storage where it ran")
    print(f"--resume: continuing {found!r}, the newest {cfg.experiment} search under {storage}",
          file=sys.stderr)
    return dataclasses.replace(cfg, name=found)


def newest_search(storage: str, experiment: str) -> str | None:
    """The newest search folder under a local storage: one with Tune's `tuner.pkl` (never the
    Optuna file or a Ray Train sub-folder) whose name is the experiment's default
    `<experiment>-<preset>-<time>` or, failing that, any search; None if there is none."""
    if "://" in storage or not Path(storage).is_dir():
        return None
    searches = sorted((p for p in Path(storage).iterdir() if (p / "tuner.pkl").is_file()),
                      key=lambda p: (p / "tuner.pkl").stat().st_mtime)
    own = [p for p in searches if p.name.startswith(f"{experiment}-")]
    return (own or searches)[-1].name if (own or searches) else None


def _check_resume_matches(client, cfg: SearchConfig, params: dict, fingerprint: str) -> None:
    """--resume continues the same search: the settings and the data must be the first run's
    (a different fingerprint means other images); `--force` records the difference instead."""
    experiment = client.get_experiment_by_name(cfg.name)
    runs = layout.role_runs(client, "search", [experiment.experiment_id], 1) if experiment else []
    if not runs:
        return  # the first run died before MLflow heard of it: nothing to compare with
    first = runs[0].data
    # A trial-config key one side's base left out ran with GANConfig's default there.
    defaults = _gan_defaults() if cfg.is_gan else {}
    now = {k: layout.short(v) for k, v in params.items()}
    then = {**{k: v for k, v in defaults.items() if k in now}, **first.params}
    now = {**{k: v for k, v in defaults.items() if k in first.params}, **now}
    differing = [k for k in now if k in then and then[k] != now[k]]
    diffs = [f"{k}: {then[k]!r} then, {now[k]!r} now" for k in differing]
    if first.tags.get("cxr.data_fingerprint", fingerprint) != fingerprint:
        diffs.append(f"data fingerprint: {first.tags['cxr.data_fingerprint']} then, "
                     f"{fingerprint} now (the images differ)")
    if not diffs:
        return
    if not cfg.force:
        sets = [f"--set {k[len('base.'):]}={then[k]}" for k in differing if k.startswith("base.")]
        hint = f" (here: {' '.join(sets)})" if sets else ""
        raise ConfigError(f"--resume {cfg.name!r}: this run differs from the first one: "
                          + "; ".join(diffs) + f". Resume with the first run's options{hint}, "
                          "or add --force to continue anyway (the difference is recorded)")
    client.set_tag(runs[0].info.run_id, "cxr.resumed_with_differences",
                   layout.short("; ".join(diffs)))


def _gan_defaults() -> dict[str, str]:
    """`base.<key>` -> GANConfig's default, as recorded: what a trial ran with where its
    search's base left the key out (a search started before this version's defaults, e.g.
    the evaluation schedule, recorded no `base.eval_every_images`)."""
    return {f"base.{f.name}": layout.short(f.default) for f in dataclasses.fields(GANConfig)
            if f.default is not dataclasses.MISSING}


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
        "max_memorised": cfg.max_memorised,
        "execution": placement.execution, "workers_per_trial": cfg.workers_per_trial,
        "gpus_per_worker": placement.gpus_per_worker,
        "trials_per_gpu": placement.trials_per_gpu, "seed": cfg.seed,
        "search_space_module": space_file.name,
        "storage": settings.storage,
        # what the ranking applied (`rank` reads it back) and what each trial was given
        "min_diversity": cfg.diversity_limit(), "keep_epochs": cfg.keep_epochs,
        "asha_grace": cfg.asha_grace, "max_epochs": cfg.max_epochs,
        "max_images": cfg.max_images, "eval_every": cfg.eval_every,
        "eval_every_images": cfg.eval_every_images,
        **{f"eval.{k}": ",".join(v) if isinstance(v, tuple) else v
           for k, v in settings.eval.items()},
        **{f"data_options.{k}": v for k, v in settings.data_options.items()},
        **{f"base.{k}": v for k, v in (settings.base if settings.is_gan else {}).items()},
    }
