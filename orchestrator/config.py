"""What one search is: `SearchConfig`, its defaults and budgets, `--set` parsing, validation.

Everything here is plain data and checks; nothing starts Ray, MLflow or reads images.
"""
from __future__ import annotations

import re
import sys
from collections.abc import Sequence
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
# CAS's classifiers (and the real-image reference) train for at least 100 steps instead of
# 200: on covid19-image-dataset at 32 px the reference scored the same at both (3 seeds) in
# half the time, and CAS is about half of a smoke epoch's evaluation.
SMOKE_EVAL = {"metrics": ("fid", "kid", "cas", "visual", "memorisation"), "n_fake": 48,
              "cas_min_steps": 100}
FULL_EVAL = {"metrics": ("fid", "kid", "intra_fid", "is", "cas", "visual", "memorisation",
                         "memorisation_inception")}
# A full GAN search evaluates each time another 8,192 training images were seen (and at a
# trial's last epoch) unless --eval-every / --eval-every-images says otherwise: on a 1k-image
# set that is every ~8 epochs instead of every epoch (evaluation cost 46 % of a CPU trial's
# time, issue 22), on a 30k-image set still every epoch.  StyleGAN and BigGAN evaluate every
# few hundred thousand images; this keeps an epoch-level choice at small data sizes.
EVAL_EVERY_IMAGES = 8192
# ... and at least 4 times over a trial's budget: ASHA's first rung is a quarter of it
# (`asha_grace_period`), so a trial of few epochs or a small batch (8,192 images can be more
# than its whole budget) still has evaluated epochs to rank and a value at that rung.
DEFAULT_SCHEDULE = {"eval_every_images": EVAL_EVERY_IMAGES, "min_evals": 4}
SCHEDULE_KEYS = ("eval_every", "eval_every_images", "min_evals")  # a user's choice of any wins
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
    max_images: Optional[int] = None  # training images per trial (GANConfig.max_images)
    eval_every_images: Optional[int] = None  # evaluate each time this many more were seen
    max_concurrent: Optional[int] = None  # None: derived from the cluster's GPUs/CPUs
    workers_per_trial: int = 1
    gpus_per_worker: Optional[float] = None  # None: 1 / trials_per_gpu with GPUs, else 0
    trials_per_gpu: str = "auto"  # "auto" or a whole number: trials sharing one GPU
    gpu_wait: float = 0.0  # seconds to wait for an autoscaling cluster to bring up GPU nodes
    searcher: str = "optuna"
    scheduler: str = "asha"
    objective: Optional[str] = None
    storage: str = DEFAULT_STORAGE
    mlflow_uri: str = DEFAULT_MLFLOW_URI
    artifact_root: Optional[str] = None  # a new experiment's artefacts (default: beside sqlite)
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
    exclude_classes: Optional[str] = None  # "A,B": classes left out of the data
    label_map: tuple = field(default_factory=tuple)  # ("OLD=NEW", "A=B,C=D"): classes renamed
    classes: Optional[str] = None  # "A,B,C": class names accepted as they are
    tune: bool = False  # classifier: Tune search (`search classifier` without it: the study)
    no_pretrained: bool = False  # classifier: VGG16/ResNet50 from scratch, no ImageNet weights
    keep_epochs: int = 5  # per trial: generator weights of this many best epochs are kept
    asha_grace: float = 0.25  # ASHA's grace period, as a share of the epochs
    force: bool = False  # --resume even if the settings or the data differ from the first run
    min_diversity: Optional[float] = None  # collapse limit for selection; None: by budget
    max_memorised: float = MAX_MEMORISED  # copy limit for selection (memorised_share)
    overrides: tuple = field(default_factory=tuple)  # ("key=value", ...) for the trial config

    def class_options(self) -> dict:
        """--exclude-classes, --label-map and --classes as the data loader's options."""
        return class_options(self.exclude_classes, self.label_map, self.classes)

    def diversity_limit(self) -> float:
        if self.min_diversity is not None:
            return self.min_diversity
        return MIN_DIVERSITY["smoke" if self.smoke else "full"]

    def objectives(self) -> list[tuple[str, str]]:
        from orchestrator import registry  # loads the model code: not at import (fast --help)
        return registry.parse_objectives(self.objective, self.experiment)

    def packing(self) -> Optional[int]:
        """--trials-per-gpu as a number; None for auto (decided against the GPU's memory)."""
        return None if self.trials_per_gpu == "auto" else int(self.trials_per_gpu)

    @property
    def is_gan(self) -> bool:
        from orchestrator import registry
        return self.experiment in registry.GAN_EXPERIMENTS


def validate(cfg: SearchConfig) -> None:
    """Reject bad values before anything starts (Ray, MLflow, data)."""
    positive = {"--num-samples": cfg.num_samples, "--max-epochs": cfg.max_epochs,
                "--max-concurrent": cfg.max_concurrent,
                "--workers-per-trial": cfg.workers_per_trial, "--eval-every": cfg.eval_every,
                "--keep-epochs": cfg.keep_epochs, "--max-images": cfg.max_images,
                "--eval-every-images": cfg.eval_every_images}
    for flag, value in positive.items():
        if value is not None and value < 1:
            raise ValueError(f"{flag} must be >= 1, got {value}")
    _validate_budget_in_images(cfg)
    _validate_packing(cfg)
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
    _validate_eval_metrics(cfg)
    for item in cfg.overrides:
        if "=" not in item:
            raise ValueError(f"--set {item!r}: expected KEY=VALUE")
    cfg.class_options()
    storage = cfg.storage
    if "://" in storage and not storage.startswith(("s3://", "gs://", "file://", "abfs://")):
        raise ValueError(f"--storage {storage!r}: use a local path, s3://… or gs://…")


