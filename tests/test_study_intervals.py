"""The study's intervals hold their level when both the test images and the training seeds
are random: a simulation with a known population accuracy, plus analytic checks of Holm's
correction, per-seed McNemar and AUROC."""
from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from trainables.classifier.metrics import accuracy
from trainables.classifier.stats import (
    auroc_of,
    auroc_per_class,
    binary_auroc,
    class_intervals,
    holm,
    macro_auroc,
    mcnemar_per_seed,
    paired_interval,
    seed_interval,
    sensitivity_of,
    specificity_of,
)

TAU = 1.0  # sd of image difficulty, logit scale
N, S, R, N_BOOT = 300, 5, 300, 200


def population_accuracy(mu: float, seed_sd: float) -> float:
    """E over seeds and images of sigmoid(quality - difficulty): quality - difficulty is
    normal(mu, sqrt(seed_sd^2 + TAU^2)), integrated by Gauss-Hermite quadrature."""
    x, w = np.polynomial.hermite_e.hermegauss(80)
    z = mu + np.hypot(seed_sd, TAU) * x
    return float(np.sum(w / (1 + np.exp(-z))) / np.sqrt(2 * np.pi))


def simulate(rng: np.random.Generator, mus: tuple[float, ...], seed_sd: float,
             rho: float = 0.5) -> tuple[np.ndarray, list[np.ndarray]]:
    """A fresh test set (3 classes, per-image difficulty) and, per strategy, S fresh seeds
    whose quality is normal(mu, seed_sd) on the logit scale.  Seed s of every strategy
    shares a part rho of its quality's variance (same initialisation and data order) and
    the same uniform per image (hard cases are hard for both): the pairing matters."""
    y = rng.integers(0, 3, N)
    difficulty = rng.normal(0, TAU, N)
    shared = rng.normal(0, seed_sd, S)
    u = rng.random((S, N))
    preds = []
    for mu in mus:
        quality = mu + np.sqrt(rho) * shared + np.sqrt(1 - rho) * rng.normal(0, seed_sd, S)
        right = u < 1 / (1 + np.exp(difficulty[None] - quality[:, None]))
        preds.append(np.where(right, y, (y + 1) % 3))
    return y, preds


@pytest.mark.parametrize("seed_sd", [0.5, 1.0])
def test_intervals_cover_the_population_value_over_images_and_seeds(seed_sd):
    mu_a, mu_b = 1.5, 1.0
    true_a = population_accuracy(mu_a, seed_sd)
    true_diff = true_a - population_accuracy(mu_b, seed_sd)
    rng = np.random.default_rng(int(10 * seed_sd))
    single = paired = 0
    for r in range(R):
        y, (a, b) = simulate(rng, (mu_a, mu_b), seed_sd)
        one = seed_interval(y, a, accuracy, n_boot=N_BOOT, seed=r)
        diff = paired_interval(y, a, b, accuracy, n_boot=N_BOOT, seed=r)
        single += one.low <= true_a <= one.high
        paired += diff.low <= true_diff <= diff.high
    assert single / R >= 0.92 and paired / R >= 0.92, (single / R, paired / R)


def test_equal_strategies_give_no_evidence_after_holm():
    """Three strategies from one generating process: each paired interval covers 0 in ~95 %
    of replications, and after Holm over the three comparisons none is called in >= 95 %."""
    rng = np.random.default_rng(7)
    covers_zero = silent = 0
    for r in range(R):
        y, (a, b, c) = simulate(rng, (1.5, 1.5, 1.5), 0.5)
        tests = [paired_interval(y, p, q, accuracy, n_boot=N_BOOT, seed=r)
                 for p, q in ((b, a), (c, a), (c, b))]
        covers_zero += tests[0].low <= 0 <= tests[0].high
        silent += bool((holm([t.p for t in tests]) > 0.05).all())
    assert covers_zero / R >= 0.92 and silent / R >= 0.93, (covers_zero / R, silent / R)


def test_interval_parts_on_constructed_predictions():
    y = np.repeat([0, 1, 2], 40)
    perfect = np.stack([y] * 5)
    assert seed_interval(y, perfect, accuracy, n_boot=50)[:3] == (1.0, 1.0, 1.0)
    same = paired_interval(y, perfect, perfect.copy(), accuracy, n_boot=50)
    assert same[:3] == (0.0, 0.0, 0.0) and same.p == 1.0
    # every seed 10 points better on the same images: no seed spread, images only
    rng = np.random.default_rng(0)
    b = np.stack([np.where(np.isin(np.arange(120), rng.choice(120, 30, replace=False)),
                           (y + 1) % 3, y) for _ in range(5)])
    a = np.where(np.arange(120) < 12, y, b)  # a fixes b's mistakes among the first 12 images
    d = paired_interval(y, a, b, accuracy, n_boot=300)
    assert d.point == pytest.approx(np.mean([(p == y).mean() - (q == y).mean() for p, q in zip(a, b)]))
    assert d.low < d.point < d.high and d.df > 4
    # a single seed: images only (df = inf); the p-value and the interval agree
    one = paired_interval(y, a[0], b[0], accuracy, n_boot=300)
    assert one.df == np.inf and (one.p < 0.05) == (one.low > 0 or one.high < 0)
    with pytest.raises(ValueError, match="seeds, labels"):
        paired_interval(y, a[:3], b, accuracy)


