"""The names a search is made of, each listed once: experiments (a GAN family or the
classifier), their seed presets and search spaces, objectives with their direction, Tune
searchers and schedulers, ranking policies.

The lists are read from where the things live (`trainables.gan.families.FAMILIES`,
`trainables.gan.presets.PRESETS`, `trainables.metrics.registry.METRICS`,
`orchestrator.ranking.POLICIES`); a GAN family registered there is an experiment here.
"""
from __future__ import annotations

import importlib
from types import ModuleType

from orchestrator.ranking import POLICIES
from trainables.gan.families import FAMILIES
from trainables.gan.presets import PRESETS
from trainables.metrics.registry import METRICS, OBJECTIVES

GAN_EXPERIMENTS = tuple(FAMILIES)
EXPERIMENTS = (*GAN_EXPERIMENTS, "classifier")
SEARCHERS = ("optuna", "random")
TUNE_SCHEDULERS = ("asha", "none", "pbt")
# The classifier study trains S0's CNN; its seed preset only names the search.
CLASSIFIER_PRESET = "s0"

__all__ = ["EXPERIMENTS", "GAN_EXPERIMENTS", "SEARCHERS", "TUNE_SCHEDULERS", "POLICIES",
           "presets_of", "default_preset", "preset_family", "experiment_space",
           "parse_objectives", "default_objective"]


def preset_family(preset: str) -> str:
    """The family a seed system belongs to (shared/SYSTEMS.md)."""
    return PRESETS[preset]["family"]


def presets_of(experiment: str) -> tuple[str, ...]:
    """The seed presets an experiment accepts: its family's own, in order.  A family no seed
    system used (e.g. WGAN-GP) accepts every preset: the seed's training budget and data size
    on this family's architecture and defaults."""
    if experiment == "classifier":
        return tuple(PRESETS)
    own = tuple(name for name, p in PRESETS.items() if p["family"] == experiment)
    return own or tuple(PRESETS)


def default_preset(experiment: str) -> str:
    if experiment == "classifier":
        return CLASSIFIER_PRESET
    return presets_of(experiment)[0]


def experiment_space(experiment: str) -> ModuleType:
    """The search space module of an experiment: `search_spaces.<experiment>`."""
    return importlib.import_module(f"search_spaces.{experiment}")


def default_objective(experiment: str) -> str:
    return "val_macro_f1" if experiment == "classifier" else "fid"


def parse_objectives(text: str | None, experiment: str) -> list[tuple[str, str]]:
    """`"fid,cas_acc"` -> [("fid", "min"), ("cas_acc", "max")]; None -> the experiment's
    default."""
    names = [n.strip() for n in (text or default_objective(experiment)).split(",") if n.strip()]
    if not names:
        raise ValueError("--objective is empty; give a metric such as 'fid' or 'fid,cas_acc'")
    unknown = [n for n in names if n not in OBJECTIVES]
    if unknown:
        raise ValueError(
            f"unknown objective {unknown[0]!r}; choose from {', '.join(sorted(OBJECTIVES))}")
    return [(n, METRICS[n].direction) for n in names]
