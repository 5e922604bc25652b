"""`python -m orchestrator.search classifier`: the augmentation study (does the GAN help?).

Every imbalance strategy is trained with the same budget and seeds; the test split is read
once, after all selection; the comparison table (strategy x accuracy / macro-F1 with
bootstrap 95 % CIs) goes to MLflow, as Markdown, and to the console.  GAN strategies use the
registered `champion` generator; without one, a GAN search is run first.
"""
from __future__ import annotations

import json
import tempfile
from dataclasses import replace
from pathlib import Path
from typing import Optional

from orchestrator import tracking
from orchestrator.finalize import CHAMPION, registered_model_name

GAN_FAMILIES = ("acgan", "cgan", "dcgan")
SMOKE_STUDY = {"resolution": 32, "epochs": 2, "seeds": (0,), "n_boot": 200, "channels": 1}
FULL_STUDY = {"resolution": 112, "epochs": 50, "seeds": (0, 1, 2), "n_boot": 1000,
              "channels": 3}


def champion_checkpoint(tracking_uri: str) -> Optional[tuple[str, Path]]:
    """(model version description, local generator.pt) of the newest champion, or None."""
    from mlflow.exceptions import MlflowException
    from mlflow.tracking import MlflowClient

    from orchestrator.finalize import generator_artifact

    client = MlflowClient(tracking_uri)
    found = []
    for family in GAN_FAMILIES:
        try:
            found.append(client.get_model_version_by_alias(registered_model_name(family), CHAMPION))
        except MlflowException:
            continue
    if not found:
        return None
    version = max(found, key=lambda v: v.creation_timestamp)
    spec = f"{version.name}@{CHAMPION}"
    return f"models:/{spec} (v{version.version})", generator_artifact(spec, tracking_uri)


def run_classifier_study(cfg) -> dict:
    """Run the study for `cfg` (a SearchConfig with experiment == "classifier")."""
    from mlflow.tracking import MlflowClient

    from orchestrator.study import resolve_strategies, run_study, study_markdown
    from trainables.classifier.config import GAN_STRATEGIES

    strategies = resolve_strategies(cfg.strategies)
    budget, base = study_settings(cfg)
    generator = None
    if any(s in GAN_STRATEGIES for s in strategies):
        generator = _generator_for_study(cfg)
    client = MlflowClient(cfg.mlflow_uri)
    parent = _study_parent(client, cfg, strategies, {**budget, **{f"base.{k}": v
                                                                  for k, v in base.items()}},
                           generator)
    run_dir = Path(tempfile.mkdtemp(prefix="cxr-study-"))
    table = run_study(
        cfg.data, strategies, str(generator[1]) if generator else None,
        resolution=budget["resolution"], epochs=budget["epochs"], seeds=budget["seeds"],
        model=budget["model"], run_dir=run_dir, n_boot=budget["n_boot"], base=base,
        callback=_mlflow_callback(client, cfg.name, parent))
    markdown = study_markdown(table)
    for name, logged in (("study.md", "table.md"), ("study.csv", "table.csv"),
                         ("study_runs.csv", "runs.csv")):
        _log_as(client, parent, run_dir / name, "study", logged)
    client.set_tag(parent, "mlflow.note.content", markdown)
    best = table.sort_values("macro_f1", ascending=False).iloc[0]
    client.set_tag(parent, "cxr.best_strategy", str(best["strategy"]))
    client.set_terminated(parent, "FINISHED")
    print(f"\n=== classifier study {cfg.name} ===\n{markdown}")
    print(f"look: mlflow ui --backend-store-uri {cfg.mlflow_uri} -> experiment '{cfg.name}'")
    return {"search": cfg.name, "table": table, "markdown": markdown, "parent_run_id": parent}


def study_settings(cfg) -> tuple[dict, dict]:
    """(budget, ClassifierConfig fields) of the study, from the budget preset, --max-epochs,
    --no-pretrained and --set KEY=VALUE; validated here, before anything trains."""
    from orchestrator.driver import ConfigError, parse_overrides
    from trainables.classifier.config import ClassifierConfig

    budget = {"model": "s0_cnn", **(SMOKE_STUDY if cfg.smoke else FULL_STUDY)}
    if cfg.max_epochs:
        budget["epochs"] = cfg.max_epochs
    overrides = parse_overrides(cfg.overrides)
    if "seeds" in overrides:  # --set seeds=0,1,2 (a YAML scalar "0,1,2" or one int)
        budget["seeds"] = tuple(int(s) for s in str(overrides.pop("seeds")).split(","))
    for key in ("resolution", "epochs", "model", "n_boot"):  # run_study's own arguments
        if key in overrides:
            budget[key] = overrides.pop(key)
    base = {"duplicates": cfg.duplicates, "channels": budget["channels"],
            **({"pretrained": False} if cfg.no_pretrained else {}), **overrides}
    try:
        ClassifierConfig.from_dict({**base, "source": cfg.data, "resolution": budget["resolution"],
                                    "epochs": budget["epochs"], "model": budget["model"],
                                    "n_boot": budget["n_boot"]})
    except (ValueError, TypeError) as exc:
        raise ConfigError(f"bad classifier study configuration: {exc}") from exc
    return budget, base


