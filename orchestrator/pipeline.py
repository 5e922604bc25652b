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
from orchestrator.config import ConfigError, SearchConfig, default_name, parse_minority
from orchestrator.finalize import finalize_search
from orchestrator.run import cluster, preflight
from orchestrator.run.settings import study_settings, trial_settings
from orchestrator.run.tuner import build_tuner
from orchestrator.store import layout, writer
from orchestrator.store.models import (RegisteredGenerator, champions, find_generator,
                                       search_generator)
from orchestrator.study import (data_classes, data_fingerprint, paired_markdown,
                                rare_class_source, resolve_strategies, run_study,
                                study_markdown)
from trainables.classifier.config import GAN_STRATEGIES
from trainables.trial import TrialSettings


def run_search(cfg: SearchConfig):
    """Run (or resume) the search described by `cfg`; returns the final summary dict.

    Every check that can fail on the user's input runs before Ray or MLflow start; once the
    parent run exists, any error ends it FAILED (an interrupt: KILLED) with the reason."""
    # MLflow's per-download progress bars would bury the summary at the end.
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    storage = _storage_path(cfg.storage)
    preflight.check_storage(storage)
    preflight.check_tracking_store(cfg.mlflow_uri)
    cfg = _resolve_name(cfg, storage)
    if cfg.experiment == "classifier" and not cfg.tune:
        _prepare_tracking(cfg.mlflow_uri)
        return run_classifier_study(cfg)
    settings = preflight.preflight_data(trial_settings(cfg, storage))
    _prepare_tracking(cfg.mlflow_uri)
    cluster.init_ray()
    cluster.check_shared_storage(storage, ray.nodes())
    placement = cluster.place(cfg, ray.cluster_resources(), wait=cluster.wait_for_gpus)
    settings = preflight.publish_data(dataclasses.replace(settings, placement=placement), storage)
    client = MlflowClient(cfg.mlflow_uri)
    params = _parent_params(cfg, settings)
    if cfg.resume:
        _check_resume_matches(client, cfg, params, settings.data_fingerprint)
    parent = writer.start_parent_run(client, cfg.name, params, {
        "cxr.experiment": cfg.experiment, "cxr.preset": cfg.preset,
        "cxr.data_fingerprint": settings.data_fingerprint,
        **layout.source_tags("orchestrator.search")})
    try:
        return _search(cfg, settings, storage, client, parent)
    except BaseException as exc:
        client.set_tag(parent, "cxr.error", layout.short(f"{type(exc).__name__}: {exc}"))
        client.set_terminated(parent, "FAILED" if isinstance(exc, Exception) else "KILLED")
        raise


def _search(cfg: SearchConfig, settings: TrialSettings, storage: str, client, parent: str):
    if cfg.resume:
        client.update_run(parent, status="RUNNING")
    else:
        _log_search_space(client, parent, cfg.experiment)
        client.log_inputs(parent, datasets=[layout.dataset_input(settings.data,
                                                                 settings.data_fingerprint)])
    # Tune's experiment state after every step, not every ~10 s or more: a driver killed
    # between two saves forgets the trials started since (their runs stay RUNNING).
    os.environ.setdefault("TUNE_GLOBAL_CHECKPOINT_S", "0")
    callback = writer.MlflowSearchCallback(cfg.mlflow_uri, cfg.name, parent, settings.epochs,
                                           (settings.data, settings.data_fingerprint))
    results = build_tuner(cfg, settings, storage, callback).fit()
    return finalize_search(cfg, settings, results, client, parent)


