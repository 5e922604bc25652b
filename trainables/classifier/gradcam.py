"""Grad-CAM (Selvaraju et al. 2017) on a classifier's last conv layer, as in S0."""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from matplotlib.figure import Figure
from torch import nn

from trainables.figures import save as save_figure
from trainables.models.classifiers import last_conv


def gradcam(model: nn.Module, x: torch.Tensor, target: torch.Tensor | None = None,
            layer: nn.Module | None = None) -> torch.Tensor:
    """Heat maps (N, H, W) in [0, 1] for classes ``target`` (default: the predicted ones).

    Channel weights are the spatially averaged gradients of the class score at ``layer``
    (default: the last Conv2d); the map is ReLU(sum_k w_k A_k), upsampled to the input.
    """
    layer = layer or last_conv(model)
    store: dict[str, torch.Tensor] = {}

    def hook(_m, _inp, out):
        out.retain_grad()
        store["act"] = out

    handle = layer.register_forward_hook(hook)
    was_training = model.training
    model.eval()
    try:
        with torch.enable_grad():
            x = x.detach().requires_grad_(True)  # so frozen backbones still carry a graph
            logits = model(x)
            if target is None:
                target = logits.argmax(1)
            score = logits.gather(1, target.view(-1, 1).to(logits.device)).sum()
            model.zero_grad(set_to_none=True)
            score.backward()
        act, grad = store["act"], store["act"].grad
        weights = grad.mean(dim=(2, 3), keepdim=True)
        cam = F.relu((weights * act).sum(1, keepdim=True))
        cam = F.interpolate(cam, size=x.shape[-2:], mode="bilinear", align_corners=False)[:, 0]
        peak = cam.flatten(1).max(1).values.clamp_min(1e-12).view(-1, 1, 1)
        return (cam / peak).detach().cpu()
    finally:
        handle.remove()
        model.train(was_training)


def save_gradcam_png(images: torch.Tensor, cams: torch.Tensor, titles: Sequence[str],
                     path: str | Path) -> Path:
    """A grid: each image (NCHW in [0, 1]) with its heat map overlaid, one titled panel each."""
    n = images.shape[0]
    cols = min(n, 6)
    rows = max(1, -(-n // cols))
    fig = Figure(figsize=(2.2 * cols, 2.4 * rows))
    axes = fig.subplots(rows, cols, squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for i in range(n):
        ax = axes.flat[i]
        img = images[i].mean(0).cpu().numpy()
        ax.imshow(img, cmap="gray", vmin=0, vmax=1)
        ax.imshow(cams[i].numpy(), cmap="jet", alpha=0.4, vmin=0, vmax=1)
        ax.set_title(titles[i], fontsize=7)
    fig.tight_layout()
    return save_figure(fig, path, tight=False)


def pick_per_class(labels: np.ndarray, per_class: int, num_classes: int) -> np.ndarray:
    """The first ``per_class`` indices of every class (deterministic)."""
    return np.concatenate([np.flatnonzero(labels == c)[:per_class] for c in range(num_classes)]
                          + [np.zeros(0, dtype=np.int64)])
