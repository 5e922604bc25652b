"""Intervals for scores averaged over training seeds on one shared test set, paired
differences between strategies, Holm's correction, per-seed McNemar, and AUROC.

Why a new interval.  A study trains S seeds per strategy and scores them all on the same N
test images.  The seed-averaged score misses the population value (expected over training
runs *and* over test images) for two reasons: the test sample, which every seed shares, so
its noise does not average out over seeds; and the S seeds, which do average out.  With
additive image, seed and image x seed parts (variances a, b, e):

    Var(mean over seeds) = a/N + e/(S N)   [test images, shared]   +   b/S   [seeds]

`seed_interval` estimates the first part by the bootstrap over test images of the
seed-averaged score (the same resampled images for every seed), and the second part by the
sample variance of the S per-seed scores over S.  That variance also holds the image x seed
part e/(S N), which the bootstrap part holds too: counted twice, the interval is a little
conservative (subtracting it made the intervals under-cover when the seed part is small and
noisy).  Only the seed part rests on few values (S - 1 degrees of freedom), so the interval
is built from t * SE with Satterthwaite's degrees of freedom for the sum: S - 1 when seeds
dominate, large when the test set does.  A percentile bootstrap over 5 seeds cannot do this
(5 seed values give too few distinct resamples and too narrow a spread).

Scores of one strategy live in [0, 1] and their seed-to-seed spread is skewed near the
ends (seed quality roughly normal on the logit scale), and a symmetric t interval over 5
skewed values under-covers (0.90 at accuracy ~0.85 with a seed sd of 1 logit).  So
`seed_interval` takes the interval on the logit scale, logit(point) +- t * SE / (point (1 -
point)) (the delta method), and maps it back: same width in the middle, longer towards 0.5
near the ends, never outside [0, 1].  Differences are less skewed and keep the plain scale.
In the simulation of tests/test_study_intervals.py (S = 5, seed sd 0.5 and 1.0 logit) both
cover 0.93-0.96 at nominal 0.95; strong skew with few seeds remains a limit (0.92 at
accuracy ~0.93 with a seed sd of 1 logit).

`paired_interval` is the same method applied to the per-seed differences d_s =
score(a_s) - score(b_s): a_s and b_s come from the same seed and the same images, so what
they share cancels in d_s.  Its p-value (two-sided, from the same t statistic) is what
`holm` corrects across comparisons; p < 1 - level exactly when the interval excludes 0.
With S = 1 there is no seed part: the interval then covers test-set sampling only, for
that one trained model (df = inf).
"""
from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import NamedTuple

import numpy as np
from scipy.stats import binom, rankdata
from scipy.stats import t as student_t

Metric = Callable[[np.ndarray, np.ndarray], float]


class Interval(NamedTuple):
    """point +- t(df) * se; p: two-sided p-value of "the population value is 0" (the one
    to read for a difference)."""
    point: float
    low: float
    high: float
    se: float
    df: float
    p: float


# ------------------------------------------------------------------------------ intervals
def seed_interval(y_true: np.ndarray, preds: np.ndarray, metric: Metric, *,
                  n_boot: int = 1000, level: float = 0.95, seed: int = 0) -> Interval:
    """The seed-averaged ``metric`` (a score in [0, 1]) of one strategy with an interval
    for its population value over test images and training seeds, taken on the logit scale
    (see the module docstring); se, df and p are those of the plain scale.

    preds: (S, N) labels or (S, N, K) scores, row s from seed s, all on the same N images
    ((N,) or (N, K): one seed).  metric(y_true, preds_of_one_seed) -> float; NaN (e.g. a
    class missing from a resample) drops that resample."""
    y_true = np.asarray(y_true)
    p = _by_seed(preds, len(y_true), "seed_interval")
    iv = _t_interval(lambda idx: np.array([metric(y_true[idx], s[idx]) for s in p]),
                     len(y_true), n_boot=n_boot, level=level, seed=seed)
    return _on_logit_scale(iv, level)


def _on_logit_scale(iv: Interval, level: float) -> Interval:
    """The t interval taken on the logit scale (delta method) and mapped back, for a score
    in (0, 1); a score of exactly 0 or 1, or one outside [0, 1], keeps the plain interval."""
    point, se = iv.point, iv.se
    if not (0 < point < 1 and se > 0):
        return iv
    half = float(student_t.ppf(0.5 + level / 2, iv.df)) * se / (point * (1 - point))
    centre = np.log(point / (1 - point))
    low, high = 1 / (1 + np.exp(-(centre - half))), 1 / (1 + np.exp(-(centre + half)))
    return iv._replace(low=float(low), high=float(high))


