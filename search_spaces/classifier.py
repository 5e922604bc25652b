"""Classifier search space (S0's CNN by default): learning rate, batch size, dropout,
optimizer (Adam, or S1's SGD + Nesterov) and the imbalance strategy without a GAN."""
from __future__ import annotations

# The strategies that need no GAN (trainables.classifier.config.STRATEGIES has them all).
STRATEGIES = ["none", "class_weights", "undersample", "oversample", "positional"]
PBT_MUTATIONS = {"lr": (1e-5, 1e-2), "dropout": (0.0, 0.7)}


def space(trial, max_epochs: int = 50) -> None:
    if trial.suggest_categorical("optimizer", ["adam", "sgd"]) == "adam":
        trial.suggest_float("lr", 1e-5, 1e-3, log=True)
    else:
        trial.suggest_float("lr", 1e-3, 1e-1, log=True)
    trial.suggest_categorical("batch_size", [16, 32, 64, 128, 256])
    trial.suggest_float("dropout", 0.0, 0.7)
    trial.suggest_categorical("strategy", STRATEGIES)


def to_config(params: dict) -> dict:
    return dict(params)


def first_points(base: dict, max_epochs: int = 50) -> list[dict]:
    """S0's classifier setup (Adam 1e-4, batch 32, dropout 0.5), then S1's (SGD 0.01, 256)."""
    return [{"optimizer": "adam", "lr": 1e-4, "batch_size": 32, "dropout": 0.5,
             "strategy": base.get("strategy", "none")},
            {"optimizer": "sgd", "lr": 1e-2, "batch_size": 256, "dropout": 0.5,
             "strategy": base.get("strategy", "none")}]
