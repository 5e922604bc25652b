"""One trial of a search, without Ray: the fixed settings (`TrialSettings`) + the searched
parameters -> a config -> the training loop.

`trainables.ray_glue` runs `run_trial` inside a Tune trial or a Ray Train worker; tests,
benchmarks and notebooks call it directly with a `standalone_context`.
"""
from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Optional

from trainables import gpu_memory
from trainables.classifier import train_classifier
from trainables.classifier.config import ClassifierConfig
from trainables.context import RunContext
from trainables.data import ImageSet, bundle
from trainables.data.manifest import default_cache_dir
from trainables.data.selection import load_selection_sets
from trainables.gan import GANConfig, train_gan
from trainables.gan.build import trained_classes
from trainables.metrics.evaluator import GanEvaluator


@dataclass(frozen=True)
class Placement:
    """Where and how a trial runs (decided by the orchestrator against the cluster).

    execution: "function" (the loop in the Tune trial process) or "train" (a Ray Train
    TorchTrainer per trial, DDP over `workers_per_trial` workers).  driver_resource: a custom
    resource only the head node has (cluster.yaml's `cxr_driver`): a Train trial's actor,
    which only coordinates, asks for a sliver of it, so it lives on the head, which never goes
    away, instead of on a GPU node the autoscaler may remove."""

    execution: str = "function"
    workers_per_trial: int = 1
    use_gpu: bool = False
    gpus_per_worker: float = 0.0
    cpus_per_worker: float = 1.0
    max_concurrent: Optional[int] = None
    driver_resource: str = ""
    trials_per_gpu: int = 1  # trials (DDP: workers) sharing one GPU; gpus_per_worker is 1/N

    @property
    def shares_gpu(self) -> bool:
        """Whether other trials may run on this trial's GPU (then it checks free memory)."""
        return self.use_gpu and self.gpus_per_worker < 1


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
    objectives: tuple[tuple[str, str], ...] = ()  # ((metric, "min" | "max"), ...), first leads
    keep_epochs: int = 5  # generator weights of this many best epochs are kept per trial
    data_bundle: str = ""  # the fit/val images published under the storage (data.bundle)

    @property
    def is_gan(self) -> bool:
        return self.experiment != "classifier"

    @property
    def epochs(self) -> int:
        default = GANConfig.epochs if self.is_gan else ClassifierConfig.epochs
        return int(self.base.get("epochs", default))

    @property
    def resolution_channels(self) -> tuple[int, int]:
        # The trial's own config defaults (they differ: a GAN is grey, a classifier RGB).
        defaults = GANConfig if self.is_gan else ClassifierConfig
        return (int(self.base.get("resolution", defaults.resolution)),
                int(self.base.get("channels", defaults.channels)))


def run_trial(config: dict, settings: TrialSettings, ctx: RunContext) -> list[dict]:
    """Build the experiment's config from (settings, searched config) and train it; every
    report carries the search scores (`SearchScores`)."""
    ctx = with_search_scores(ctx, SearchScores.resume(settings.objectives, ctx.resume_dir))
    if settings.is_gan:
        return run_gan_trial(config, settings, ctx)
    return run_classifier_trial(config, settings, ctx)


def run_classifier_trial(config: dict, settings: TrialSettings, ctx: RunContext) -> list[dict]:
    cfg = ClassifierConfig.from_dict({**settings.base, **config})
    published = (load_selection(settings, cfg.resolution, cfg.channels)
                 if settings.data_bundle else None)
    return train_classifier(cfg, ctx, published=published)


def load_selection(settings: TrialSettings, resolution: int, channels: int):
    """(fit set, validation set) of the search's data: never the held-out test split
    (`trainables.data.selection`: the same rule as the classifier study's).  A search's
    trials read the bundle its driver published under the storage (`data_bundle`), on any
    node; without one (the driver itself, before publishing) the data source is read."""
    if settings.data_bundle:
        fit, val = bundle.load(settings.data_bundle, default_cache_dir(), ImageSet)
        bundle.check_shape(fit, resolution, channels, settings.data_bundle)
        return fit, val
    return load_selection_sets(settings.data, resolution=resolution, channels=channels,
                               seed=settings.seed, **settings.data_options)


def run_gan_trial(config: dict, settings: TrialSettings, ctx: RunContext) -> list[dict]:
    cfg = GANConfig.from_dict({**settings.base, **config})
    train, val = load_selection(settings, cfg.resolution, cfg.channels)
    if ctx.device.type == "cuda" and settings.placement.shares_gpu:
        # Ray's fractional GPUs share memory: fail this trial alone, before it allocates,
        # rather than an OOM in its neighbours.
        gpu_memory.require(ctx.device, gpu_memory.trial_estimate_mib(cfg, len(train.classes)))
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


# ------------------------------------------------------------------------------ scores
KEEP_SCORE = "keep_score"
SCORES_FILE = "search_scores.json"


def best_key(metric: str) -> str:
    """The result key Tune, ASHA and Optuna read for an objective: its best value so far."""
    return f"best_{metric}"


def _finite(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


@dataclass
class SearchScores:
    """The numbers Tune, ASHA and Optuna read, present in EVERY report of a trial (NaN until
    the objective is first evaluated), so that an epoch without evaluation (`eval_every`, a
    skipped metric, a diverged epoch) never lacks the search's metric:

    - `best_<objective>`: the objectives' values at the trial's best epoch so far (best by
      the first objective).  ASHA compares trials on it at its rungs, and Optuna is told the
      last one: the trial's best epoch, not its last;
    - `keep_score`: this epoch's first objective (NaN when not evaluated): Tune keeps the
      checkpoints of the K best epochs by it.

    Saved beside each checkpoint (`search_scores.json`) so a resumed trial keeps its best."""

    objectives: tuple[tuple[str, str], ...]
    best: dict[str, float] = field(default_factory=dict)

    @classmethod
    def resume(cls, objectives, resume_dir: Optional[Path]) -> "SearchScores":
        path = Path(resume_dir) / SCORES_FILE if resume_dir is not None else None
        best = json.loads(path.read_text()) if path is not None and path.is_file() else {}
        return cls(tuple(tuple(o) for o in objectives), best)

    def annotate(self, metrics: dict) -> dict:
        """`metrics` with the search scores added (the best so far updated first)."""
        if not self.objectives:
            return dict(metrics)
        lead, mode = self.objectives[0]
        value = metrics.get(lead)
        if _finite(value) and (lead not in self.best or
                               (value < self.best[lead] if mode == "min" else value > self.best[lead])):
            self.best = {name: float(metrics[name]) for name, _ in self.objectives
                         if _finite(metrics.get(name))}
        out = {**metrics, KEEP_SCORE: float(value) if _finite(value) else math.nan}
        out.update({best_key(name): self.best.get(name, math.nan) for name, _ in self.objectives})
        return out

    def save(self, epoch_dir: Path) -> None:
        (Path(epoch_dir) / SCORES_FILE).write_text(json.dumps(self.best))


def with_search_scores(ctx: RunContext, scores: SearchScores) -> RunContext:
    """A context whose reports carry the search scores (and save them with the checkpoint)."""
    report = ctx.report

    def report_with_scores(metrics: dict, epoch_dir: Optional[Path]) -> None:
        metrics = scores.annotate(metrics)
        if epoch_dir is not None:
            scores.save(epoch_dir)
        report(metrics, epoch_dir)

    return dataclasses.replace(ctx, report=report_with_scores)
