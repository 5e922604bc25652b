"""The one table of per-epoch metric names that can be ranked or optimised, and their direction.

A trial reports more numbers than this (d_loss, d_x, d_g_z1, d_g_z2, d_real_acc, sample sizes,
confidence bounds, the CAS ceiling `cas_real_*`, timings, ...): they describe how a number
was made or how training went, and have no "better" side, so nothing may rank by them.
`test_*` numbers are absent on purpose: selection never reads the test split.

Pure data, no torch: the orchestrator's CLI imports it.
"""
from __future__ import annotations

from dataclasses import dataclass

DIRECTIONS = ("min", "max")
# The evaluations a GAN trial can run each epoch (GanEvaluator's `metrics`; --eval-metrics).
# "memorisation": pixel-space copies (cheap); "memorisation_inception": the same in the FID
# network's feature space, which costs one Inception pass over the training set per data set.
EVALUATIONS = ("fid", "kid", "intra_fid", "is", "cas", "visual", "memorisation",
               "memorisation_inception")
# ... and those that load the Inception network (the FID features).
INCEPTION_EVALUATIONS = ("fid", "kid", "intra_fid", "is", "memorisation_inception")
TRAINABLES = ("gan", "classifier")


@dataclass(frozen=True)
class Metric:
    """A reported number: which way is better, which trainable reports it, and whether a
    search may optimise it (`objective`) or it only helps rank finished epochs."""

    name: str
    direction: str
    trainable: str
    description: str
    objective: bool = True

    def __post_init__(self):
        if self.direction not in DIRECTIONS:
            raise ValueError(f"{self.name}: direction must be one of {DIRECTIONS}")
        if self.trainable not in TRAINABLES:
            raise ValueError(f"{self.name}: trainable must be one of {TRAINABLES}")


def _table(*metrics: Metric) -> dict[str, Metric]:
    return {m.name: m for m in metrics}


METRICS: dict[str, Metric] = _table(
    # GanEvaluator, on its fixed noise-and-label set, every eval_every epochs.
    Metric("fid", "min", "gan", "Fréchet Inception distance of fakes to the real hold-out"),
    Metric("intra_fid", "min", "gan", "mean over classes of the per-class FID"),
    Metric("kid", "min", "gan", "kernel Inception distance (unbiased MMD^2, cubic kernel)"),
    Metric("is", "max", "gan", "Inception Score of the fakes (needs pytorch-fid's 1008-way head)"),
    Metric("cas_acc", "max", "gan",
           "classification accuracy score: accuracy on real images of a classifier trained on fakes"),
    Metric("cas_f1", "max", "gan", "macro F1 on real images of the classifier trained on fakes"),
    Metric("constant_frac", "min", "gan", "fraction of fakes that are (nearly) one flat colour"),
    Metric("diversity_ratio", "max", "gan",
           "smallest per-class ratio of fake to real within-class feature diversity"),
    Metric("class_confusion", "min", "gan",
           "AC-GAN head's class accuracy on fakes minus an independent classifier's"),
    Metric("ref_class_acc", "max", "gan",
           "fraction of fakes an independent classifier assigns to the class asked for",
           objective=False),
    # Memorisation (GanEvaluator "memorisation"): does the generator copy its training images?
    Metric("memorised_share", "min", "gan",
           "share of fakes nearer a training image than the 5 % quantile of unseen real "
           "images' nearest-training distances (pixel space)", objective=False),
    Metric("memorised_share_inception", "min", "gan",
           "memorised_share in Inception feature space (catches shifted or re-contrasted "
           "copies)", objective=False),
    Metric("precision", "max", "gan", "PRDC precision: share of fakes inside the real k-NN "
           "manifold (Inception features)", objective=False),
    Metric("recall", "max", "gan", "PRDC recall: share of real images inside the fakes' k-NN "
           "manifold", objective=False),
    Metric("density", "max", "gan", "PRDC density: mean number of real k-NN balls holding a "
           "fake, over k", objective=False),
    Metric("coverage", "max", "gan", "PRDC coverage: share of real images whose k-NN ball "
           "holds a fake", objective=False),
    # The GAN loop's per-epoch means (trainables.gan.loop.train_epoch).
    Metric("g_loss", "min", "gan", "generator loss, mean over the epoch's G steps"),
    Metric("d_fake_acc", "min", "gan", "fraction of fakes the discriminator calls fake"),
    Metric("aux_class_acc", "max", "gan",
           "AC-GAN discriminator head's class accuracy on real batches", objective=False),
    # The classifier trainable, on the selection hold-out (never the test split).
    Metric("val_loss", "min", "classifier", "unweighted cross-entropy on the validation split"),
    Metric("val_accuracy", "max", "classifier", "accuracy on the validation split"),
    Metric("val_macro_f1", "max", "classifier", "macro F1 on the validation split"),
)

OBJECTIVES: tuple[str, ...] = tuple(n for n, m in METRICS.items() if m.objective)


def direction(name: str) -> str:
    """The direction ("min" | "max") of a metric in `METRICS`; a ValueError listing the
    known names otherwise."""
    try:
        return METRICS[name].direction
    except KeyError:
        raise ValueError(f"unknown metric {name!r}; known metrics: "
                         f"{', '.join(sorted(METRICS))}") from None


def objectives(trainable: str | None = None) -> tuple[str, ...]:
    """The names a search may optimise, optionally only those `trainable` reports."""
    if trainable is not None and trainable not in TRAINABLES:
        raise ValueError(f"unknown trainable {trainable!r}; choose from {TRAINABLES}")
    return tuple(n for n in OBJECTIVES if trainable in (None, METRICS[n].trainable))
