"""Classification metrics as pure functions of (y_true, y_pred), plus bootstrap CIs and the
paired comparison of two sets of models on the same test images.

Intervals over seeds *and* test images, Holm's correction, per-seed McNemar and AUROC live
in `trainables.classifier.stats`."""
from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
from matplotlib.figure import Figure
from sklearn.metrics import classification_report, confusion_matrix, f1_score

from trainables.classifier.stats import mcnemar_per_seed
from trainables.figures import save as save_figure


def confusion(y_true: np.ndarray, y_pred: np.ndarray, num_classes: int) -> np.ndarray:
    """K x K counts, rows = true class, columns = predicted class."""
    return confusion_matrix(y_true, y_pred, labels=list(range(num_classes)))


def per_class(cm: np.ndarray) -> dict[str, np.ndarray]:
    """Precision, recall (sensitivity), specificity and F1 per class from a confusion matrix.
    An undefined ratio (0/0) is 0, as scikit-learn's zero_division=0."""
    cm = np.asarray(cm, dtype=np.float64)
    tp = np.diag(cm)
    fp = cm.sum(0) - tp
    fn = cm.sum(1) - tp
    tn = cm.sum() - tp - fp - fn

    def ratio(a: np.ndarray, b: np.ndarray) -> np.ndarray:
        return np.divide(a, b, out=np.zeros_like(a), where=b > 0)

    precision, recall = ratio(tp, tp + fp), ratio(tp, tp + fn)
    return {"precision": precision, "recall": recall, "specificity": ratio(tn, tn + fp),
            "f1": ratio(2 * precision * recall, precision + recall), "support": cm.sum(1)}


def accuracy(y_true: np.ndarray, y_pred: np.ndarray) -> float:
    return float(np.mean(np.asarray(y_true) == np.asarray(y_pred)))


def macro_f1(y_true: np.ndarray, y_pred: np.ndarray, num_classes: int | None = None) -> float:
    """Unweighted mean of per-class F1 over ``num_classes`` classes (default: the classes
    present in either array), as scikit-learn with zero_division=0; numpy only, because the
    bootstrap calls it thousands of times."""
    y_true, y_pred = np.asarray(y_true, dtype=np.int64), np.asarray(y_pred, dtype=np.int64)
    if num_classes is None:
        labels = np.union1d(y_true, y_pred)
        y_true, y_pred = np.searchsorted(labels, y_true), np.searchsorted(labels, y_pred)
        num_classes = len(labels)
    cm = np.bincount(y_true * num_classes + y_pred, minlength=num_classes ** 2)
    return float(per_class(cm.reshape(num_classes, num_classes))["f1"].mean())


def classification_metrics(y_true: np.ndarray, y_pred: np.ndarray,
                           classes: Sequence[str]) -> dict[str, float]:
    """Flat dict: accuracy, macro/weighted F1, and per-class precision / recall /
    specificity / F1 named like ``recall/Covid``."""
    k = len(classes)
    cm = confusion(y_true, y_pred, k)
    pc = per_class(cm)
    out = {"accuracy": accuracy(y_true, y_pred), "macro_f1": macro_f1(y_true, y_pred, k),
           "weighted_f1": float(f1_score(y_true, y_pred, labels=list(range(k)),
                                         average="weighted", zero_division=0))}
    for name in ("precision", "recall", "specificity", "f1"):
        for i, c in enumerate(classes):
            out[f"{name}/{c}"] = float(pc[name][i])
    return out


def report_text(y_true: np.ndarray, y_pred: np.ndarray, classes: Sequence[str]) -> str:
    """scikit-learn's classification report."""
    return classification_report(y_true, y_pred, labels=list(range(len(classes))),
                                 target_names=list(classes), digits=3, zero_division=0)


def bootstrap_ci(y_true: np.ndarray, y_preds: np.ndarray,
                 metric: Callable[[np.ndarray, np.ndarray], float], *, n_boot: int = 1000,
                 level: float = 0.95, seed: int = 0) -> tuple[float, float, float]:
    """(point, low, high): percentile bootstrap over test images of ``metric``.

    y_preds may be (N,) or (S, N) -- S models (e.g. seeds) predicting the same images; the
    statistic is then the mean over models, and each resample draws the same images for all
    models, so the interval covers test-set sampling of the seed-averaged score only: right
    for one trained model, too narrow for a strategy over seeds (it ignores seed-to-seed
    spread; `seed_interval` covers both).
    """
    y_true = np.asarray(y_true)
    preds = np.atleast_2d(np.asarray(y_preds))
    if preds.shape[1] != y_true.shape[0]:
        raise ValueError(f"bootstrap_ci: {preds.shape[1]} predictions for {y_true.shape[0]} labels")
    point = float(np.mean([metric(y_true, p) for p in preds]))
    if n_boot == 0:
        return point, float("nan"), float("nan")
    rng = np.random.default_rng(seed)
    n = y_true.shape[0]
    stats = np.empty(n_boot)
    for b in range(n_boot):
        idx = rng.integers(0, n, n)
        stats[b] = np.mean([metric(y_true[idx], p[idx]) for p in preds])
    alpha = (1 - level) / 2
    low, high = np.quantile(stats, [alpha, 1 - alpha])
    return point, float(low), float(high)


