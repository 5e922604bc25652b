"""The one frozen config of a GAN training run (every knob of issue #3)."""
from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import Any, Optional, Union

from trainables.gan.diffaugment import parse_policy
from trainables.gan.families import FAMILIES
from trainables.gan.sampling import LATENT_DISTS
from trainables.models.acgan import D_REGULARIZATION

OPTIMIZERS = ("adam", "sgd")
LR_SCHEDULERS = ("none", "cosine_warm_restarts", "step", "exponential")
D_UPDATES = ("joint", "separate")
# torch.compile modes for the training step; "reduce-overhead" adds CUDA graphs.
COMPILE_MODES = ("none", "default", "reduce-overhead", "max-autotune")


@dataclass(frozen=True)
class GANConfig:
    """All settings of one GAN run.  Defaults are a CPU smoke run (32 px, narrow nets);
    `trainables.gan.presets.preset(...)` gives the seed-size settings."""

    family: str = "acgan"                 # a name in trainables.gan.families.FAMILIES
    variant: Optional[str] = None         # architecture variant; None -> the family's first
    resolution: int = 32
    channels: int = 1
    latent_dim: int = 100
    latent_dist: str = "normal"           # z ~ "normal" N(0, 1) | "uniform" U(-1, 1) (S1)
    width: float = 0.25                   # channel multiplier; 1.0 = seed sizes
    embed_dim: int = 50                   # label embedding size (AC-GAN, cGAN)
    batch_size: int = 32
    epochs: int = 3
    steps_per_epoch: Optional[int] = None  # cap on batches per epoch (S0: 460); None = full pass
    g_batch_size: Optional[int] = None    # z per G step; None = batch_size (S4: 128 on 64 real)
    d_updates: str = "joint"              # "joint": one D update on real + fake (two passes);
                                          # "separate": one on real, then one on fake (S4)
    diffaugment: str = ""                 # DiffAugment policy before D, e.g. "color,translation,cutout"
    real_shear: float = 0.0               # S0: random shear of real images, max degrees ...
    real_zoom: float = 0.0                # ... and zoom, max relative change (0 = off)
    optimizer: str = "adam"               # "adam" | "sgd"
    lr_g: float = 2e-4
    lr_d: float = 2e-4
    beta1: float = 0.5
    beta2: float = 0.999
    momentum: float = 0.9                 # SGD only
    nesterov: bool = False                # SGD only
    d_steps_per_g: int = 1                # n D steps per G step ...
    g_steps_per_d: int = 1                # ... or one D step every K G steps (S2: K=10)
    scheduler: str = "none"               # "none" | "cosine_warm_restarts" | "step" | "exponential"
    t_0: int = 10                         # CosineAnnealingWarmRestarts period, epochs
    step_size: int = 30                   # StepLR period, epochs
    gamma: float = 0.95                   # StepLR / ExponentialLR factor
    label_smoothing: float = 0.0          # one-sided: D's real target is 1 - label_smoothing (BCE)
    flip_labels_g: bool = True            # G trained with fakes labelled real (non-saturating BCE)
    d_regularization: str = "dcgan"       # AC-GAN D: "dcgan" (no BN on the input block, dropout
                                          # 0.25) | "seed" (S0/S3's text: BN + dropout 0.5 everywhere)
    aux_weight: float = 1.0               # AC-GAN: L = L_source + aux_weight * L_class (S0: 1)
    seed: int = 0
    eval_every: int = 1                   # call `evaluate` every this many epochs (and at the last)
    eval_every_images: int = 0            # or each time this many more images were seen (0: off)
    min_evals: int = 0                    # with eval_every_images: also every budget/min_evals
                                          # (epochs, or max_images), so a short trial or a
                                          # small batch is still evaluated before its end
    max_images: int = 0                   # stop after this many training images (0: epochs decide)
    state_every: int = 10                 # full training state (G, D, optimisers: what resume
                                          # needs) every this many epochs, at the last and at
                                          # any stop (2 kept); generator.pt every epoch
    grid_per_class: int = 8               # fixed samples per class in grid.png
    guard_d_loss_floor: float = 0.01      # D loss below this (BCE families) ...
    guard_patience: int = 5               # ... for this many epochs with G loss rising -> stop
    guard_collapse_std: float = 1e-3      # per-pixel std of the fixed samples below this -> stop (0 = off)
    guard_min_diversity: float = 0.0      # diversity_ratio below this at guard_patience evaluations -> stop (0 = off)
    guard_warmup: int = 5                 # no collapse check before this epoch (a fresh G is near-constant)
    dcgan_classes: Optional[Union[str, tuple]] = None  # None = all; class names/indices; or "minority"
    amp: bool = True                      # bf16 autocast on CUDA; no-op on CPU (s1's preset: off)
    compile: str = "none"                 # torch.compile of G and D for the training step on
                                          # CUDA: "none" | "default" | "reduce-overhead" (CUDA
                                          # graphs) | "max-autotune"; ignored on CPU
    channels_last: bool = True            # on CUDA only
    num_workers: int = 0

    def __post_init__(self) -> None:
        if self.family not in FAMILIES:
            raise ValueError(f"GANConfig.family={self.family!r}: choose one of {sorted(FAMILIES)}")
        variants = FAMILIES[self.family].variants
        variant = self.variant or variants[0]
        if variant not in variants:
            raise ValueError(f"GANConfig.variant={self.variant!r} is not a {self.family} variant; "
                             f"choose one of {variants}")
        object.__setattr__(self, "variant", variant)
        if isinstance(self.dcgan_classes, list):
            object.__setattr__(self, "dcgan_classes", tuple(self.dcgan_classes))
        for err in _problems(self):
            raise ValueError(f"GANConfig: {err}")

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "GANConfig":
        """Build from a plain dict; an unknown key is an error naming it."""
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ValueError(f"unknown GANConfig key(s) {unknown}; valid keys: {sorted(known)}")
        return cls(**d)

    def to_dict(self) -> dict[str, Any]:
        """Plain-Python dict (tuples as lists) that round-trips through `from_dict`."""
        d = asdict(self)
        if isinstance(d["dcgan_classes"], tuple):
            d["dcgan_classes"] = list(d["dcgan_classes"])
        return d

    def replace(self, **changes: Any) -> "GANConfig":
        """A copy with some fields changed (validated like `from_dict`)."""
        return GANConfig.from_dict({**self.to_dict(), **changes})


