"""One trial of a search, without Ray: the fixed settings (`TrialSettings`) + the searched
parameters -> a config -> the training loop.

`trainables.ray_glue` runs `run_trial` inside a Tune trial or a Ray Train worker; tests,
benchmarks and notebooks call it directly with a `standalone_context`.
"""
from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Optional

from trainables.classifier import train_classifier
from trainables.classifier.config import ClassifierConfig
from trainables.context import RunContext
from trainables.data.selection import load_selection_sets
from trainables.gan import GANConfig, train_gan
from trainables.gan.build import trained_classes
from trainables.metrics.evaluator import GanEvaluator


@dataclass(frozen=True)
class Placement:
    """Where and how a trial runs (decided by the orchestrator against the cluster).

    execution: "function" (the loop in the Tune trial process) or "train" (a Ray Train
    TorchTrainer per trial, DDP over `workers_per_trial` workers)."""

    execution: str = "function"
    workers_per_trial: int = 1
    use_gpu: bool = False
    gpus_per_worker: float = 0.0
    cpus_per_worker: float = 1.0
    max_concurrent: Optional[int] = None


@dataclass(frozen=True)
class TrialSettings:
    """The fixed part of every trial of one search (bound with `tune.with_parameters`).

    base: config fields before the searched ones (`GANConfig` for a GAN experiment,
    `ClassifierConfig` for "classifier"); eval: the GAN evaluator's options (metrics, n_fake).
    """

    experiment: str
    data: str
    search_name: str
    storage: str
    base: Mapping[str, Any]
    seed: int = 0
    data_options: Mapping[str, Any] = field(default_factory=dict)
    eval: Mapping[str, Any] = field(default_factory=dict)
    data_fingerprint: str = ""
    classes: tuple = ()
    placement: Placement = field(default_factory=Placement)

    @property
    def is_gan(self) -> bool:
        return self.experiment != "classifier"

    @property
    def epochs(self) -> int:
        default = GANConfig.epochs if self.is_gan else ClassifierConfig.epochs
        return int(self.base.get("epochs", default))

    @property
    def resolution_channels(self) -> tuple[int, int]:
        return int(self.base.get("resolution", 64)), int(self.base.get("channels", 1))


def run_trial(config: dict, settings: TrialSettings, ctx: RunContext) -> list[dict]:
    """Build the experiment's config from (settings, searched config) and train it."""
    if settings.is_gan:
        return run_gan_trial(config, settings, ctx)
    return run_classifier_trial(config, settings, ctx)


def run_classifier_trial(config: dict, settings: TrialSettings, ctx: RunContext) -> list[dict]:
    cfg = ClassifierConfig.from_dict({**settings.base, **config})
    return train_classifier(cfg, ctx)


def load_selection(settings: TrialSettings, resolution: int, channels: int):
    """(fit set, validation set) of the search's data: never the held-out test split
    (`trainables.data.selection`: the same rule as the classifier study's)."""
    return load_selection_sets(settings.data, resolution=resolution, channels=channels,
                               seed=settings.seed, **settings.data_options)


def run_gan_trial(config: dict, settings: TrialSettings, ctx: RunContext) -> list[dict]:
    cfg = GANConfig.from_dict({**settings.base, **config})
    train, val = load_selection(settings, cfg.resolution, cfg.channels)
    evaluator = build_gan_evaluator(cfg, settings, ctx, train, val) if ctx.is_main else None
    if evaluator is not None:
        ctx = with_protocol(ctx, evaluator)
    return train_gan(cfg, train, ctx, evaluate=evaluator)


def with_protocol(ctx: RunContext, evaluator) -> RunContext:
    """Reports carry the evaluation protocol (extractor, weights hash, dims, N, resize, and
    why a metric was skipped) as a JSON string, so it is recorded beside every score."""
    report = ctx.report

    def report_with_protocol(metrics: dict, epoch_dir: Optional[Path]) -> None:
        protocol = getattr(evaluator, "protocol", None)
        if protocol:
            metrics = {**metrics, "eval_protocol": json.dumps(protocol, sort_keys=True,
                                                              default=str)}
        report(metrics, epoch_dir)

    return dataclasses.replace(ctx, report=report_with_protocol)


def build_gan_evaluator(cfg: GANConfig, settings: TrialSettings, ctx: RunContext, train, val):
    """The per-epoch evaluator on the real *validation* images (never the test split)."""
    options = dict(settings.eval)
    metrics = tuple(options.pop("metrics", ()))
    if not metrics:
        return None
    classes = trained_classes(cfg, train.classes, train.labels)
    return GanEvaluator(val, metrics=metrics, latent_dim=cfg.latent_dim,
                        latent_dist=cfg.latent_dist, classes=classes, device=ctx.device,
                        seed=cfg.seed, real_train=train, **options)
