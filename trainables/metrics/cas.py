"""Classification Accuracy Score (Ravuri & Vinyals 2019): train on one checkpoint's
synthetic images only, test on the real validation split.

The classifier is deliberately tiny (seconds on a CPU at 32-64 px): CAS compares epochs
and GANs with each other, it is not the downstream model.
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn


class TinyCNN(nn.Module):
    """Three conv blocks and a linear head; input (N, C, size, size) in [-1, 1]."""

    def __init__(self, in_channels: int, n_classes: int, width: int = 16):
        super().__init__()
        layers, c = [], in_channels
        for k in (1, 2, 4):
            layers += [nn.Conv2d(c, width * k, 3, padding=1), nn.BatchNorm2d(width * k),
                       nn.ReLU(inplace=True), nn.MaxPool2d(2)]
            c = width * k
        self.features = nn.Sequential(*layers)
        self.head = nn.Linear(c, n_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(F.adaptive_avg_pool2d(self.features(x), 1).flatten(1))


def prepare(images: torch.Tensor, size: int, channels: int) -> torch.Tensor:
    """Float NCHW in [-1, 1] resized to size x size with `channels` channels (grey <-> RGB)."""
    x = images.float()
    if x.shape[1] != channels:
        x = x.mean(1, keepdim=True) if channels == 1 else x.expand(-1, channels, -1, -1)
    if x.shape[-1] != size or x.shape[-2] != size:
        x = F.interpolate(x, size=(size, size), mode="bilinear", antialias=True,
                          align_corners=False)
    return x.contiguous()


def train_classifier(images: torch.Tensor, labels: torch.Tensor, n_classes: int, *,
                     epochs: int = 15, batch_size: int = 64, lr: float = 2e-3, seed: int = 0,
                     size: int = 32, min_steps: int = 0,
                     device: torch.device | str = "cpu") -> nn.Module:
    """Train a TinyCNN on (images in [-1,1], labels); seeded, independent of global RNG.
    At least `min_steps` optimizer steps (more epochs where the set is small): counted in
    epochs alone, 59 images got 15 steps and a classifier at chance."""
    if len(images) != len(labels) or len(images) == 0:
        raise ValueError(f"need as many labels as images (>0); got {len(images)}/{len(labels)}")
    x = prepare(images, size, images.shape[1]).to(device)
    y = torch.as_tensor(labels, dtype=torch.long, device=device)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = TinyCNN(x.shape[1], n_classes).to(device)
        opt = torch.optim.Adam(model.parameters(), lr=lr)
        gen = torch.Generator().manual_seed(seed)
        model.train()
        per_epoch = max(1, sum(len(i) >= 2 for i in torch.arange(len(x)).split(batch_size)))
        for _ in range(max(epochs, -(-min_steps // per_epoch))):
            for idx in torch.randperm(len(x), generator=gen).split(batch_size):
                if len(idx) < 2:  # BatchNorm needs two samples
                    continue
                opt.zero_grad(set_to_none=True)
                F.cross_entropy(model(x[idx]), y[idx]).backward()
                opt.step()
    return model.eval()


@torch.no_grad()
def predict(model: nn.Module, images: torch.Tensor, *, size: int, batch_size: int = 256) -> np.ndarray:
    """Predicted class of each image (model in eval mode)."""
    p = next(model.parameters())
    x = prepare(images, size, p.shape[1] if p.ndim == 4 else images.shape[1])
    model.eval()
    return torch.cat([model(b.to(p.device)).argmax(1).cpu() for b in x.split(batch_size)]).numpy()


def accuracy_f1(y_true: np.ndarray, y_pred: np.ndarray, n_classes: int) -> tuple[float, float]:
    """Accuracy and macro-F1 (classes absent from both y_true and y_pred are left out)."""
    cm = np.zeros((n_classes, n_classes), dtype=np.int64)
    np.add.at(cm, (y_true, y_pred), 1)
    tp = np.diag(cm).astype(float)
    denom = cm.sum(0) + cm.sum(1)  # 2TP + FP + FN
    present = denom > 0
    f1 = np.where(present, 2 * tp / np.maximum(denom, 1), 0.0)
    return float(tp.sum() / max(len(y_true), 1)), float(f1[present].mean())


def bootstrap_scores(y_true: np.ndarray, y_pred: np.ndarray, n_classes: int, *,
                     n_boot: int = 1000, seed: int = 0) -> dict[str, float]:
    """Accuracy and macro-F1 with percentile bootstrap 95 % intervals over the test images."""
    acc, f1 = accuracy_f1(y_true, y_pred, n_classes)
    rng = np.random.default_rng(seed)
    boots = np.array([accuracy_f1(y_true[i], y_pred[i], n_classes)
                      for i in rng.integers(0, len(y_true), (n_boot, len(y_true)))])
    lo, hi = np.percentile(boots, [2.5, 97.5], axis=0)
    return {"acc": acc, "f1": f1, "acc_ci_low": float(lo[0]), "acc_ci_high": float(hi[0]),
            "f1_ci_low": float(lo[1]), "f1_ci_high": float(hi[1]), "n_test": float(len(y_true))}


def classification_accuracy_score(fake: torch.Tensor, fake_labels: torch.Tensor,
                                  real: torch.Tensor, real_labels: np.ndarray | torch.Tensor,
                                  n_classes: int, *, epochs: int = 15, size: int = 32,
                                  seed: int = 0, n_boot: int = 1000, min_steps: int = 0,
                                  device: torch.device | str = "cpu") -> dict[str, float]:
    """CAS: train on `fake` only, score on the `real` validation images (acc, macro-F1, CIs)."""
    model = train_classifier(fake, fake_labels, n_classes, epochs=epochs, size=size,
                             seed=seed, min_steps=min_steps, device=device)
    y_pred = predict(model, prepare(real, size, fake.shape[1]), size=size)
    out = bootstrap_scores(np.asarray(real_labels), y_pred, n_classes, n_boot=n_boot, seed=seed)
    out["n_train"] = float(len(fake))
    return out