def _problems(c: GANConfig) -> list[str]:
    """Every invalid value, as messages naming the field and the allowed range."""
    family = FAMILIES[c.family]
    checks = [
        (c.resolution >= 16, f"resolution={c.resolution} must be >= 16"),
        (c.channels in (1, 3), f"channels={c.channels} must be 1 or 3"),
        (c.latent_dim >= 1, f"latent_dim={c.latent_dim} must be >= 1"),
        (c.latent_dist in LATENT_DISTS, f"latent_dist={c.latent_dist!r}: choose one of {LATENT_DISTS}"),
        (c.g_batch_size is None or c.g_batch_size >= 2,
         f"g_batch_size={c.g_batch_size} must be None (= batch_size) or >= 2"),
        (c.d_updates in D_UPDATES, f"d_updates={c.d_updates!r}: choose one of {D_UPDATES}"),
        (c.d_updates != "separate" or not family.loss.joint_only,
         f"d_updates='separate' does not apply to family={c.family!r}: its D loss is one "
         "objective over real and fake together; use d_updates='joint'"),
        (0 <= c.real_shear < 45, f"real_shear={c.real_shear} must be in [0, 45) degrees"),
        (0 <= c.real_zoom < 0.5, f"real_zoom={c.real_zoom} must be in [0, 0.5)"),
        (c.width > 0, f"width={c.width} must be > 0"),
        (c.embed_dim >= 1, f"embed_dim={c.embed_dim} must be >= 1"),
        (c.batch_size >= 2, f"batch_size={c.batch_size} must be >= 2 (BatchNorm needs 2)"),
        (c.epochs >= 1, f"epochs={c.epochs} must be >= 1"),
        (c.steps_per_epoch is None or c.steps_per_epoch >= 1,
         f"steps_per_epoch={c.steps_per_epoch} must be None (full pass) or >= 1"),
        (c.optimizer in OPTIMIZERS, f"optimizer={c.optimizer!r}: choose one of {OPTIMIZERS}"),
        (c.lr_g > 0 and c.lr_d > 0, f"lr_g={c.lr_g}, lr_d={c.lr_d}: learning rates must be > 0"),
        (0 <= c.beta1 < 1 and 0 <= c.beta2 < 1, f"beta1={c.beta1}, beta2={c.beta2} must be in [0, 1)"),
        (c.momentum >= 0, f"momentum={c.momentum} must be >= 0"),
        (not (c.nesterov and c.momentum <= 0), "nesterov=True needs momentum > 0"),
        (c.d_steps_per_g >= 1, f"d_steps_per_g={c.d_steps_per_g} must be >= 1"),
        (c.g_steps_per_d >= 1, f"g_steps_per_d={c.g_steps_per_d} must be >= 1"),
        (c.d_steps_per_g == 1 or c.g_steps_per_d == 1,
         "set only one of d_steps_per_g / g_steps_per_d above 1"),
        (c.scheduler in LR_SCHEDULERS, f"scheduler={c.scheduler!r}: choose one of {LR_SCHEDULERS}"),
        (c.t_0 >= 1, f"t_0={c.t_0} must be >= 1"),
        (c.step_size >= 1, f"step_size={c.step_size} must be >= 1"),
        (0 < c.gamma <= 1, f"gamma={c.gamma} must be in (0, 1]"),
        (c.d_regularization in D_REGULARIZATION,
         f"d_regularization={c.d_regularization!r}: choose one of {sorted(D_REGULARIZATION)}"),
        (c.aux_weight >= 0, f"aux_weight={c.aux_weight} must be >= 0"),
        (0 <= c.label_smoothing < 0.5, f"label_smoothing={c.label_smoothing} must be in [0, 0.5)"),
        (c.eval_every >= 1, f"eval_every={c.eval_every} must be >= 1"),
        (c.eval_every_images >= 0, f"eval_every_images={c.eval_every_images} must be >= 0"),
        (c.min_evals >= 0, f"min_evals={c.min_evals} must be >= 0"),
        (c.max_images >= 0, f"max_images={c.max_images} must be >= 0 (0: no image budget)"),
        (c.state_every >= 1, f"state_every={c.state_every} must be >= 1"),
        (c.grid_per_class >= 2, f"grid_per_class={c.grid_per_class} must be >= 2 (the collapse check needs a spread)"),
        (c.guard_d_loss_floor >= 0, f"guard_d_loss_floor={c.guard_d_loss_floor} must be >= 0"),
        (c.guard_patience >= 2, f"guard_patience={c.guard_patience} must be >= 2 (a rise needs 2 epochs)"),
        (c.guard_collapse_std >= 0, f"guard_collapse_std={c.guard_collapse_std} must be >= 0"),
        (0 <= c.guard_min_diversity < 1, f"guard_min_diversity={c.guard_min_diversity} must be in [0, 1)"),
        (c.guard_warmup >= 0, f"guard_warmup={c.guard_warmup} must be >= 0"),
        (c.compile in COMPILE_MODES, f"compile={c.compile!r}: choose one of {COMPILE_MODES}"),
        (c.num_workers >= 0, f"num_workers={c.num_workers} must be >= 0"),
        (c.dcgan_classes is None or c.dcgan_classes == "minority"
         or (isinstance(c.dcgan_classes, tuple) and len(c.dcgan_classes) > 0),
         f"dcgan_classes={c.dcgan_classes!r}: use None (all), 'minority', or a non-empty list of class names/indices"),
        (c.dcgan_classes is None or family.per_class,
         f"dcgan_classes is only meaningful for a per-class family "
         f"({[k for k, f in FAMILIES.items() if f.per_class]}; family={c.family!r})"),
    ]
    try:
        parse_policy(c.diffaugment)
    except ValueError as err:
        checks.append((False, f"diffaugment={c.diffaugment!r}: {err}"))
    return [msg for ok, msg in checks if not ok]