def paired_interval(y_true: np.ndarray, preds_a: np.ndarray, preds_b: np.ndarray,
                    metric: Metric, *, n_boot: int = 1000, level: float = 0.95,
                    seed: int = 0) -> Interval:
    """Seed-averaged ``metric`` of a minus that of b, with its interval and p-value: the
    method of `seed_interval` on the per-seed differences (row s of a and of b trained
    with the same seed, all on the same images)."""
    y_true = np.asarray(y_true)
    a = _by_seed(preds_a, len(y_true), "paired_interval")
    b = _by_seed(preds_b, len(y_true), "paired_interval")
    if a.shape != b.shape:
        raise ValueError(f"paired_interval: predictions {a.shape} and {b.shape} for "
                         f"{len(y_true)} labels; both must be (seeds, labels[, classes])")

    def diffs(idx: np.ndarray) -> np.ndarray:
        y = y_true[idx]
        return np.array([metric(y, s[idx]) - metric(y, r[idx]) for s, r in zip(a, b)])

    return _t_interval(diffs, len(y_true), n_boot=n_boot, level=level, seed=seed)


def _by_seed(preds: np.ndarray, n: int, who: str) -> np.ndarray:
    """(S, N) or (S, N, K); a single seed's (N,) or (N, K) gets a leading axis of 1."""
    p = np.asarray(preds)
    if p.ndim == 1 or (p.ndim == 2 and p.shape[0] == n and p.shape[1] != n):
        p = p[None]
    if p.ndim not in (2, 3) or p.shape[1] != n:
        raise ValueError(f"{who}: predictions of shape {np.shape(preds)} for {n} labels; "
                         "expected (seeds, labels) or (seeds, labels, classes)")
    return p


def _t_interval(per_seed: Callable[[np.ndarray], np.ndarray], n: int, *, n_boot: int,
                level: float, seed: int) -> Interval:
    """per_seed(image indices) -> the S per-seed scores on those images.  The two variance
    parts of the module docstring, combined with Satterthwaite's degrees of freedom."""
    m = per_seed(np.arange(n))
    s, point = len(m), float(np.mean(m))
    if n_boot == 0 or not np.isfinite(point):
        return Interval(point, np.nan, np.nan, np.nan, np.nan, np.nan)
    rng = np.random.default_rng(seed)
    boot = np.stack([per_seed(rng.integers(0, n, n)) for _ in range(n_boot)])  # (B, S)
    boot = boot[np.isfinite(boot).all(1)]
    if len(boot) < 2:
        return Interval(point, np.nan, np.nan, np.nan, np.nan, np.nan)
    v_images = float(np.var(boot.mean(1), ddof=1))
    v_seeds, df = 0.0, np.inf
    if s > 1:
        v_seeds = float(np.var(m, ddof=1)) / s
        if v_seeds > 0:  # Satterthwaite: the bootstrap part counts as exact (df = inf)
            df = (v_images + v_seeds) ** 2 / (v_seeds ** 2 / (s - 1))
    se = float(np.sqrt(v_images + v_seeds))
    half = float(student_t.ppf(0.5 + level / 2, df)) * se
    p = 2 * float(student_t.sf(abs(point) / se, df)) if se > 0 else float(point == 0)
    return Interval(point, point - half, point + half, se, float(df), p)


def holm(pvalues: Sequence[float]) -> np.ndarray:
    """Holm-Bonferroni adjusted p-values (step-down; monotone in the raw p; capped at 1).
    Reject at level alpha where adjusted <= alpha: family-wise error <= alpha for any
    dependence between the tests.  NaN p-values are left out of the family and stay NaN."""
    p = np.asarray(pvalues, dtype=np.float64)
    out = np.full(p.shape, np.nan)
    ok = np.flatnonzero(np.isfinite(p))
    order = ok[np.argsort(p[ok], kind="stable")]
    m = len(order)
    # the i-th smallest of m is tested at alpha / (m - i); a larger p never gets a smaller
    # adjusted value than a smaller one (the running maximum)
    out[order] = np.minimum(np.maximum.accumulate((m - np.arange(m)) * p[order]), 1.0)
    return out


# ------------------------------------------------------------------------------ McNemar
class McNemar(NamedTuple):
    """Per seed: images only a gets right, only b gets right, exact two-sided p."""
    a_only: np.ndarray
    b_only: np.ndarray
    p: np.ndarray


