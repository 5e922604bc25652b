"""`ClassifierConfig`: one frozen config per classifier run; unknown keys are errors."""
from __future__ import annotations

from dataclasses import asdict, dataclass, fields

from trainables.models.classifiers import MODELS

STRATEGIES = ("none", "class_weights", "undersample", "oversample", "positional", "gan",
              "gan_positional", "gan_balanced")
GAN_STRATEGIES = ("gan", "gan_positional", "gan_balanced")
# Names that meant something else before issue 21 (class-specific augmentation/synthesis,
# a shortcut the classifier learns); they are errors, not aliases.
RENAMED = {
    "oversample_positional": "it augmented only the minority classes' re-drawn rows, so "
                             "'augmented' marked the class; use 'positional' (real re-draws, "
                             "every row of every class augmented) or 'oversample' (real "
                             "re-draws, no augmentation)",
    "oversample_gan": "only the minority classes held GAN images, so 'synthetic' marked the "
                      "class; use 'gan' (the same rows under its new name, synthetic images "
                      "still only in the filled-up classes) or 'gan_balanced' (the same "
                      "synthetic share in every class)",
}


def strategy_error(strategy: str) -> str | None:
    """Why ``strategy`` is not one of STRATEGIES (naming the new ones), or None if it is."""
    if strategy in RENAMED:
        return f"strategy {strategy!r} was removed (issue 21): {RENAMED[strategy]}"
    if strategy not in STRATEGIES:
        return f"unknown strategy {strategy!r}; choose one of {STRATEGIES}"
    return None


def check_strategy(strategy: str) -> str:
    """``strategy`` if it is one of STRATEGIES, else a ValueError saying why."""
    error = strategy_error(strategy)
    if error:
        raise ValueError(error)
    return strategy


@dataclass(frozen=True)
class ClassifierConfig:
    """A classifier run.  Defaults are S0's (Adam 1e-4, batch 32, up to 50 epochs) with
    S3's early stopping (validation loss, patience 5) at a CPU-friendly 64 px.

    optimizer "sgd" is S1's SGD with Nesterov momentum (lr 0.01, momentum 0.9, batch 256).
    strategy: one of STRATEGIES (imbalance strategies, see `strategies`); gan_ratio: each
    class is filled up to gan_ratio x the largest class's count (1.0 = balanced) by the
    oversampling and GAN strategies; gan_checkpoint: the GAN (generator.pt / epoch dir) the
    GAN strategies use when the caller passes no ``synth`` (so a Tune config alone is
    enough).  pretrained: ImageNet weights for vgg16/resnet50 (False = from scratch).
    evaluate_test: after training, evaluate the best model on the test split once (off for
    searches: selection uses validation only).  exclude_labels, label_map, classes: the data
    loader's class options (`trainables.data.load_image_set`; --exclude-classes,
    --label-map, --classes on the command line).
    """

    source: str = "default"
    resolution: int = 64
    channels: int = 3
    duplicates: str = "error"
    exclude_labels: tuple = ()
    label_map: dict | None = None
    classes: tuple | None = None
    model: str = "s0_cnn"
    pretrained: bool = True
    head: str = "s3"  # vgg16/resnet50: S3's heads, or "s2" (flatten -> 1024 -> 64)
    weights_path: str | None = None
    dropout: float = 0.5
    optimizer: str = "adam"
    lr: float = 1e-4
    momentum: float = 0.9
    nesterov: bool = True
    weight_decay: float = 0.0
    batch_size: int = 32
    epochs: int = 50
    patience: int = 5
    strategy: str = "none"
    gan_checkpoint: str | None = None
    gan_ratio: float = 1.0
    hflip: bool = False
    seed: int = 0
    folds: int = 0
    fold: int = 0
    evaluate_test: bool = False
    n_boot: int = 1000
    gradcam_per_class: int = 2

    def __post_init__(self) -> None:
        checks = [
            (strategy_error(self.strategy) is None, strategy_error(self.strategy)),
            (self.model in MODELS, f"model={self.model!r} must be one of {MODELS}"),
            (self.head in ("s3", "s2"), f"head={self.head!r} must be 's3' or 's2'"),
            (self.optimizer in ("adam", "sgd"), f"optimizer={self.optimizer!r} must be 'adam' or 'sgd'"),
            (self.resolution >= 14, f"resolution={self.resolution} must be >= 14"),
            (self.channels in (1, 3), f"channels={self.channels} must be 1 or 3"),
            (self.duplicates in ("error", "keep", "drop"),
             f"duplicates={self.duplicates!r} must be 'error', 'keep' or 'drop'"),
            (0 <= self.dropout < 1, f"dropout={self.dropout} must be in [0, 1)"),
            (self.lr > 0, f"lr={self.lr} must be > 0"),
            (self.batch_size >= 1, f"batch_size={self.batch_size} must be >= 1"),
            (self.epochs >= 1, f"epochs={self.epochs} must be >= 1"),
            (self.patience >= 1, f"patience={self.patience} must be >= 1"),
            (self.gan_ratio > 0, f"gan_ratio={self.gan_ratio} must be > 0"),
            (self.folds == 0 or self.folds >= 2, f"folds={self.folds} must be 0 (off) or >= 2"),
            (self.folds == 0 or 0 <= self.fold < self.folds, f"fold={self.fold} must be in [0, folds)"),
            (self.n_boot >= 0, f"n_boot={self.n_boot} must be >= 0"),
            (self.gradcam_per_class >= 0, f"gradcam_per_class={self.gradcam_per_class} must be >= 0"),
        ]
        bad = [msg for ok, msg in checks if not ok]
        if bad:
            raise ValueError("invalid ClassifierConfig: " + "; ".join(bad))

    @classmethod
    def from_dict(cls, values: dict) -> "ClassifierConfig":
        """Build from a dict (a Tune config); unknown keys raise and list the valid ones."""
        names = {f.name for f in fields(cls)}
        unknown = sorted(set(values) - names)
        if unknown:
            raise ValueError(f"unknown ClassifierConfig key(s) {unknown}; valid keys: {sorted(names)}")
        return cls(**values)

    def to_dict(self) -> dict:
        return asdict(self)
