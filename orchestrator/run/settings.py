"""SearchConfig -> the fixed settings of every trial (`trainables.trial.TrialSettings`) and
the classifier study's budget: presets, smoke budgets, `--set` overrides, validated as the
trial's own config before anything starts."""
from __future__ import annotations

from orchestrator import registry
from orchestrator.config import (FULL_EVAL, FULL_STUDY, SMOKE_CLASSIFIER, SMOKE_EVAL,
                                 SMOKE_GAN, SMOKE_STUDY, ConfigError, SearchConfig,
                                 parse_overrides)
from trainables.classifier.config import ClassifierConfig
from trainables.gan import GANConfig, preset
from trainables.gan.families import FAMILIES
from trainables.trial import TrialSettings


def trial_settings(cfg: SearchConfig, storage: str) -> TrialSettings:
    """The fixed part of every trial's config (bound with tune.with_parameters)."""
    base = gan_base_config(cfg) if cfg.is_gan else classifier_base_config(cfg)
    return TrialSettings(
        experiment=cfg.experiment, data=cfg.data, search_name=cfg.name, storage=storage,
        base=base, seed=cfg.seed,
        data_options={"duplicates": cfg.duplicates, "skip_bad": cfg.skip_bad},
        eval=eval_settings(cfg) if cfg.is_gan else {},
        objectives=tuple(cfg.objectives()), keep_epochs=cfg.keep_epochs)


def gan_base_config(cfg: SearchConfig) -> dict:
    """Preset values (+ the family's defaults, the smoke budget, --set overrides), validated
    as a GANConfig, together with the search space's first points."""
    try:
        base = {**preset(cfg.preset, cfg.experiment), **FAMILIES[cfg.experiment].defaults,
                "family": cfg.experiment, "seed": cfg.seed}
        if cfg.smoke:
            base.update(SMOKE_GAN)
        if cfg.max_epochs:
            base["epochs"] = cfg.max_epochs
        if cfg.eval_every:
            base["eval_every"] = cfg.eval_every
        base.update(parse_overrides(cfg.overrides))
        GANConfig.from_dict(base)
        space = registry.experiment_space(cfg.experiment)
        for point in space.first_points(base, base.get("epochs", 100)):
            GANConfig.from_dict({**base, **space.to_config(point)})
    except (ValueError, TypeError) as exc:
        raise ConfigError(f"bad trial configuration: {exc}") from exc
    return base


def eval_settings(cfg: SearchConfig) -> dict:
    out = dict(SMOKE_EVAL if cfg.smoke else FULL_EVAL)
    if cfg.eval_metrics is not None:
        out["metrics"] = tuple(m.strip() for m in cfg.eval_metrics.split(",") if m.strip())
    return out


def classifier_base_config(cfg: SearchConfig) -> dict:
    """The fixed part of a classifier Tune trial, validated as a ClassifierConfig."""
    base = {"source": cfg.data, "duplicates": cfg.duplicates, "seed": cfg.seed,
            "evaluate_test": False}  # a search selects on validation only
    if cfg.smoke:
        base.update(SMOKE_CLASSIFIER)
    if cfg.max_epochs:
        base["epochs"] = cfg.max_epochs
    if cfg.no_pretrained:
        base["pretrained"] = False
    base.update(parse_overrides(cfg.overrides))
    try:
        ClassifierConfig.from_dict(base)
    except (ValueError, TypeError) as exc:
        raise ConfigError(f"bad classifier configuration: {exc}") from exc
    return base


def study_settings(cfg: SearchConfig) -> tuple[dict, dict]:
    """(budget, ClassifierConfig fields) of the study, from the budget preset, --max-epochs,
    --no-pretrained and --set KEY=VALUE; validated here, before anything trains."""
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
