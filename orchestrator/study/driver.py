"""`python -m orchestrator.study`: the imbalance-strategy study from start to end.

Checks (strategies, budget, data, generator) first; then the parent run; every strategy x
seed trained with the same budget (`trainables.classifier.study.run_study`); the test split
read once, after all selection; tables, paired differences and verdicts to MLflow and the
console.  A GAN search runs first only when the GAN strategies have no generator at all.
"""
from __future__ import annotations

import dataclasses
import shlex
import sys
import tempfile
from pathlib import Path

from mlflow.tracking import MlflowClient

from orchestrator.config import ConfigError, SearchConfig
from orchestrator.run import preflight
from orchestrator.store import layout, writer
from orchestrator.store.models import (RegisteredGenerator, champions, find_generator,
                                       search_generator)
from orchestrator.study import store
from orchestrator.study.config import (StudyConfig, default_name, parse_minority,
                                       study_class_options, study_settings)
from trainables.classifier.config import GAN_STRATEGIES
from trainables.classifier.study import (data_classes, data_fingerprint, paired_markdown,
                                         rare_class_source, resolve_strategies, run_study,
                                         study_markdown)


def run(cfg: StudyConfig) -> dict:
    """Run the study `cfg` describes; returns its summary dict.  Every check that can fail on
    the user's input runs before MLflow's parent run exists."""
    from orchestrator.pipeline import prepare_tracking  # the search's own MLflow set-up

    preflight.check_storage(str(Path(cfg.storage).resolve()) if "://" not in cfg.storage
                            else cfg.storage)
    preflight.check_tracking_store(cfg.mlflow_uri)
    preflight.check_artifact_root(cfg.artifact_root)
    if not cfg.name:
        cfg = dataclasses.replace(cfg, name=default_name())
    try:
        resolve_strategies(cfg.strategies)
    except ValueError as exc:
        raise ConfigError(str(exc)) from exc
    prepare_tracking(cfg.mlflow_uri)
    return run_study_command(cfg)


def run_study_command(cfg: StudyConfig) -> dict:
    """The study: every imbalance strategy trained with the same budget and seeds; the test
    split read once, after all selection; the table (strategy x scores with seed-aware 95 %
    intervals) and the paired differences with their verdicts to MLflow, as
    Markdown and to the console.  GAN strategies use a checked generator
    (`_generator_for_study`); `--minority` makes a class rare in the training split first."""
    strategies = resolve_strategies(cfg.strategies)
    budget, base = study_settings(cfg)
    data, options = _study_data(cfg)
    # the class options that read the study's data (a --minority folder: its names as they are)
    base = {**{k: v for k, v in base.items() if k not in CLASS_KEYS}, **options}
    generator, warning = None, ""
    if any(s in GAN_STRATEGIES for s in strategies):
        generator, warning = _generator_for_study(cfg, data, budget["resolution"], options)
    client = MlflowClient(cfg.mlflow_uri)
    params = {"data": cfg.data, "study_data": data, "minority": cfg.minority or "none",
              "strategies": ",".join(strategies), "smoke": cfg.smoke,
              "generator": generator.uri if generator else "none", **budget,
              **{f"base.{k}": v for k, v in base.items()}}
    generator_tags = generator.tags() if generator else {}
    try:
        parent = writer.start_parent_run(client, cfg.name, params, {
            "cxr.experiment": "classifier", "cxr.code_version": layout.code_version(),
            **generator_tags,
            **({"cxr.generator_warning": layout.short(warning)} if warning else {})},
            role="study", artifact_root=cfg.artifact_root)
    except layout.StoreError as exc:  # --artifact-root against an existing experiment
        raise ConfigError(str(exc)) from None
    try:
        return _study(cfg, data, strategies, budget, base, generator, client, parent)
    except BaseException as exc:
        client.set_tag(parent, "cxr.error", layout.short(f"{type(exc).__name__}: {exc}"))
        client.set_terminated(parent, "FAILED" if isinstance(exc, Exception) else "KILLED")
        raise


