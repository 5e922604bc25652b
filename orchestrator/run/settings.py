"""SearchConfig -> the fixed settings of every trial (`trainables.trial.TrialSettings`):
presets, smoke budgets, `--set` overrides, validated as the trial's own config before
anything starts.  (The study's budget is `orchestrator.study.config`.)"""
from __future__ import annotations

from orchestrator import registry
from orchestrator.config import (DEFAULT_SCHEDULE, FULL_EVAL, SCHEDULE_KEYS, SMOKE_CLASSIFIER, SMOKE_EVAL,
                                 SMOKE_GAN, ConfigError, SearchConfig, parse_overrides)
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
        data_options={"duplicates": cfg.duplicates, "skip_bad": cfg.skip_bad,
                      **cfg.class_options()},
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
        # --max-images / --eval-every-images are the GANConfig keys `--set` also reaches: the
        # trial stops on them, the tuner's ASHA counts images_seen when max_images is set.
        if cfg.max_images:
            base["max_images"] = cfg.max_images
        if cfg.eval_every_images:
            base["eval_every_images"] = cfg.eval_every_images
        overrides = parse_overrides(cfg.overrides)
        if not (cfg.smoke or cfg.eval_every or cfg.eval_every_images
                or set(SCHEDULE_KEYS) & set(overrides)):
            base.update(DEFAULT_SCHEDULE)
        if cfg.scheduler == "pbt":  # a full state at each exploit point (tuner's interval)
            base["state_every"] = max(1, int(base.get("epochs", 100)) // 4)
        base.update(overrides)
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