def _generator_for_study(cfg):
    found = champion_checkpoint(cfg.mlflow_uri)
    if found is not None:
        print(f"GAN strategies use {found[0]}")
        return found
    print("No registered generator (alias 'champion') in MLflow at "
          f"{cfg.mlflow_uri}: training one first with the AC-GAN search "
          f"(`python -m orchestrator.search acgan{' --smoke' if cfg.smoke else ''} --data "
          f"{cfg.data}`).")
    from orchestrator.driver import run_search
    from orchestrator.search import SearchConfig

    gan_cfg = SearchConfig(experiment="acgan", preset="s0", data=cfg.data, smoke=cfg.smoke,
                           num_samples=4 if cfg.smoke else 20, storage=cfg.storage,
                           mlflow_uri=cfg.mlflow_uri, name=f"{cfg.name}-gan", seed=cfg.seed,
                           duplicates=cfg.duplicates)
    run_search(gan_cfg)
    found = champion_checkpoint(cfg.mlflow_uri)
    if found is None:
        raise RuntimeError("the GAN search registered no generator; see its summary above")
    return found


def _study_parent(client, cfg, strategies, budget, generator) -> str:
    experiment = client.get_experiment_by_name(cfg.name)
    experiment_id = experiment.experiment_id if experiment else client.create_experiment(cfg.name)
    run = client.create_run(experiment_id, run_name=cfg.name, tags={
        tracking.ROLE: "study", "cxr.experiment": "classifier",
        "cxr.code_version": tracking.code_version()})
    params = {"data": cfg.data, "strategies": ",".join(strategies), "smoke": cfg.smoke,
              "generator": generator[0] if generator else "none",
              **{k: v for k, v in budget.items()}}
    for key, value in params.items():
        client.log_param(run.info.run_id, key, str(value))
    return run.info.run_id


def _mlflow_callback(client, search_name: str, parent: str):
    experiment_id = client.get_experiment_by_name(search_name).experiment_id

    def callback(kind: str, payload: dict) -> None:
        if kind != "run":
            return
        row, config = payload["metrics"], payload["config"]
        run = client.create_run(experiment_id,
                                run_name=f"{config['strategy']}-seed{config['seed']}",
                                tags={tracking.ROLE: "study_run", tracking.PARENT: parent,
                                      "strategy": config["strategy"],
                                      # what the model really started from, not the flag:
                                      # a custom CNN never loads ImageNet weights
                                      "pretrained": str(bool(row.get("pretrained")))})
        run_id = run.info.run_id
        for key, value in tracking.flatten("", config).items():
            client.log_param(run_id, key, tracking._short(value))
        for epoch, history in enumerate(payload["history"]):
            for key, value in history.items():
                if isinstance(value, (int, float)) and not isinstance(value, bool):
                    client.log_metric(run_id, key, float(value), step=epoch)
        for key, value in row.items():
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                client.log_metric(run_id, f"test_{key}" if not key.startswith("test") else key,
                                  float(value))
        run_dir = Path(row["run_dir"])
        for name, folder in (("confusion_matrix.png", "confusion"), ("gradcam.png", "gradcam"),
                             ("classification_report.txt", "report"),
                             ("test_metrics.json", "report")):
            if (run_dir / name).exists():
                client.log_artifact(run_id, str(run_dir / name), artifact_path=folder)
                suffix = Path(name).suffix
                _log_as(client, parent, run_dir / name, folder,
                        f"{config['strategy']}-seed{config['seed']}{suffix}")
        client.set_terminated(run_id, "FINISHED")

    return callback


def _log_as(client, run_id: str, path: Path, folder: str, name: str) -> None:
    """Log `path` under `folder/name` (MLflow keeps file names, so copy under the new one)."""
    with tempfile.TemporaryDirectory() as tmp:
        target = Path(tmp) / name
        target.write_bytes(Path(path).read_bytes())
        client.log_artifact(run_id, str(target), artifact_path=folder)
