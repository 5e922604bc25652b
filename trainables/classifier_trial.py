"""A classifier Tune trial: `ClassifierConfig` from (search settings, searched parameters)."""
from __future__ import annotations

from trainables.context import RunContext

SMOKE = {"resolution": 32, "channels": 1, "epochs": 3, "n_boot": 100}


def classifier_settings(cfg) -> dict:
    """The fixed part of a classifier trial (validated now, before any trial starts)."""
    from trainables.classifier.config import ClassifierConfig

    from orchestrator.driver import ConfigError, parse_overrides

    base = {"source": cfg.data, "duplicates": cfg.duplicates, "seed": cfg.seed,
            "evaluate_test": False}  # a search selects on validation only
    if cfg.smoke:
        base.update(SMOKE)
    if cfg.max_epochs:
        base["epochs"] = cfg.max_epochs
    if cfg.no_pretrained:
        base["pretrained"] = False
    base.update(parse_overrides(cfg.overrides))
    try:
        ClassifierConfig.from_dict(base)
    except ValueError as exc:
        raise ConfigError(f"bad classifier configuration: {exc}") from exc
    return {"classifier": base, "epochs": base.get("epochs", 50)}


def run_classifier_trial(config: dict, settings: dict, ctx: RunContext) -> list[dict]:
    from trainables.classifier import train_classifier
    from trainables.classifier.config import ClassifierConfig

    cfg = ClassifierConfig.from_dict({**settings["classifier"], **config})
    return train_classifier(cfg, ctx)
