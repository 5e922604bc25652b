"""Kernel Inception Distance (Bińkowski et al. 2018): unbiased MMD² with a cubic kernel.

Unlike FID, the estimator is unbiased, so small-N values of two samples of one
distribution scatter around 0 instead of sitting on an N-dependent floor.  The whole
sample is used (not random subsets) and the confidence interval comes from the
two-sample jackknife of the U-statistic (Arvesen 1969), computed in O(N²) from the
kernel row sums.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch


@dataclass(frozen=True)
class KidResult:
    """KID value with its jackknife standard error, 95 % interval and sample sizes."""

    kid: float
    se: float
    ci_low: float
    ci_high: float
    n_x: int
    n_y: int


def polynomial_kernel(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """k(x, y) = (xᵀy / d + 1)³, the KID kernel."""
    return (x @ y.T / x.shape[1] + 1.0) ** 3


def _sums(k: torch.Tensor, same: bool) -> tuple[float, torch.Tensor]:
    if same:
        rows = k.sum(1) - k.diagonal()  # off-diagonal row sums
        return float(rows.sum()), rows
    return float(k.sum()), k.sum(1)


def kid(x: np.ndarray | torch.Tensor, y: np.ndarray | torch.Tensor, *,
        z: float = 1.959964, device: torch.device | str | None = None) -> KidResult:
    """Unbiased MMD² between feature sets x (n, d) and y (m, d), n, m >= 3, with a CI."""
    x = torch.as_tensor(np.asarray(x) if not isinstance(x, torch.Tensor) else x)
    y = torch.as_tensor(np.asarray(y) if not isinstance(y, torch.Tensor) else y)
    x, y = x.to(device or "cpu", torch.float64), y.to(device or "cpu", torch.float64)
    n, m = x.shape[0], y.shape[0]
    if n < 3 or m < 3 or x.shape[1] != y.shape[1]:
        raise ValueError(f"KID needs (n>=3, d) and (m>=3, d) features; got {tuple(x.shape)}, "
                         f"{tuple(y.shape)}")
    sxx, rxx = _sums(polynomial_kernel(x, x), True)
    syy, ryy = _sums(polynomial_kernel(y, y), True)
    kxy = polynomial_kernel(x, y)
    sxy = float(kxy.sum())
    value = sxx / (n * (n - 1)) + syy / (m * (m - 1)) - 2 * sxy / (n * m)
    # Leave-one-out estimates: drop x_i (its row and column of Kxx, its row of Kxy) ...
    loo_x = ((sxx - 2 * rxx) / ((n - 1) * (n - 2)) + syy / (m * (m - 1))
             - 2 * (sxy - kxy.sum(1)) / ((n - 1) * m))
    # ... or drop y_j.
    loo_y = (sxx / (n * (n - 1)) + (syy - 2 * ryy) / ((m - 1) * (m - 2))
             - 2 * (sxy - kxy.sum(0)) / (n * (m - 1)))
    var = ((n - 1) / n * float(((loo_x - loo_x.mean()) ** 2).sum())
           + (m - 1) / m * float(((loo_y - loo_y.mean()) ** 2).sum()))
    se = var ** 0.5
    return KidResult(float(value), se, float(value) - z * se, float(value) + z * se, n, m)