def test_seed_spread_widens_the_interval():
    """Same images, same mean: per-seed scores spread out must give a wider interval and
    fewer degrees of freedom than per-seed scores that agree."""
    y = np.repeat([0, 1], 300)
    rng = np.random.default_rng(1)
    flip = lambda k: np.where(np.isin(np.arange(600), rng.choice(600, k, replace=False)), 1 - y, y)
    steady = np.stack([flip(60) for _ in range(5)])
    spread = np.stack([flip(k) for k in (10, 35, 60, 85, 110)])
    a = seed_interval(y, steady, accuracy, n_boot=300)
    b = seed_interval(y, spread, accuracy, n_boot=300)
    assert a.point == pytest.approx(b.point)
    assert b.high - b.low > 2 * (a.high - a.low) and b.df < a.df


# ------------------------------------------------------------------------------ Holm
def test_holm_adjusts_step_down_and_caps_at_one():
    # sorted 0.01, 0.02, 0.03, 0.04 -> 4*0.01, 3*0.02, 2*0.03, 1*0.04, then running max
    np.testing.assert_allclose(holm([0.03, 0.01, 0.04, 0.02]), [0.06, 0.04, 0.06, 0.06])
    np.testing.assert_allclose(holm([0.01, 0.5, 0.6]), [0.03, 1.0, 1.0])
    np.testing.assert_allclose(holm([0.2]), [0.2])
    out = holm([0.01, np.nan, 0.02])
    assert np.isnan(out[1]) and out[[0, 2]] == pytest.approx([0.02, 0.02])
    assert holm([]).shape == (0,)


# ------------------------------------------------------------------------------ McNemar
def test_mcnemar_is_per_seed():
    y = np.zeros(30, dtype=int)
    a = np.stack([y, y])
    b = np.stack([np.where(np.arange(30) < 10, 1, 0), y])  # seed 0: a alone right on 10
    result = mcnemar_per_seed(y, a, b)
    assert result.a_only.tolist() == [10, 0] and result.b_only.tolist() == [0, 0]
    np.testing.assert_allclose(result.p, [2 * 0.5 ** 10, 1.0])


# ------------------------------------------------------------------------------ AUROC
def test_auroc_agrees_with_sklearn_and_has_analytic_extremes():
    rng = np.random.default_rng(0)
    y = rng.integers(0, 3, 400)
    logits = rng.normal(size=(400, 3)) + 1.5 * np.eye(3)[y]
    logits[:50] = np.round(logits[:50])  # ties
    score = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    ovr = [roc_auc_score(y == c, score[:, c]) for c in range(3)]
    np.testing.assert_allclose(auroc_per_class(y, score), ovr)
    assert macro_auroc(y, score) == pytest.approx(
        roc_auc_score(y, score, multi_class="ovr", average="macro"))
    positive = np.repeat([False, True], [6, 4])
    assert binary_auroc(positive, positive.astype(float)) == 1.0
    assert binary_auroc(positive, -positive.astype(float)) == 0.0
    assert binary_auroc(positive, np.ones(10)) == 0.5
    assert np.isnan(binary_auroc(np.zeros(10, bool), np.arange(10.0)))


def test_per_class_metrics_get_the_same_intervals():
    rng = np.random.default_rng(2)
    y = np.repeat([0, 1, 2], [60, 30, 30])
    preds = np.stack([np.where(rng.random(120) < 0.8, y, (y + 1) % 3) for _ in range(3)])
    assert sensitivity_of(1)(y, preds[0]) == pytest.approx(np.mean(preds[0][y == 1] == 1))
    assert specificity_of(1)(y, preds[0]) == pytest.approx(np.mean(preds[0][y != 1] != 1))
    rows = class_intervals(y, preds, ("a", "b", "c"), n_boot=100)
    assert sorted(rows) == sorted(f"{k}/{c}" for k in ("sensitivity", "specificity") for c in "abc")
    assert all(r.low <= r.point <= r.high for r in rows.values())
    scores = rng.dirichlet(np.ones(3), size=(3, 120)) + 0.5 * np.eye(3)[y]
    rows = class_intervals(y, scores, ("a", "b", "c"), reference=scores[::-1], n_boot=100)
    assert set(rows) == {"auroc/a", "auroc/b", "auroc/c", "macro_auroc"}
    assert rows["macro_auroc"].point == pytest.approx(0.0, abs=1e-12)
    assert seed_interval(y, scores, auroc_of(0), n_boot=100).point == pytest.approx(
        np.mean([roc_auc_score(y == 0, s[:, 0]) for s in scores]))
