"""The GAN family registry: `FAMILIES` is the only list of family names, and each entry
says everything that differs between families, so that config validation, model building,
the update step, the data loader and the divergence guard look a family up here instead of
testing its name.

Adding a family: its models file (`trainables/models/<family>.py`), a builder per net
below when no existing one fits, and one entry in `FAMILIES`; a new adversarial loss goes
in `trainables/gan/losses.py`.

Import order: models and losses <- this module <- config <- build / loop / guard / train.
Nothing here may import `trainables.gan.config`, not even for type hints (config imports
this module; tests/test_architecture.py counts every import).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Optional, Sequence

from torch import nn

from trainables.gan.losses import BCELoss, GANLoss, WassersteinGPLoss
from trainables.models.acgan import ACGAN_VARIANTS, ACGANDiscriminator, ACGANGenerator
from trainables.models.cgan import CGAN_VARIANTS, CGANDiscriminator, CGANGenerator
from trainables.models.dcgan import DCGAN_VARIANTS, PerClassDiscriminator, PerClassGenerator
from trainables.models.wgan_gp import WGAN_GP_VARIANTS, WGANGPCritic

# (cfg, num_classes, class names or None, trained class indices) -> G or D, cfg a GANConfig
# (not imported: config imports this module).  Every G is called as G(z, labels); every D as
# D(x, labels) -> (source output (N,), class logits or None).
BuildNet = Callable[[Any, int, Optional[Sequence[str]], Sequence[int]], nn.Module]


@dataclass(frozen=True)
class Family:
    """What makes a GAN family.

    variants: architecture variants (the models module's `*_VARIANTS`); the first is the default.
    build_generator, build_discriminator: `BuildNet`s for G and D.
    loss: the adversarial loss and its logged numbers (`trainables.gan.losses`).
    per_class: one (G, D) pair per trained class (S1's DCGAN): batches hold one class,
        `dcgan_classes` picks the classes, a rank's batch leaves other classes' nets unused.
    class_head: D also predicts the class (AC-GAN): the class loss, `aux_class_acc`, and
        D(x)[1] (no labels needed) handed to the evaluator's class check.
    d_wins_guard: the guard's "D wins" check applies (it assumes a loss with a floor at 0,
        i.e. BCE; a critic's loss is unbounded below).
    defaults: GANConfig overrides this family recommends, for a caller to apply on top of a
        seed preset (before the search space or the user's own overrides).  Do not mutate.
    """

    variants: tuple[str, ...]
    build_generator: BuildNet
    build_discriminator: BuildNet
    loss: GANLoss
    per_class: bool = False
    class_head: bool = False
    d_wins_guard: bool = True
    defaults: dict[str, Any] = field(default_factory=dict)


def _g_shape(cfg) -> dict[str, Any]:
    return dict(resolution=cfg.resolution, channels=cfg.channels, width=cfg.width,
                latent_dim=cfg.latent_dim)


def _d_shape(cfg) -> dict[str, Any]:
    return dict(resolution=cfg.resolution, channels=cfg.channels, width=cfg.width)


def _acgan_generator(cfg, num_classes, classes, class_indices) -> nn.Module:
    return ACGANGenerator(num_classes, embed_dim=cfg.embed_dim, **_g_shape(cfg))


def _acgan_discriminator(cfg, num_classes, classes, class_indices) -> nn.Module:
    return ACGANDiscriminator(num_classes, variant=cfg.variant,
                              regularization=cfg.d_regularization, **_d_shape(cfg))


def _per_class_generator(cfg, num_classes, classes, class_indices) -> nn.Module:
    return PerClassGenerator(class_indices, classes, variant=cfg.variant, **_g_shape(cfg))


def _per_class_discriminator(cfg, num_classes, classes, class_indices) -> nn.Module:
    return PerClassDiscriminator(class_indices, classes, variant=cfg.variant, **_d_shape(cfg))


def _cgan_generator(cfg, num_classes, classes, class_indices) -> nn.Module:
    return CGANGenerator(num_classes, embed_dim=cfg.embed_dim, **_g_shape(cfg))


def _cgan_discriminator(cfg, num_classes, classes, class_indices) -> nn.Module:
    return CGANDiscriminator(num_classes, embed_dim=cfg.embed_dim, **_d_shape(cfg))


def _wgan_gp_critic(cfg, num_classes, classes, class_indices) -> nn.Module:
    return WGANGPCritic(num_classes, variant=cfg.variant, **_d_shape(cfg))


_BCE = BCELoss()

FAMILIES: dict[str, Family] = {
    "acgan": Family(variants=ACGAN_VARIANTS, build_generator=_acgan_generator,
                    build_discriminator=_acgan_discriminator, loss=_BCE, class_head=True),
    "dcgan": Family(variants=DCGAN_VARIANTS, build_generator=_per_class_generator,
                    build_discriminator=_per_class_discriminator, loss=_BCE, per_class=True),
    "cgan": Family(variants=CGAN_VARIANTS, build_generator=_cgan_generator,
                   build_discriminator=_cgan_discriminator, loss=_BCE),
    # Defaults: the paper's (Algorithm 1), Adam lr 1e-4, betas (0, 0.9), five critic steps
    # per G step; g_steps_per_d=1 because a preset's slow D (S2: 10) cannot be combined.
    "wgan_gp": Family(variants=WGAN_GP_VARIANTS, build_generator=_cgan_generator,
                      build_discriminator=_wgan_gp_critic,
                      loss=WassersteinGPLoss(penalty_weight=10.0), d_wins_guard=False,
                      defaults=dict(optimizer="adam", lr_g=1e-4, lr_d=1e-4, beta1=0.0,
                                    beta2=0.9, d_steps_per_g=5, g_steps_per_d=1)),
}
