"""The adversarial losses a family trains with, as objects the update step calls.

The loop (`trainables.gan.loop`) owns the passes: D on the real batch, D on the fake batch
(separately, for D's BatchNorm), the backward and the optimizer steps.  A loss object only
turns D's outputs into numbers:

- `d_real(src, cls, labels, cfg)` / `d_fake(...)`: D's loss on a real / a fake batch, from
  D's raw source output `src` (N,) and its class logits `cls` (N, K) or None;
- `d_penalty(critic, real, fake)`: an extra term of D's loss that needs D on other inputs
  (WGAN-GP's gradient penalty), or None; `critic(x)` is D's source output on x, through the
  same (possibly DDP-wrapped) D, so the term joins D's one backward;
- `g(src, cls, labels, cfg)`: G's loss on D's outputs for a fake batch;
- `d_stats(src_real, src_fake, penalty)` / `g_stats(src_fake)`: the logged numbers, as
  detached 0-d tensors (no GPU sync per step).  Every loss gives d_x, d_g_z1, d_real_acc,
  d_fake_acc and d_g_z2; `extra_keys` names the D-step numbers it adds;
- `joint_only`: True when D's loss is one objective that must not be split into a real-only
  and a fake-only update (`d_updates="separate"`); GANConfig rejects that combination.

They live here rather than in loop.py because `GANConfig` validates against the family
registry, which holds these objects, and loop.py imports config: a loss in loop.py would
be an import cycle.  Nor in families.py: the registry stays a table, and the maths is
tested on its own against hand-computed values.  They are plain classes without per-run
state, so one instance serves every run.
"""
from __future__ import annotations

from typing import Callable, Protocol

import torch
import torch.nn.functional as F

Critic = Callable[[torch.Tensor], torch.Tensor]
Stats = dict[str, torch.Tensor]


class LossSettings(Protocol):
    """The `GANConfig` fields a loss reads (GANConfig is not imported here: config imports
    the family registry, which imports this module)."""

    label_smoothing: float
    flip_labels_g: bool
    aux_weight: float


class GANLoss(Protocol):
    """What the update step calls (see the module docstring)."""

    extra_keys: tuple[str, ...]
    joint_only: bool

    def d_real(self, src: torch.Tensor, cls: torch.Tensor | None, labels: torch.Tensor,
               cfg: LossSettings) -> torch.Tensor: ...

    def d_fake(self, src: torch.Tensor, cls: torch.Tensor | None, labels: torch.Tensor,
               cfg: LossSettings) -> torch.Tensor: ...

    def d_penalty(self, critic: Critic, real: torch.Tensor,
                  fake: torch.Tensor) -> torch.Tensor | None: ...

    def g(self, src: torch.Tensor, cls: torch.Tensor | None, labels: torch.Tensor,
          cfg: LossSettings) -> torch.Tensor: ...

    def d_stats(self, src_real: torch.Tensor, src_fake: torch.Tensor,
                penalty: torch.Tensor | None) -> Stats: ...

    def g_stats(self, src_fake: torch.Tensor) -> Stats: ...


def _bce(logits: torch.Tensor, target: float) -> torch.Tensor:
    return F.binary_cross_entropy_with_logits(logits, torch.full_like(logits, target))


def _class_loss(loss: torch.Tensor, cls: torch.Tensor | None, labels: torch.Tensor,
                cfg: LossSettings) -> torch.Tensor:
    """AC-GAN: L = L_source + aux_weight * L_class (S0/S3), for D on real and fake alike and
    for G (Odena et al.: L_C on both)."""
    if cls is None:
        return loss
    return loss + cfg.aux_weight * F.cross_entropy(cls, labels)


class BCELoss:
    """The standard GAN loss on a logit: D minimises BCE(real, 1 - label_smoothing) +
    BCE(fake, 0); G the non-saturating BCE(fake, 1) (label flipping, S0), or with
    `flip_labels_g=False` the original minimax -BCE(fake, 0).  Logged numbers are
    probabilities: d_x / d_g_z1 / d_g_z2 = mean sigmoid(D) of real / fake in D's step /
    fake in G's step; d_real_acc / d_fake_acc = share of real / fake on the right side of 0.5."""

    extra_keys: tuple[str, ...] = ()
    joint_only = False

    def d_real(self, src: torch.Tensor, cls: torch.Tensor | None, labels: torch.Tensor,
               cfg: LossSettings) -> torch.Tensor:
        # One-sided label smoothing: only the real target moves (Salimans et al. 2016).
        return _class_loss(_bce(src, 1.0 - cfg.label_smoothing), cls, labels, cfg)

    def d_fake(self, src: torch.Tensor, cls: torch.Tensor | None, labels: torch.Tensor,
               cfg: LossSettings) -> torch.Tensor:
        return _class_loss(_bce(src, 0.0), cls, labels, cfg)

    def d_penalty(self, critic: Critic, real: torch.Tensor, fake: torch.Tensor) -> None:
        return None

    def g(self, src: torch.Tensor, cls: torch.Tensor | None, labels: torch.Tensor,
          cfg: LossSettings) -> torch.Tensor:
        # Label flipping (S0): fakes labelled real, i.e. the non-saturating loss; without it
        # G minimises log(1 - D(G(z))) (the original minimax loss).
        loss = _bce(src, 1.0) if cfg.flip_labels_g else -_bce(src, 0.0)
        return _class_loss(loss, cls, labels, cfg)

    def d_stats(self, src_real: torch.Tensor, src_fake: torch.Tensor,
                penalty: torch.Tensor | None) -> Stats:
        p_r, p_f = torch.sigmoid(src_real), torch.sigmoid(src_fake)
        return dict(d_x=p_r.mean(), d_g_z1=p_f.mean(), d_real_acc=(p_r > 0.5).float().mean(),
                    d_fake_acc=(p_f < 0.5).float().mean())

    def g_stats(self, src_fake: torch.Tensor) -> Stats:
        return {"d_g_z2": torch.sigmoid(src_fake).mean()}


