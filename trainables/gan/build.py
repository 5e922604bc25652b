"""Build the models, optimizers and schedulers a `GANConfig` describes."""
from __future__ import annotations

from typing import Sequence

import numpy as np
import torch
from torch import nn

from trainables.gan.config import GANConfig
from trainables.gan.families import FAMILIES


def trained_classes(cfg: GANConfig, classes: Sequence[str] | int,
                    labels: np.ndarray | None = None) -> tuple[int, ...]:
    """Class indices the run trains a generator for (all classes except for a per-class
    family, i.e. DCGAN, with `dcgan_classes`).  `classes` is the class-name tuple or just
    their number; "minority" needs `labels` (the smallest class wins, ties -> lowest index)."""
    names = tuple(classes) if not isinstance(classes, int) else None
    n = len(names) if names is not None else int(classes)
    spec = cfg.dcgan_classes if FAMILIES[cfg.family].per_class else None
    if spec is None:
        return tuple(range(n))
    if spec == "minority":
        if labels is None:
            raise ValueError("dcgan_classes='minority' needs the training labels to pick the class")
        counts = np.bincount(np.asarray(labels), minlength=n)
        return (int(np.argmin(counts)),)
    out = []
    for c in spec:
        if isinstance(c, (int, np.integer)) and not isinstance(c, bool):
            if not 0 <= int(c) < n:
                raise ValueError(f"dcgan_classes entry {c} is out of range for {n} classes")
            out.append(int(c))
        elif names is not None and c in names:
            out.append(names.index(c))
        else:
            raise ValueError(f"dcgan_classes entry {c!r} is not a class of this data set "
                             f"({list(names) if names else n} classes)")
    return tuple(sorted(set(out)))


def build_models(cfg: GANConfig, num_classes: int, classes: Sequence[str] | None = None,
                 class_indices: Sequence[int] | None = None) -> tuple[nn.Module, nn.Module]:
    """(G, D) for `cfg`, built by its family (`trainables.gan.families`).  Every G is called
    as G(z, labels); every D as D(x, labels) -> (source output (N,), class logits (N, K) or
    None).  For a per-class family, `class_indices` picks the classes that get a (G, D) pair
    (default: from cfg.dcgan_classes, else all)."""
    class_indices = _class_indices(cfg, num_classes, classes, class_indices)
    G = build_generator(cfg, num_classes, classes, class_indices)  # G first: the seed's init order
    return G, FAMILIES[cfg.family].build_discriminator(cfg, num_classes, classes, class_indices)


def build_generator(cfg: GANConfig, num_classes: int, classes: Sequence[str] | None = None,
                    class_indices: Sequence[int] | None = None) -> nn.Module:
    """The generator alone (what `load_generator` needs); see `build_models`."""
    class_indices = _class_indices(cfg, num_classes, classes, class_indices)
    return FAMILIES[cfg.family].build_generator(cfg, num_classes, classes, class_indices)


def _class_indices(cfg: GANConfig, num_classes: int, classes: Sequence[str] | None,
                   class_indices: Sequence[int] | None) -> tuple[int, ...]:
    if class_indices is not None:
        return tuple(class_indices)
    return trained_classes(cfg, classes if classes is not None else num_classes)


def build_optimizer(cfg: GANConfig, params, lr: float) -> torch.optim.Optimizer:
    """Adam(lr, (beta1, beta2)) or SGD(lr, momentum, nesterov)."""
    if cfg.optimizer == "adam":
        return torch.optim.Adam(params, lr=lr, betas=(cfg.beta1, cfg.beta2))
    return torch.optim.SGD(params, lr=lr, momentum=cfg.momentum, nesterov=cfg.nesterov)


def build_scheduler(cfg: GANConfig, opt: torch.optim.Optimizer):
    """Per-epoch LR scheduler, or None."""
    sched = torch.optim.lr_scheduler
    makers = {
        "none": lambda: None,
        "cosine_warm_restarts": lambda: sched.CosineAnnealingWarmRestarts(opt, T_0=cfg.t_0),
        "step": lambda: sched.StepLR(opt, step_size=cfg.step_size, gamma=cfg.gamma),
        "exponential": lambda: sched.ExponentialLR(opt, gamma=cfg.gamma),
    }
    return makers[cfg.scheduler]()