def _prepare_tracking(uri: str) -> None:
    try:
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
    diffs = [f"{k}: {first.params[k]!r} then, {layout.short(v)!r} now" for k, v in params.items()
             if k in first.params and first.params[k] != layout.short(v)]
    if first.tags.get("cxr.data_fingerprint", fingerprint) != fingerprint:
        diffs.append(f"data fingerprint: {first.tags['cxr.data_fingerprint']} then, "
                     f"{fingerprint} now (the images differ)")
    if not diffs:
        return
    if not cfg.force:
        raise ConfigError(f"--resume {cfg.name!r}: this run differs from the first one: "
                          + "; ".join(diffs) + ". Resume with the first run's options, or add "
                          "--force to continue anyway (the difference is recorded)")
    client.set_tag(runs[0].info.run_id, "cxr.resumed_with_differences",
                   layout.short("; ".join(diffs)))


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
    with bootstrap 95 % CIs) and the paired differences with their verdicts to MLflow, as
    Markdown and to the console.  GAN strategies use a checked generator
    (`_generator_for_study`); `--minority` makes a class rare in the training split first."""
    strategies = resolve_strategies(cfg.strategies)
    budget, base = study_settings(cfg)
    data = _study_data(cfg)
    generator, warning = None, ""
    if any(s in GAN_STRATEGIES for s in strategies):
        generator, warning = _generator_for_study(cfg, data, budget["resolution"])
    client = MlflowClient(cfg.mlflow_uri)
    params = {"data": cfg.data, "study_data": data, "minority": cfg.minority or "none",
              "strategies": ",".join(strategies), "smoke": cfg.smoke,
              "generator": generator.uri if generator else "none", **budget,
              **{f"base.{k}": v for k, v in base.items()}}
    generator_tags = generator.tags() if generator else {}
    parent = writer.start_parent_run(client, cfg.name, params, {
        "cxr.experiment": "classifier", "cxr.code_version": layout.code_version(),
        **generator_tags, **({"cxr.generator_warning": layout.short(warning)} if warning else {})},
        role="study")
    try:
        return _study(cfg, data, strategies, budget, base, generator, client, parent)
    except BaseException as exc:
        client.set_tag(parent, "cxr.error", layout.short(f"{type(exc).__name__}: {exc}"))
        client.set_terminated(parent, "FAILED" if isinstance(exc, Exception) else "KILLED")
        raise


def _study(cfg: SearchConfig, data: str, strategies, budget: dict, base: dict,
           generator: RegisteredGenerator | None, client, parent: str) -> dict:
    run_dir = Path(tempfile.mkdtemp(prefix="cxr-study-"))
    table = run_study(
        data, strategies, str(generator.path) if generator else None,
        resolution=budget["resolution"], epochs=budget["epochs"], seeds=budget["seeds"],
        model=budget["model"], run_dir=run_dir, n_boot=budget["n_boot"], base=base,
        callback=writer.study_run_logger(client, cfg.name, parent,
                                         generator.tags() if generator else None))
    markdown, paired = study_markdown(table), table.attrs["paired"]
    best = table.sort_values("macro_f1", ascending=False).iloc[0]
    writer.log_study_table(client, parent, run_dir, markdown, str(best["strategy"]), paired)
    print(f"\n=== classifier study {cfg.name} ===\n{markdown}\n{paired_markdown(paired)}")
    print(f"look: mlflow ui --backend-store-uri {cfg.mlflow_uri} -> experiment '{cfg.name}'")
    return {"search": cfg.name, "table": table, "paired": paired, "markdown": markdown,
            "parent_run_id": parent, "generator": generator, "data": data}


def _study_data(cfg: SearchConfig) -> str:
    """The study's data: --data, or with --minority its copy with the class made rare."""
    if not cfg.minority:
        return cfg.data
    try:
        folder, counts = rare_class_source(cfg.data, parse_minority(cfg.minority),
                                           duplicates=cfg.duplicates)
    except (ValueError, FileNotFoundError) as exc:  # DataError is a ValueError
        raise ConfigError(str(exc)) from exc
    kept = "; ".join(f"{c} keeps {k} of its {n} training images" for c, (k, n) in counts.items())
    print(f"--minority {cfg.minority}: {kept}; validation and test images untouched. Data: "
          f"{folder} (train a GAN for this study on it: `python -m orchestrator.search acgan "
          f"--data {folder}`)")
    return str(folder)