def gradient_penalty(critic: Critic, real: torch.Tensor, fake: torch.Tensor,
                     eps: torch.Tensor | None = None) -> torch.Tensor:
    """E[(||grad_x critic(x_hat)||_2 - 1)^2] at x_hat = eps * real + (1 - eps) * fake, one
    eps ~ U(0, 1) per sample (Gulrajani et al. 2017, Algorithm 1), the norm over all of a
    sample's pixels.  The graph is kept (create_graph) so the penalty trains the critic."""
    real, fake = real.detach(), fake.detach()
    if eps is None:
        eps = torch.rand(real.shape[0], device=real.device, dtype=real.dtype)
    eps = eps.view(-1, *([1] * (real.dim() - 1)))
    x_hat = (eps * real + (1 - eps) * fake).requires_grad_(True)
    score = critic(x_hat).float()
    grad, = torch.autograd.grad(score.sum(), x_hat, create_graph=True)
    norm = grad.flatten(1).float().norm(2, dim=1)
    return ((norm - 1) ** 2).mean()


class WassersteinGPLoss:
    """WGAN-GP (Gulrajani et al. 2017): the critic minimises E[D(fake)] - E[D(real)] +
    penalty_weight * gradient_penalty, G minimises -E[D(fake)].  D's output is an unbounded
    score, not a logit.  label_smoothing and flip_labels_g are ignored on purpose: there is
    no target to smooth, and the G loss has no saturating form to flip from.

    Logged numbers: d_x / d_g_z1 / d_g_z2 = mean critic score of real / fake in D's step /
    fake in G's step (their difference, not their level, is meaningful); d_real_acc /
    d_fake_acc = share of real / fake scores on their side of the midpoint between the two
    batch means (how well the critic separates them); wasserstein_estimate = E[D(real)] -
    E[D(fake)], the critic's estimate of the distance (should fall as G learns);
    gradient_penalty = the weighted penalty, the part of d_loss that is not -W."""

    extra_keys = ("wasserstein_estimate", "gradient_penalty")
    # -E[D(real)] alone is unbounded and the penalty needs both batches: splitting the
    # critic's objective into two updates is not WGAN-GP.
    joint_only = True

    def __init__(self, penalty_weight: float = 10.0):
        self.penalty_weight = penalty_weight

    def d_real(self, src: torch.Tensor, cls: torch.Tensor | None, labels: torch.Tensor,
               cfg: LossSettings) -> torch.Tensor:
        return -src.mean()

    def d_fake(self, src: torch.Tensor, cls: torch.Tensor | None, labels: torch.Tensor,
               cfg: LossSettings) -> torch.Tensor:
        return src.mean()

    def d_penalty(self, critic: Critic, real: torch.Tensor, fake: torch.Tensor) -> torch.Tensor:
        return self.penalty_weight * gradient_penalty(critic, real, fake)

    def g(self, src: torch.Tensor, cls: torch.Tensor | None, labels: torch.Tensor,
          cfg: LossSettings) -> torch.Tensor:
        return -src.mean()

    def d_stats(self, src_real: torch.Tensor, src_fake: torch.Tensor,
                penalty: torch.Tensor | None) -> Stats:
        mean_r, mean_f = src_real.mean(), src_fake.mean()
        mid = (mean_r + mean_f) / 2
        return dict(d_x=mean_r, d_g_z1=mean_f, d_real_acc=(src_real > mid).float().mean(),
                    d_fake_acc=(src_fake < mid).float().mean(),
                    wasserstein_estimate=mean_r - mean_f,
                    gradient_penalty=(penalty.detach() if penalty is not None
                                      else torch.zeros_like(mean_r)))

    def g_stats(self, src_fake: torch.Tensor) -> Stats:
        return {"d_g_z2": src_fake.mean()}
