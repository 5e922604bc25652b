"""The metric-name table: one name per number, a direction each."""
from __future__ import annotations

import pytest

from trainables.metrics.registry import METRICS, OBJECTIVES, Metric, direction, objectives

# The union of the tables the orchestrator kept before this registry (ranking.DIRECTIONS,
# objectives.DIRECTIONS), with the Inception Score under the name the evaluator reports.
OLD_DIRECTIONS = {"g_loss": "min", "d_fake_acc": "min", "cas_acc": "max", "cas_f1": "max",
                  "fid": "min", "intra_fid": "min", "kid": "min", "is": "max",
                  "constant_frac": "min", "diversity_ratio": "max", "class_confusion": "min",
                  "val_loss": "min", "val_accuracy": "max", "val_macro_f1": "max"}


def test_every_old_name_keeps_its_direction_and_is_an_objective():
    assert {n: direction(n) for n in OLD_DIRECTIONS} == OLD_DIRECTIONS
    assert set(OBJECTIVES) == set(OLD_DIRECTIONS)
    assert all(METRICS[n].name == n and METRICS[n].description for n in METRICS)


def test_an_unknown_name_lists_the_known_ones():
    with pytest.raises(ValueError, match="unknown metric 'inception_score'.*fid.*val_macro_f1"):
        direction("inception_score")


def test_objectives_by_trainable():
    assert objectives("classifier") == ("val_loss", "val_accuracy", "val_macro_f1")
    assert "fid" in objectives("gan") and "val_loss" not in objectives("gan")
    assert objectives() == OBJECTIVES
    with pytest.raises(ValueError, match="unknown trainable"):
        objectives("vae")


def test_a_metric_without_a_direction_is_refused():
    with pytest.raises(ValueError, match="direction"):
        Metric("lpips", "lower", "gan", "perceptual distance")


def test_the_evaluator_and_the_loop_report_these_names():
    from trainables.gan import loop
    from trainables.metrics import evaluator

    # `--eval-metrics is` selects the metric the table calls "is": one name end to end.
    assert set(evaluator._FEATURE_METRICS) <= set(METRICS)
    assert {"g_loss", "d_fake_acc"} <= set(loop._G_KEYS + loop._D_KEYS)