def paired_bootstrap(y_true: np.ndarray, preds_a: np.ndarray, preds_b: np.ndarray,
                     metric: Callable[[np.ndarray, np.ndarray], float], *, n_boot: int = 1000,
                     level: float = 0.95, seed: int = 0) -> tuple[float, float, float]:
    """(difference, low, high): seed-averaged ``metric`` of a minus that of b, with a
    percentile CI from a two-way (seeds x test images) paired bootstrap.

    preds_a, preds_b: (S, N) or (N,); row s of a and row s of b are models trained with the
    same seed, all predicting the same N images.  Seeds and images are crossed, and both are
    random (another training run, another test sample), so every replicate draws N images
    *and* S seeds with replacement, the same draws for a and b: what the two share (hard
    images, a lucky seed) cancels, and the interval still covers both sources of variation
    (conservative by the small interaction term the crossed bootstrap counts twice).  With
    S = 1 it is the ordinary paired bootstrap over images.

    Superseded by `paired_interval`: a percentile bootstrap over 3-5 seeds under-covers
    (0.73-0.88 in simulation), because so few seed values give too narrow a spread.
    """
    y_true = np.asarray(y_true)
    a, b = np.atleast_2d(np.asarray(preds_a)), np.atleast_2d(np.asarray(preds_b))
    if a.shape != b.shape or a.shape[1] != y_true.shape[0]:
        raise ValueError(f"paired_bootstrap: predictions {a.shape} and {b.shape} for "
                         f"{y_true.shape[0]} labels; both must be (seeds, labels)")
    point = float(np.mean([metric(y_true, p) - metric(y_true, q) for p, q in zip(a, b)]))
    if n_boot == 0:
        return point, float("nan"), float("nan")
    rng = np.random.default_rng(seed)
    (s, n), stats = a.shape, np.empty(n_boot)
    for k in range(n_boot):
        idx, seeds = rng.integers(0, n, n), rng.integers(0, s, s)
        y = y_true[idx]
        stats[k] = np.mean([metric(y, a[j, idx]) - metric(y, b[j, idx]) for j in seeds])
    alpha = (1 - level) / 2
    low, high = np.quantile(stats, [alpha, 1 - alpha])
    return point, float(low), float(high)


def mcnemar(y_true: np.ndarray, preds_a: np.ndarray, preds_b: np.ndarray
            ) -> tuple[int, int, float]:
    """(a_only, b_only, p) for ONE pair of models: predictions only a gets right, only b
    gets right, and the exact two-sided McNemar p-value (binomial test of a_only against
    b_only at 1/2).

    (S, N) predictions with S > 1 are refused rather than pooled (the S predictions of one
    image are not independent pairs, so a pooled p is far too small): use
    `mcnemar_per_seed`."""
    a, b = np.asarray(preds_a), np.asarray(preds_b)
    if (a.ndim == 2 and a.shape[0] > 1) or (b.ndim == 2 and b.shape[0] > 1):
        raise ValueError(f"mcnemar: predictions {a.shape} and {b.shape} hold several seeds; "
                         "pooling them is invalid, use mcnemar_per_seed")
    result = mcnemar_per_seed(y_true, a.reshape(-1), b.reshape(-1))
    return int(result.a_only[0]), int(result.b_only[0]), float(result.p[0])


def save_confusion_png(cm: np.ndarray, classes: Sequence[str], path: str | Path,
                       title: str = "") -> Path:
    """Confusion matrix (counts, rows = true) as a PNG."""
    fig = Figure(figsize=(1.2 * len(classes) + 2, 1.2 * len(classes) + 1.5))
    ax = fig.subplots()
    ax.imshow(cm, cmap="Blues")
    for i in range(cm.shape[0]):
        for j in range(cm.shape[1]):
            ax.text(j, i, str(int(cm[i, j])), ha="center", va="center",
                    color="white" if cm[i, j] > cm.max() / 2 else "black")
    ax.set_xticks(range(len(classes)), classes, rotation=30, ha="right")
    ax.set_yticks(range(len(classes)), classes)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(title)
    fig.tight_layout()
    return save_figure(fig, path, tight=False)
