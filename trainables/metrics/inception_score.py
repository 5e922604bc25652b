"""Inception Score (Salimans et al. 2016) from classifier logits.

Only available with an extractor that has the Inception classifier head (pytorch-fid's
weights carry the 1008-way fc; the offline TorchScript does not).
"""
from __future__ import annotations

import numpy as np
import torch


def inception_score(logits: np.ndarray | torch.Tensor, splits: int = 10) -> tuple[float, float]:
    """Mean and standard deviation over `splits` of exp(E_x KL(p(y|x) ‖ p(y)))."""
    t = torch.as_tensor(np.asarray(logits) if not isinstance(logits, torch.Tensor) else logits)
    t = t.to(torch.float64)
    if t.ndim != 2 or t.shape[0] < splits:
        raise ValueError(f"need (N >= splits={splits}, classes) logits; got {tuple(t.shape)}")
    logp = torch.log_softmax(t, dim=1)
    scores = []
    for chunk in torch.tensor_split(logp, splits):
        # log p(y) of the chunk's marginal, computed stably in log space.
        log_py = torch.logsumexp(chunk, dim=0) - np.log(chunk.shape[0])
        kl = (chunk.exp() * (chunk - log_py)).sum(1).mean()
        scores.append(float(kl.exp()))
    return float(np.mean(scores)), float(np.std(scores))