def _study(cfg: StudyConfig, data: str, strategies, budget: dict, base: dict,
           generator: RegisteredGenerator | None, client, parent: str) -> dict:
    run_dir = Path(tempfile.mkdtemp(prefix="cxr-study-"))
    table = run_study(
        data, strategies, str(generator.path) if generator else None,
        resolution=budget["resolution"], epochs=budget["epochs"], seeds=budget["seeds"],
        model=budget["model"], run_dir=run_dir, n_boot=budget["n_boot"], base=base,
        callback=store.study_run_logger(client, cfg.name, parent,
                                         generator.tags() if generator else None))
    markdown, paired = study_markdown(table), table.attrs["paired"]
    # the strategy tag is chosen on validation: the test set only reports
    store.log_study_table(client, parent, run_dir, markdown, table.attrs["best_strategy"], paired,
                          table)
    print(f"\n=== classifier study {cfg.name} ===\n{markdown}\n{paired_markdown(paired)}")
    print(f"look: mlflow ui --backend-store-uri {cfg.mlflow_uri} -> experiment '{cfg.name}'")
    return {"search": cfg.name, "table": table, "paired": paired, "markdown": markdown,
            "parent_run_id": parent, "generator": generator, "data": data}


CLASS_KEYS = ("exclude_labels", "label_map", "classes")  # the loader's class options


def _study_data(cfg: StudyConfig) -> tuple[str, dict]:
    """(data, class options that read it): --data with --exclude-classes / --label-map /
    --classes, or with --minority its copy with the class made rare (the options applied;
    its class names read as they are)."""
    options = study_class_options(cfg)
    if not cfg.minority:
        return cfg.data, options
    try:
        folder, counts = rare_class_source(cfg.data, parse_minority(cfg.minority),
                                           duplicates=cfg.duplicates, **options)
        # the folder's class names: the source's, the options applied (resolution only
        # matters for 'default', which --minority refuses)
        classes = data_classes(cfg.data, resolution=0, duplicates=cfg.duplicates, **options)
    except (ValueError, FileNotFoundError) as exc:  # DataError is a ValueError
        raise ConfigError(str(exc)) from exc
    options = {"classes": classes} if options else {}
    kept = "; ".join(f"{c} keeps {k} of its {n} training images" for c, (k, n) in counts.items())
    print(f"--minority {cfg.minority}: {kept}; validation and test images untouched. Data: "
          f"{folder} (train a GAN for this study on it: `python -m orchestrator.search acgan "
          f"--data {folder}{class_flags(options)}`)")
    return str(folder), options


def class_flags(options: dict) -> str:
    """The loader's class options as the command line's flags (for the commands printed)."""
    parts = []
    if "exclude_labels" in options:
        parts += ["--exclude-classes", ",".join(options["exclude_labels"])]
    for old, new in (options.get("label_map") or {}).items():
        parts += ["--label-map", f"{old}={new}"]
    if "classes" in options:
        parts += ["--classes", ",".join(options["classes"])]
    return "".join(f" {shlex.quote(p)}" for p in parts)


def _generator_for_study(cfg: StudyConfig, data: str, resolution: int,
                         options: dict | None = None) -> tuple[RegisteredGenerator, str]:
    """(generator, warning) for the GAN strategies: --generator, else the one --gan-search
    registered, else the newest family champion trained on the study's data (its classes
    and data fingerprint); with no champion at all, an AC-GAN search on the data runs first.
    Champions of other data are never taken silently: that is an error naming them.
    options: the class options that read ``data`` (`_study_data`)."""
    options = options or {}
    classes = data_classes(data, resolution=resolution, duplicates=cfg.duplicates, **options)
    if cfg.generator or cfg.gan_search:
        try:
            found = (find_generator(cfg.generator, cfg.mlflow_uri) if cfg.generator
                     else search_generator(cfg.gan_search, cfg.mlflow_uri))
        except LookupError as exc:
            raise ConfigError(str(exc)) from exc
        return _checked_generator(found, cfg, data, classes, options)
    candidates = champions(cfg.mlflow_uri)
    if not candidates:
        return _checked_generator(_train_generator(cfg, data, options), cfg, data, classes,
                                  options)
    refused = []
    for found in candidates:
        problems = _generator_problems(found, data, classes, cfg.duplicates, options)
        if not problems:
            print(f"GAN strategies use models:/{found.name}@champion ({_describe(found)})")
            return found, ""
        refused.append(f"models:/{found.name}@champion ({_describe(found)}): "
                       + "; ".join(problems.values()))
    raise ConfigError(
        "no registered champion was trained on this study's data: " + " | ".join(refused)
        + f". Train one on it (`python -m orchestrator.search acgan --data {data}"
        f"{class_flags(options)}`), name its "
        "search with --gan-search NAME, or pass --generator models:/NAME/VERSION (--force "
        "uses a generator of other images, recorded as a warning)")


