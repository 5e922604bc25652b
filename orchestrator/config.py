"""What one search is: `SearchConfig`, its defaults and budgets, `--set` parsing, validation.

Everything here is plain data and checks; nothing starts Ray, MLflow or reads images.
"""
from __future__ import annotations

import re
import sys
from dataclasses import dataclass, field
from datetime import datetime
from typing import Optional

import yaml

# Selection never picks an epoch whose memorised_share is above this (ranking's limit too;
# importing ranking here would load pandas and the metrics for every --help).
MAX_MEMORISED = 0.05

DEFAULT_MLFLOW_URI = "sqlite:///mlruns/mlflow.db"
DEFAULT_STORAGE = "ray_results"

# Selection never picks an epoch whose diversity_ratio is below this (orchestrator.ranking);
# the smoke budget's 48 fakes at 32 px read low for every generator, so its limit is lower.
MIN_DIVERSITY = {"full": 0.4, "smoke": 0.25}

# CPU smoke budget: what a 2-core laptop finishes in minutes.
SMOKE_GAN = {"resolution": 32, "channels": 1, "width": 0.125, "epochs": 3, "eval_every": 1,
             "steps_per_epoch": 20}
SMOKE_EVAL = {"metrics": ("fid", "kid", "cas", "visual", "memorisation"), "n_fake": 48}
FULL_EVAL = {"metrics": ("fid", "kid", "intra_fid", "is", "cas", "visual", "memorisation",
                         "memorisation_inception")}
SMOKE_CLASSIFIER = {"resolution": 32, "channels": 1, "epochs": 3, "n_boot": 100}


class ConfigError(RuntimeError):
    """A bad setting found before any trial started."""


@dataclass(frozen=True)
class SearchConfig:
    """Everything one search needs; built from the command line, validated before Ray starts."""

    experiment: str
    preset: str
    data: str = "default"
    num_samples: int = 20
    max_epochs: Optional[int] = None  # None: the preset's epochs
    max_concurrent: Optional[int] = None  # None: derived from the cluster's GPUs/CPUs
    workers_per_trial: int = 1
    gpus_per_worker: Optional[float] = None  # None: 1 when the cluster has GPUs, else 0
    gpu_wait: float = 0.0  # seconds to wait for an autoscaling cluster to bring up GPU nodes
    searcher: str = "optuna"
    scheduler: str = "asha"
    objective: Optional[str] = None
    storage: str = DEFAULT_STORAGE
    mlflow_uri: str = DEFAULT_MLFLOW_URI
    name: Optional[str] = None
    resume: bool = False
    smoke: bool = False
    seed: int = 0
    policy: str = "staged"
    execution: str = "auto"  # auto | function | train
    eval_metrics: Optional[str] = None
    eval_every: Optional[int] = None
    duplicates: str = "drop"  # byte-identical images under two names: drop | error | keep
    skip_bad: bool = False  # skip unreadable images (listed in skipped.csv), else an error
    tune: bool = False  # classifier: Tune search (`search classifier` without it: the study)
    no_pretrained: bool = False  # classifier: VGG16/ResNet50 from scratch, no ImageNet weights
    keep_epochs: int = 5  # per trial: generator weights of this many best epochs are kept
    asha_grace: float = 0.25  # ASHA's grace period, as a share of the epochs
    force: bool = False  # --resume even if the settings or the data differ from the first run
    min_diversity: Optional[float] = None  # collapse limit for selection; None: by budget
    max_memorised: float = MAX_MEMORISED  # copy limit for selection (memorised_share)
    overrides: tuple = field(default_factory=tuple)  # ("key=value", ...) for the trial config

    def diversity_limit(self) -> float:
        if self.min_diversity is not None:
            return self.min_diversity
        return MIN_DIVERSITY["smoke" if self.smoke else "full"]

    def objectives(self) -> list[tuple[str, str]]:
        from orchestrator import registry  # loads the model code: not at import (fast --help)
        return registry.parse_objectives(self.objective, self.experiment)

    @property
    def is_gan(self) -> bool:
        from orchestrator import registry
        return self.experiment in registry.GAN_EXPERIMENTS


def validate(cfg: SearchConfig) -> None:
    """Reject bad values before anything starts (Ray, MLflow, data)."""
    positive = {"--num-samples": cfg.num_samples, "--max-epochs": cfg.max_epochs,
                "--max-concurrent": cfg.max_concurrent,
                "--workers-per-trial": cfg.workers_per_trial, "--eval-every": cfg.eval_every,
                "--keep-epochs": cfg.keep_epochs}
    for flag, value in positive.items():
        if value is not None and value < 1:
            raise ValueError(f"{flag} must be >= 1, got {value}")
    if cfg.gpus_per_worker is not None and cfg.gpus_per_worker < 0:
        raise ValueError(f"--gpus-per-worker must be >= 0, got {cfg.gpus_per_worker}")
    objectives = cfg.objectives()
    if cfg.scheduler == "pbt" and len(objectives) > 1:
        raise ValueError("--scheduler pbt optimises one objective; give a single --objective")
    if not 0 <= cfg.max_memorised <= 1:
        raise ValueError(f"--max-memorised must be in [0, 1], got {cfg.max_memorised}")
    if cfg.min_diversity is not None and not 0 <= cfg.min_diversity < 1:
        raise ValueError(f"--min-diversity must be in [0, 1), got {cfg.min_diversity}")
    if not 0 < cfg.asha_grace <= 1:
        raise ValueError(f"--asha-grace is a share of the epochs in (0, 1], got {cfg.asha_grace}")
    if cfg.gpu_wait < 0:
        raise ValueError(f"--gpu-wait must be >= 0 seconds, got {cfg.gpu_wait}")
    if cfg.scheduler == "pbt" and cfg.searcher == "optuna":
        # Ray cannot combine OptunaSearch with PBT; PBT explores by itself from random starts.
        print("--scheduler pbt: trials start from seeded random points and PBT mutates "
              "them; Optuna is not used (Ray cannot combine OptunaSearch with PBT)",
              file=sys.stderr)
    if cfg.no_pretrained and cfg.experiment != "classifier":
        raise ValueError("--no-pretrained applies to the classifier experiment only")
    for item in cfg.overrides:
        if "=" not in item:
            raise ValueError(f"--set {item!r}: expected KEY=VALUE")
    storage = cfg.storage
    if "://" in storage and not storage.startswith(("s3://", "gs://", "file://", "abfs://")):
        raise ValueError(f"--storage {storage!r}: use a local path, s3://… or gs://…")


def default_name(cfg: SearchConfig) -> str:
    return f"{cfg.experiment}-{cfg.preset}-{datetime.now():%Y%m%d-%H%M%S}"


_NUMBER = re.compile(r"[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?")


def parse_overrides(items) -> dict:
    """`("width=0.25", "amp=false", "lr_g=1e-4")` -> {"width": 0.25, "amp": False,
    "lr_g": 0.0001} (YAML scalars; a number YAML 1.1 reads as text, such as 1e-4 without a
    dot, is a number)."""
    out = {}
    for item in items:
        key, _, value = item.partition("=")
        parsed = yaml.safe_load(value)
        if isinstance(parsed, str) and _NUMBER.fullmatch(parsed.strip()):
            parsed = float(parsed)
        out[key.strip()] = parsed
    return out