def mcnemar_per_seed(y_true: np.ndarray, preds_a: np.ndarray, preds_b: np.ndarray) -> McNemar:
    """McNemar's exact test separately for each seed's pair of models (row s of a vs row s
    of b), never pooled: the S predictions of one image are not independent pairs.  Each
    p is conditional on that seed's training run (test-set sampling only); whether the
    strategies differ is `paired_interval`'s question."""
    y_true = np.asarray(y_true)
    a, b = _by_seed(preds_a, len(y_true), "mcnemar"), _by_seed(preds_b, len(y_true), "mcnemar")
    if a.shape != b.shape or a.ndim != 2:
        raise ValueError(f"mcnemar: label predictions {a.shape} and {b.shape} for "
                         f"{len(y_true)} labels; both must be (seeds, labels)")
    right_a, right_b = a == y_true, b == y_true
    a_only, b_only = (right_a & ~right_b).sum(1), (right_b & ~right_a).sum(1)
    p = np.array([_mcnemar_p(int(i), int(j)) for i, j in zip(a_only, b_only)])
    return McNemar(a_only.astype(int), b_only.astype(int), p)


def _mcnemar_p(a_only: int, b_only: int) -> float:
    discordant = a_only + b_only
    if discordant == 0:
        return 1.0
    return min(1.0, 2 * float(binom.cdf(min(a_only, b_only), discordant, 0.5)))


# ------------------------------------------------------------------------------ per-class metrics
def binary_auroc(is_positive: np.ndarray, score: np.ndarray) -> float:
    """Area under the ROC curve = P(score of a positive > score of a negative), ties 1/2
    (Mann-Whitney U from average ranks; numpy/scipy only, because the bootstrap calls it
    thousands of times).  NaN without positives or without negatives."""
    pos = np.asarray(is_positive, dtype=bool)
    n1 = int(pos.sum())
    n0 = len(pos) - n1
    if n1 == 0 or n0 == 0:
        return float("nan")
    ranks = rankdata(score)
    return float((ranks[pos].sum() - n1 * (n1 + 1) / 2) / (n1 * n0))


def auroc_per_class(y_true: np.ndarray, y_score: np.ndarray) -> np.ndarray:
    """(K,) one-vs-rest AUROC of each class from (N, K) class scores (probabilities)."""
    y_true, y_score = np.asarray(y_true), np.asarray(y_score)
    return np.array([binary_auroc(y_true == c, y_score[:, c]) for c in range(y_score.shape[1])])


def macro_auroc(y_true: np.ndarray, y_score: np.ndarray) -> float:
    """Unweighted mean of the one-vs-rest AUROCs (scikit-learn's multi_class="ovr",
    average="macro"); NaN when a class is missing."""
    return float(np.mean(auroc_per_class(y_true, y_score)))


def auroc_of(c: int) -> Metric:
    """metric(y_true, y_score) -> one-vs-rest AUROC of class c, for the interval functions."""
    return lambda y_true, y_score: binary_auroc(np.asarray(y_true) == c, np.asarray(y_score)[:, c])


def sensitivity_of(c: int) -> Metric:
    """metric(y_true, y_pred) -> recall of class c; NaN without class-c images (not 0 as
    in `per_class`, so an interval drops such a resample instead of counting a miss)."""
    def sensitivity(y_true: np.ndarray, y_pred: np.ndarray) -> float:
        pos = np.asarray(y_true) == c
        return float(np.mean(np.asarray(y_pred)[pos] == c)) if pos.any() else float("nan")
    return sensitivity


def specificity_of(c: int) -> Metric:
    """metric(y_true, y_pred) -> specificity of class c (share of other-class images not
    called c); NaN without other-class images."""
    def specificity(y_true: np.ndarray, y_pred: np.ndarray) -> float:
        neg = np.asarray(y_true) != c
        return float(np.mean(np.asarray(y_pred)[neg] != c)) if neg.any() else float("nan")
    return specificity


def class_intervals(y_true: np.ndarray, preds: np.ndarray, classes: Sequence[str], *,
                    reference: np.ndarray | None = None, n_boot: int = 1000,
                    level: float = 0.95, seed: int = 0) -> dict[str, Interval]:
    """{"sensitivity/<class>": Interval, "specificity/<class>": ...} from (S, N) label
    predictions, or {"auroc/<class>": ..., "macro_auroc": ...} from (S, N, K) scores; with
    ``reference`` (same shape) the intervals are of preds minus reference (`paired_interval`)."""
    k = len(classes)
    if np.asarray(preds).ndim == 3 or (np.asarray(preds).ndim == 2 and np.shape(preds)[-1] == k
                                       and np.shape(preds)[0] == len(y_true)):
        metrics = {f"auroc/{name}": auroc_of(c) for c, name in enumerate(classes)}
        metrics["macro_auroc"] = macro_auroc
    else:
        metrics = {f"{kind}/{name}": make(c) for kind, make in
                   (("sensitivity", sensitivity_of), ("specificity", specificity_of))
                   for c, name in enumerate(classes)}
    options = {"n_boot": n_boot, "level": level, "seed": seed}
    if reference is None:
        return {name: seed_interval(y_true, preds, fn, **options) for name, fn in metrics.items()}
    return {name: paired_interval(y_true, preds, reference, fn, **options)
            for name, fn in metrics.items()}
