"""The GAN search space, shared by the three families: define-by-run for Optuna.

`space(trial, max_epochs)` is only `trial.suggest_*` calls (conditional branches for the
update-ratio direction and the scheduler's own parameters). `to_config(params)` turns the
sampled parameters into `GANConfig` fields; `first_points(preset)` turns a seed system's
settings into parameters so that the preset is the first point evaluated.
"""
from __future__ import annotations

import math

from trainables.gan import GANConfig
from trainables.gan.config import LR_SCHEDULERS

LR_RANGE = (1e-5, 1e-2)  # S2 ran SGD at 1e-2; the others Adam at 2e-4
BATCH_SIZES = [4, 8, 16, 32, 64, 128]  # S2 run 1 used 4
K_CHOICES = [2, 5, 7, 9, 10, 12, 15, 20]  # one D step per K G steps; S2 tried 5..20
DIFFAUGMENT = ["", "color,translation,cutout"]  # off, or the DiffAugment paper's full policy
PBT_MUTATIONS = {"lr_g": LR_RANGE, "lr_d": LR_RANGE, "label_smoothing": (0.0, 0.3)}


def space(trial, max_epochs: int = 100) -> None:
    """Suggest one GAN training setup (TTUR learning rates, D:G ratio, scheduler, ...)."""
    trial.suggest_float("lr_g", *LR_RANGE, log=True)
    trial.suggest_float("lr_d", *LR_RANGE, log=True)
    if trial.suggest_categorical("optimizer", ["adam", "sgd"]) == "adam":
        trial.suggest_float("beta1", 0.0, 0.95)
    else:
        trial.suggest_float("momentum", 0.5, 0.99)
        trial.suggest_categorical("nesterov", [True, False])
    if trial.suggest_categorical("update_ratio", ["d_per_g", "g_per_d"]) == "d_per_g":
        trial.suggest_int("d_steps_per_g", 1, 5)
    else:
        trial.suggest_categorical("g_steps_per_d", K_CHOICES)
    scheduler = trial.suggest_categorical("scheduler", list(LR_SCHEDULERS))
    if scheduler == "cosine_warm_restarts":
        trial.suggest_int("t_0", 1, max(1, max_epochs // 2))
    elif scheduler == "step":
        trial.suggest_int("step_size", 1, max(1, max_epochs // 2))
        trial.suggest_float("gamma", 0.1, 0.9)
    elif scheduler == "exponential":
        trial.suggest_float("gamma", 0.9, 0.999)
    trial.suggest_float("label_smoothing", 0.0, 0.3)
    trial.suggest_categorical("batch_size", BATCH_SIZES)
    # Data-efficient training (Zhao et al. 2020): the seed sets are small (S1: 270 images).
    trial.suggest_categorical("diffaugment", DIFFAUGMENT)


def to_config(params: dict) -> dict:
    """Sampled parameters -> GANConfig overrides (the ratio direction becomes two fields)."""
    out = {k: v for k, v in params.items() if k != "update_ratio"}
    direction = params.get("update_ratio")
    if direction == "d_per_g":
        out["g_steps_per_d"] = 1
    elif direction == "g_per_d":
        out["d_steps_per_g"] = 1
    return out


def first_points(preset: dict, max_epochs: int = 100) -> list[dict]:
    """A preset's own values expressed as this space's parameters (evaluated first).
    Fields the preset leaves out take GANConfig's defaults, so no parameter of the first
    point is left to the sampler."""
    preset = GANConfig.from_dict(preset).to_dict()
    point: dict = {key: preset[key] for key in ("lr_g", "lr_d", "label_smoothing", "batch_size")}
    point["diffaugment"] = preset["diffaugment"] if preset["diffaugment"] in DIFFAUGMENT else ""
    point["optimizer"] = preset.get("optimizer", "adam")
    if point["optimizer"] == "adam":
        point["beta1"] = preset.get("beta1", 0.5)
    else:
        point["momentum"] = preset.get("momentum", 0.9)
        point["nesterov"] = bool(preset.get("nesterov", False))
    k = int(preset.get("g_steps_per_d", 1))
    if k > 1:
        point["update_ratio"], point["g_steps_per_d"] = "g_per_d", _nearest(K_CHOICES, k)
    else:
        point["update_ratio"], point["d_steps_per_g"] = "d_per_g", int(preset.get("d_steps_per_g", 1))
    scheduler = preset.get("scheduler", "none")
    point["scheduler"] = scheduler
    if scheduler == "cosine_warm_restarts":
        point["t_0"] = min(int(preset.get("t_0", 10)), max(1, max_epochs // 2))
    elif scheduler in ("step", "exponential"):
        point["gamma"] = preset.get("gamma", 0.5 if scheduler == "step" else 0.99)
        if scheduler == "step":
            point["step_size"] = min(int(preset.get("step_size", 10)), max(1, max_epochs // 2))
    if "batch_size" in point:
        point["batch_size"] = _nearest(BATCH_SIZES, int(point["batch_size"]))
    return [point]


def _nearest(choices: list[int], value: int) -> int:
    return min(choices, key=lambda c: abs(math.log(c) - math.log(value)))