def _generator_for_study(cfg: SearchConfig, data: str,
                         resolution: int) -> tuple[RegisteredGenerator, str]:
    """(generator, warning) for the GAN strategies: --generator, else the one --gan-search
    registered, else the newest family champion trained on the study's data (its classes
    and data fingerprint); with no champion at all, an AC-GAN search on the data runs first.
    Champions of other data are never taken silently: that is an error naming them."""
    classes = data_classes(data, resolution=resolution, duplicates=cfg.duplicates)
    if cfg.generator or cfg.gan_search:
        try:
            found = (find_generator(cfg.generator, cfg.mlflow_uri) if cfg.generator
                     else search_generator(cfg.gan_search, cfg.mlflow_uri))
        except LookupError as exc:
            raise ConfigError(str(exc)) from exc
        return _checked_generator(found, cfg, data, classes)
    candidates = champions(cfg.mlflow_uri)
    if not candidates:
        return _checked_generator(_train_generator(cfg, data), cfg, data, classes)
    refused = []
    for found in candidates:
        problems = _generator_problems(found, data, classes, cfg.duplicates)
        if not problems:
            print(f"GAN strategies use models:/{found.name}@champion ({_describe(found)})")
            return found, ""
        refused.append(f"models:/{found.name}@champion ({_describe(found)}): "
                       + "; ".join(problems.values()))
    raise ConfigError(
        "no registered champion was trained on this study's data: " + " | ".join(refused)
        + f". Train one on it (`python -m orchestrator.search acgan --data {data}`), name its "
        "search with --gan-search NAME, or pass --generator models:/NAME/VERSION (--force "
        "uses a generator of other images, recorded as a warning)")


def _checked_generator(found: RegisteredGenerator, cfg: SearchConfig, data: str,
                       classes: tuple[str, ...]) -> tuple[RegisteredGenerator, str]:
    """Other classes: always an error (class i of the generator would not be the study's
    class i).  Other images: an error, or with --force a warning the study records."""
    problems = _generator_problems(found, data, classes, cfg.duplicates)
    what = f"generator {found.uri} (search {found.search!r}, epoch {found.epoch})"
    if "classes" in problems:
        raise ConfigError(f"{what}: {problems['classes']}; use a generator trained on this "
                          "data set (--force does not apply: the labels would not match)")
    if "data" in problems and not cfg.force:
        raise ConfigError(f"{what}: {problems['data']}; train one on this data "
                          f"(`python -m orchestrator.search acgan --data {data}`) or add "
                          "--force to use it anyway (recorded as a warning on the study)")
    warning = f"{what}: {problems['data']}; used with --force" if "data" in problems else ""
    if warning:
        print(f"warning: {warning}", file=sys.stderr)
    print(f"GAN strategies use {cfg.generator or found.uri} ({_describe(found)})")
    return found, warning


def _generator_problems(found: RegisteredGenerator, data: str, classes: tuple[str, ...],
                        duplicates: str) -> dict[str, str]:
    """{"classes": why, "data": why} for what does not match the study's data; {} if all do.
    The fingerprint is the one a GAN search at the generator's size records for `data`."""
    if found.classes != tuple(classes):
        return {"classes": f"its classes {list(found.classes)} are not the data's "
                           f"{list(classes)}"}
    expected = data_fingerprint(data, resolution=found.resolution, channels=found.channels,
                                duplicates=duplicates)
    if found.data_fingerprint is None:
        return {"data": "it records no data fingerprint, so its training images are unknown"}
    if found.data_fingerprint != expected:
        return {"data": f"it was trained on other images (data fingerprint "
                        f"{found.data_fingerprint[:12]}…, the study's {expected[:12]}…)"}
    return {}


def _describe(found: RegisteredGenerator) -> str:
    return f"v{found.version}, search {found.search!r}, epoch {found.epoch}"


def _train_generator(cfg: SearchConfig, data: str) -> RegisteredGenerator:
    print("No registered generator (alias 'champion') in MLflow at "
          f"{cfg.mlflow_uri}: training one first with the AC-GAN search "
          f"(`python -m orchestrator.search acgan{' --smoke' if cfg.smoke else ''} --data "
          f"{data}`).")
    gan_cfg = SearchConfig(experiment="acgan", preset="s0", data=data, smoke=cfg.smoke,
                           num_samples=4 if cfg.smoke else 20, storage=cfg.storage,
                           mlflow_uri=cfg.mlflow_uri, name=f"{cfg.name}-gan", seed=cfg.seed,
                           duplicates=cfg.duplicates)
    run_search(gan_cfg)
    try:
        return search_generator(gan_cfg.name, cfg.mlflow_uri)
    except LookupError as exc:
        raise RuntimeError("the GAN search registered no generator; see its summary "
                           "above") from exc