def _checked_generator(found: RegisteredGenerator, cfg: StudyConfig, data: str,
                       classes: tuple[str, ...], options: dict | None = None
                       ) -> tuple[RegisteredGenerator, str]:
    """Other classes: always an error (class i of the generator would not be the study's
    class i).  Other images: an error, or with --force a warning the study records."""
    options = options or {}
    problems = _generator_problems(found, data, classes, cfg.duplicates, options)
    what = f"generator {found.uri} (search {found.search!r}, epoch {found.epoch})"
    if "classes" in problems:
        raise ConfigError(f"{what}: {problems['classes']}; use a generator trained on this "
                          "data set (--force does not apply: the labels would not match)")
    if "data" in problems and not cfg.force:
        raise ConfigError(f"{what}: {problems['data']}; train one on this data "
                          f"(`python -m orchestrator.search acgan --data {data}"
                          f"{class_flags(options)}`) or add "
                          "--force to use it anyway (recorded as a warning on the study)")
    warning = f"{what}: {problems['data']}; used with --force" if "data" in problems else ""
    if warning:
        print(f"warning: {warning}", file=sys.stderr)
    print(f"GAN strategies use {cfg.generator or found.uri} ({_describe(found)})")
    return found, warning


def _generator_problems(found: RegisteredGenerator, data: str, classes: tuple[str, ...],
                        duplicates: str, options: dict | None = None) -> dict[str, str]:
    """{"classes": why, "data": why} for what does not match the study's data; {} if all do.
    The fingerprint is the one a GAN search at the generator's size records for `data`."""
    if found.classes != tuple(classes):
        return {"classes": f"its classes {list(found.classes)} are not the data's "
                           f"{list(classes)}"}
    expected = data_fingerprint(data, resolution=found.resolution, channels=found.channels,
                                duplicates=duplicates, **(options or {}))
    if found.data_fingerprint is None:
        return {"data": "it records no data fingerprint, so its training images are unknown"}
    if found.data_fingerprint != expected:
        return {"data": f"it was trained on other images (data fingerprint "
                        f"{found.data_fingerprint[:12]}…, the study's {expected[:12]}…)"}
    return {}


def _describe(found: RegisteredGenerator) -> str:
    return f"v{found.version}, search {found.search!r}, epoch {found.epoch}"


def _train_generator(cfg: StudyConfig, data: str, options: dict | None = None
                     ) -> RegisteredGenerator:
    options = options or {}
    print("No registered generator (alias 'champion') in MLflow at "
          f"{cfg.mlflow_uri}: training one first with the AC-GAN search "
          f"(`python -m orchestrator.search acgan{' --smoke' if cfg.smoke else ''} --data "
          f"{data}{class_flags(options)}`).")
    gan_cfg = SearchConfig(
        experiment="acgan", preset="s0", data=data, smoke=cfg.smoke,
        num_samples=4 if cfg.smoke else 20, storage=cfg.storage, mlflow_uri=cfg.mlflow_uri,
        name=f"{cfg.name}-gan", seed=cfg.seed, duplicates=cfg.duplicates,
        exclude_classes=",".join(options["exclude_labels"]) if "exclude_labels" in options
        else None,
        label_map=tuple(f"{old}={new}" for old, new in (options.get("label_map") or {}).items()),
        classes=",".join(options["classes"]) if "classes" in options else None)
    from orchestrator.pipeline import run_search  # the study may need a search, not the reverse

    run_search(gan_cfg)
    try:
        return search_generator(gan_cfg.name, cfg.mlflow_uri)
    except LookupError as exc:
        raise RuntimeError("the GAN search registered no generator; see its summary "
                           "above") from exc
