"""Divergence guard: end a run that is burning its budget, with a recorded reason.

Four triggers (shared/SYSTEMS.md S2's failures, AC-GAN's within-class collapse, and the
obvious one):
- a non-finite G or D loss;
- D loss below a floor for `patience` epochs while G loss rose in each of them (D wins, G
  diverges): only for families whose D loss has a floor at 0 (BCE), not for a critic's
  unbounded loss (`Family.d_wins_guard`);
- a collapsed generator: the per-pixel std across the fixed samples of a class ~ 0 (S2's
  uniform grey image);
- near-copies within a class: the evaluator's `diversity_ratio` (Inception-feature spread of
  a class's fakes against its real images, smallest over classes) below `min_diversity` at
  `patience` evaluations in a row (checked after evaluation, from `warmup` on).
"""
from __future__ import annotations

import math
from typing import Sequence

import torch

from trainables.gan.config import GANConfig
from trainables.gan.families import FAMILIES


def nonfinite_reason(metrics: dict[str, float]) -> str | None:
    """A reason if a loss that was actually computed this epoch is NaN/inf."""
    for key, steps in (("g_loss", "g_steps"), ("d_loss", "d_steps")):
        if metrics.get(steps, 1) > 0 and not math.isfinite(metrics.get(key, 0.0)):
            return f"non-finite {key} ({metrics[key]})"
    return None


def d_wins_reason(d_losses: Sequence[float], g_losses: Sequence[float], floor: float,
                  patience: int) -> str | None:
    """A reason if the last `patience` D losses are all < floor and G loss rose every epoch."""
    if len(d_losses) < patience or len(g_losses) < patience:
        return None
    d, g = d_losses[-patience:], g_losses[-patience:]
    if all(x < floor for x in d) and all(b > a for a, b in zip(g, g[1:])):
        return (f"discriminator won: D loss < {floor} for {patience} epochs while G loss rose "
                f"{g[0]:.4g} -> {g[-1]:.4g}")
    return None


def collapse_reason(samples: torch.Tensor, labels: torch.Tensor, min_std: float) -> str | None:
    """A reason if, for some class, the fixed samples are ~ the same image: mean over pixels
    of the per-pixel std across samples < min_std (images in [-1, 1])."""
    if min_std <= 0:
        return None
    for c in labels.unique().tolist():
        x = samples[labels.to(samples.device) == c].float()
        if x.shape[0] < 2:
            continue
        spread = float(x.std(dim=0).mean())
        if spread < min_std:
            return (f"generator collapsed: class {c} samples have per-pixel std {spread:.3g} "
                    f"< guard_collapse_std {min_std}")
    return None


class DivergenceGuard:
    """Keeps the loss history and applies the checks once per epoch.  `d_wins=False`
    leaves out the "D wins" check (a critic's loss has no floor)."""

    def __init__(self, d_loss_floor: float, patience: int, collapse_std: float, warmup: int = 0,
                 min_diversity: float = 0.0, d_wins: bool = True):
        self.d_loss_floor, self.patience, self.collapse_std = d_loss_floor, patience, collapse_std
        self.warmup, self.min_diversity, self.d_wins = warmup, min_diversity, d_wins
        self.d_losses: list[float] = []
        self.g_losses: list[float] = []
        self.low_diversity: list[float] = []  # the current run of evaluations below the floor

    def update(self, metrics: dict[str, float], samples: torch.Tensor,
               labels: torch.Tensor) -> str | None:
        """Record this epoch and return a stop reason, or None to go on.  The collapse check
        starts at epoch `warmup`: a freshly initialised G is itself a near-constant image."""
        reason = nonfinite_reason(metrics)
        if reason:
            return reason
        if metrics.get("d_steps", 1) > 0 and metrics.get("g_steps", 1) > 0:
            self.d_losses.append(float(metrics["d_loss"]))
            self.g_losses.append(float(metrics["g_loss"]))
        d_won = (d_wins_reason(self.d_losses, self.g_losses, self.d_loss_floor, self.patience)
                 if self.d_wins else None)
        collapsed = (collapse_reason(samples, labels, self.collapse_std)
                     if metrics.get("epoch", 0) >= self.warmup else None)
        return d_won or collapsed

    def after_eval(self, metrics: dict[str, float]) -> str | None:
        """The within-class collapse check on an evaluated epoch's `diversity_ratio`."""
        value = metrics.get("diversity_ratio")
        if self.min_diversity <= 0 or value is None or metrics.get("epoch", 0) < self.warmup:
            return None
        self.low_diversity = self.low_diversity + [float(value)] if value < self.min_diversity else []
        if len(self.low_diversity) >= self.patience:
            return (f"generator collapsed within a class: diversity_ratio "
                    f"{', '.join(f'{v:.3f}' for v in self.low_diversity[-self.patience:])} < "
                    f"guard_min_diversity {self.min_diversity} at {self.patience} evaluations "
                    "in a row (a class's samples are near-copies of one another)")
        return None

    @classmethod
    def for_config(cls, cfg: GANConfig) -> "DivergenceGuard":
        """The guard `cfg` asks for, with the checks its family's loss allows."""
        return cls(cfg.guard_d_loss_floor, cfg.guard_patience, cfg.guard_collapse_std,
                   cfg.guard_warmup, cfg.guard_min_diversity,
                   d_wins=FAMILIES[cfg.family].d_wins_guard)

    def state_dict(self) -> dict:
        return {"d_losses": list(self.d_losses), "g_losses": list(self.g_losses),
                "low_diversity": list(self.low_diversity)}

    def load_state_dict(self, state: dict) -> None:
        self.d_losses = [float(x) for x in state["d_losses"]]
        self.g_losses = [float(x) for x in state["g_losses"]]
        self.low_diversity = [float(x) for x in state.get("low_diversity", [])]