def _validate_budget_in_images(cfg: SearchConfig) -> None:
    given = [flag for flag, value in (("--max-images", cfg.max_images),
                                      ("--eval-every-images", cfg.eval_every_images)) if value]
    if given and cfg.experiment == "classifier":
        raise ValueError(f"{given[0]} applies to the GAN experiments only")
    if cfg.eval_every and cfg.eval_every_images:
        raise ValueError("give --eval-every (epochs) or --eval-every-images, not both")


def _validate_eval_metrics(cfg: SearchConfig) -> None:
    """An unknown --eval-metrics name is refused here, not by every trial after Ray started."""
    if cfg.eval_metrics is None:
        return
    from trainables.metrics.registry import EVALUATIONS  # pure data, no torch

    unknown = [m.strip() for m in cfg.eval_metrics.split(",")
               if m.strip() and m.strip() not in EVALUATIONS]
    if unknown:
        raise ValueError(f"--eval-metrics: unknown {', '.join(map(repr, unknown))}; choose "
                         f"from {','.join(EVALUATIONS)}")


def _validate_packing(cfg: SearchConfig) -> None:
    value = str(cfg.trials_per_gpu)
    if value != "auto" and not (value.isdigit() and int(value) >= 1):
        raise ValueError(f"--trials-per-gpu must be a whole number >= 1 or 'auto', got {value!r}")
    if value != "auto" and cfg.gpus_per_worker is not None:
        raise ValueError("give --trials-per-gpu or --gpus-per-worker, not both "
                         "(--trials-per-gpu N asks for 1/N GPU per worker)")


def default_name(cfg: SearchConfig) -> str:
    return f"{cfg.experiment}-{cfg.preset}-{datetime.now():%Y%m%d-%H%M%S}"


def class_options(exclude_classes: Optional[str], label_map: Sequence[str],
                  classes: Optional[str]) -> dict:
    """The command line's class options as `trainables.data.load_image_set`'s keywords
    (exclude_labels=, label_map=, classes=), only those given: a search without them loads,
    caches and records its data exactly as before.  A malformed value is a ValueError
    naming the option.

    >>> class_options("Lung Opacity", ["Viral Pneumonia=Pneumonia"], None)
    {'exclude_labels': ('Lung Opacity',), 'label_map': {'Viral Pneumonia': 'Pneumonia'}}
    """
    out: dict = {}
    if exclude_classes is not None:
        out["exclude_labels"] = class_list(exclude_classes, "--exclude-classes")
    if label_map:
        out["label_map"] = parse_label_map(label_map)
    if classes is not None:
        out["classes"] = class_list(classes, "--classes")
    return out


def class_list(text: str, flag: str) -> tuple[str, ...]:
    """`"Lung Opacity,Tuberculosis"` -> ("Lung Opacity", "Tuberculosis"): comma-separated
    names, kept as written (any script) but for spaces around them."""
    names = tuple(name.strip() for name in text.split(","))
    if not all(names):
        raise ValueError(f"{flag} {text!r}: expected comma-separated class names, e.g. "
                         f"{flag} 'Lung Opacity,Tuberculosis'")
    return names


def parse_label_map(items: Sequence[str]) -> dict[str, str]:
    """`("Viral Pneumonia=Pneumonia", "COVID=Covid,NORMAL=Normal")` -> {old: new}: the
    source's class name (or its canonical name) -> the name to train under."""
    out: dict[str, str] = {}
    for item in items:
        for pair in item.split(","):
            old, eq, new = (part.strip() for part in pair.partition("="))
            if not (eq and old and new):
                raise ValueError(f"--label-map {pair.strip()!r}: expected OLD=NEW, e.g. "
                                 "--label-map 'Viral Pneumonia=Pneumonia' (comma-separate or "
                                 "repeat the option for several)")
            out[old] = new
    return out


def data_options_from_params(params: dict) -> dict:
    """The data loader's options a search recorded as `data_options.<key>` params (the
    values as Python wrote them), so that a later command loads exactly its images."""
    import ast

    out = {}
    for key, text in params.items():
        if key.startswith("data_options."):
            try:
                out[key.partition(".")[2]] = ast.literal_eval(text)
            except (ValueError, SyntaxError):  # a plain string: duplicates=drop
                out[key.partition(".")[2]] = text
    return out


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


# The class options' help, shared by search, study and audit (here: no cycle between them).
ARTIFACT_ROOT_HELP = ("where a new experiment keeps its artefacts (grids, models): a folder or "
                      "s3://… (default: DIR/artifacts beside a sqlite:///DIR/mlflow.db; a "
                      "server's own default for http://)")
CLASS_OPTIONS_HELP = {
    "exclude_classes": "leave these classes out, e.g. 'Lung Opacity' (S3's set); a folder "
                       "name or the canonical name; comma-separated",
    "label_map": "rename a class: the source's name (or its canonical one) = the name to "
                 "train under, e.g. 'Viral Pneumonia=Pneumonia'; comma-separate or repeat",
    "classes": "accept these class names as they are, e.g. Tuberculosis (names the loader "
               "does not know are an error otherwise; for a MedMNIST .npz: the names of "
               "labels 0, 1, ...); comma-separated",
}
