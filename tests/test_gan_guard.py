"""Divergence guard: each trigger as a pure function, then wired into train_gan."""
from __future__ import annotations

import math
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from trainables.context import standalone_context
from trainables.data import load_image_set
from trainables.gan import GANConfig, train_gan
from trainables.gan.guard import (DivergenceGuard, collapse_reason, d_wins_reason,
                                  nonfinite_reason)


def test_nonfinite_loss_triggers():
    assert nonfinite_reason({"g_loss": 0.7, "d_loss": 1.3, "g_steps": 5, "d_steps": 5}) is None
    assert "g_loss" in nonfinite_reason({"g_loss": math.nan, "d_loss": 1.3})
    assert "d_loss" in nonfinite_reason({"g_loss": 0.7, "d_loss": math.inf})
    # no D step this epoch (slow D): its NaN placeholder is not a divergence
    assert nonfinite_reason({"g_loss": 0.7, "d_loss": math.nan, "d_steps": 0}) is None


def test_discriminator_winning_while_generator_loss_rises_triggers():
    g_rising = [1.0, 2.0, 3.0, 4.0]
    assert "discriminator won" in d_wins_reason([0.5, 0.001, 0.002, 0.001], g_rising, 0.01, 3)
    # not long enough, D not near zero, or G not rising every epoch: go on
    assert d_wins_reason([0.001, 0.001], [1.0, 2.0], 0.01, 3) is None
    assert d_wins_reason([0.001, 0.2, 0.001], [1.0, 2.0, 3.0], 0.01, 3) is None
    assert d_wins_reason([0.001] * 3, [1.0, 3.0, 2.0], 0.01, 3) is None


def test_collapsed_generator_triggers_per_class():
    torch.manual_seed(0)
    labels = torch.tensor([0] * 4 + [1] * 4)
    varied = torch.rand(8, 1, 16, 16) * 2 - 1
    assert collapse_reason(varied, labels, 1e-3) is None
    grey = varied.clone()
    grey[4:] = 0.1 + 1e-5 * torch.randn(4, 1, 16, 16)  # class 1: a uniform grey image (S2)
    assert "class 1" in collapse_reason(grey, labels, 1e-3)
    assert collapse_reason(grey, labels, 0.0) is None  # 0 switches the check off


def test_guard_collapse_waits_for_warmup_and_keeps_history_in_its_state():
    labels = torch.tensor([0, 0])
    flat = torch.zeros(2, 1, 8, 8)
    guard = DivergenceGuard(0.01, 2, 1e-3, warmup=2)
    ok = {"g_loss": 1.0, "d_loss": 1.0, "g_steps": 1, "d_steps": 1}
    assert guard.update({**ok, "epoch": 1}, flat, labels) is None
    assert "collapsed" in guard.update({**ok, "epoch": 2}, flat, labels)
    again = DivergenceGuard(0.01, 2, 1e-3)
    again.load_state_dict(guard.state_dict())
    assert again.g_losses == [1.0, 1.0]


@pytest.fixture(scope="module")
def small_covid3(covid3_dir, tmp_path_factory):
    """64 real 32-px training images (all three classes): two batches of 32."""
    full = load_image_set(covid3_dir, "train", resolution=32, channels=1,
                          cache_dir=tmp_path_factory.mktemp("cache"), duplicates="keep")
    rows = np.sort(np.random.default_rng(0).permutation(len(full))[:64])
    return SimpleNamespace(images=np.asarray(full.images[rows]), labels=full.labels[rows],
                           classes=full.classes)


def _run(cfg, data, tmp_path):
    ctx = standalone_context(tmp_path)
    return train_gan(cfg, data, ctx), ctx


def test_train_gan_stops_on_collapse_with_a_recorded_reason(small_covid3, tmp_path):
    # A threshold no generator can meet stands in for a collapsed one.
    cfg = GANConfig(family="cgan", width=0.0625, epochs=3, guard_collapse_std=10.0, guard_warmup=0)
    reports, ctx = _run(cfg, small_covid3, tmp_path)
    assert len(reports) == 1 and reports[0]["diverged"] == 1.0
    assert "collapsed" in reports[0]["stop_reason"]
    assert ctx.history[-1]["stop_reason"] == reports[0]["stop_reason"]


def test_train_gan_stops_on_nan_loss_without_crashing(small_covid3, tmp_path):
    cfg = GANConfig(family="dcgan", width=0.0625, epochs=3, optimizer="sgd", lr_g=1e30,
                    lr_d=1e30, momentum=0.0)
    reports, _ = _run(cfg, small_covid3, tmp_path)
    assert len(reports) < 3 and reports[-1]["diverged"] == 1.0
    assert reports[-1]["stop_reason"].startswith("non-finite")
    # NaN weights are not checkpointed
    assert not (tmp_path / f"epoch_{len(reports) - 1:04d}" / "state.pt").exists()


def test_train_gan_stops_when_discriminator_wins(small_covid3, tmp_path):
    # A fast D (lr 1e-2) against a slow G (1e-5) makes G's loss rise; the floor is set above
    # any loss so that "G loss rose for patience=2 epochs" is what fires (seeded: exact).
    cfg = GANConfig(family="dcgan", width=0.0625, epochs=4, guard_d_loss_floor=1e6,
                    guard_patience=2, lr_d=1e-2, lr_g=1e-5)
    reports, _ = _run(cfg, small_covid3, tmp_path)
    g, stop = [r["g_loss"] for r in reports], len(reports) - 1
    # fires at the first epoch whose G loss rose, not before, and ends the run there
    assert stop < 3 and reports[stop]["diverged"] == 1.0 and g[stop] > g[stop - 1]
    assert "discriminator won" in reports[stop]["stop_reason"]
    assert all(r["diverged"] == 0.0 and "stop_reason" not in r for r in reports[:stop])
    assert all(g[e] <= g[e - 1] for e in range(1, stop))
    # a guard stop that is not NaN keeps its checkpoint for inspection
    assert (tmp_path / f"epoch_{stop:04d}" / "state.pt").is_file()


def test_within_class_collapse_stops_after_patience_low_evaluations():
    g = DivergenceGuard(0.01, patience=2, collapse_std=0.0, warmup=1, min_diversity=0.45)
    assert g.after_eval({"epoch": 0, "diversity_ratio": 0.1}) is None  # warm-up
    assert g.after_eval({"epoch": 1, "diversity_ratio": 0.3}) is None
    assert g.after_eval({"epoch": 2, "diversity_ratio": 0.6}) is None  # a healthy one resets
    assert g.after_eval({"epoch": 3, "diversity_ratio": 0.3}) is None
    assert g.after_eval({"epoch": 4}) is None  # not evaluated: no evidence either way
    reason = g.after_eval({"epoch": 5, "diversity_ratio": 0.2})
    assert reason and "near-copies" in reason and "0.300, 0.200" in reason
    resumed = DivergenceGuard(0.01, 2, 0.0, 1, 0.45)
    resumed.load_state_dict(g.state_dict())
    assert resumed.low_diversity == g.low_diversity
    assert DivergenceGuard(0.01, 2, 0.0).after_eval({"epoch": 9, "diversity_ratio": 0.0}) is None  # off


def test_a_diverged_generators_grid_draws_its_nan_pixels_grey(tmp_path):
    """The last grid of a NaN epoch is written (the guard stops after it): NaN pixels are drawn
    mid-grey, not whatever an undefined NaN -> uint8 cast gives."""
    import warnings

    from PIL import Image

    from trainables.gan.sampling import save_grid

    images = torch.full((2, 1, 8, 8), float("nan"))
    images[1] = 1.0  # one sane tile beside it: white
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        path = save_grid(images, tmp_path / "grid.png", per_row=2)
    grid = np.asarray(Image.open(path).convert("L"))
    scale = len(grid) // 12  # 8 px tiles with 2 px padding, scaled up
    nan_tile = grid[2 * scale:10 * scale, 2 * scale:10 * scale]
    assert np.all(np.abs(nan_tile.astype(int) - 128) <= 1), np.unique(nan_tile)
