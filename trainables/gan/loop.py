"""One GAN update shape for every family: `d_step`, `g_step`, `train_epoch`.

Conventions: G(z, labels) -> images; D(x, labels) -> (source logit (N,), class logits or
None).  Losses: BCE on the source logit (+ cross-entropy on the class logits for AC-GAN,
L = L_source + L_class for both nets, as S0/S3).  D sees real and fake in ONE forward
(concatenated) so DDP does one forward/backward per step.  Fakes use the real batch's
labels, so each per-class DCGAN pair sees its own class only.
"""
from __future__ import annotations

import contextlib
import time
from typing import Iterable

import torch
import torch.nn.functional as F
from torch import nn

from trainables.gan.config import GANConfig


def autocast_for(cfg: GANConfig, device: torch.device):
    """bf16 autocast on CUDA when cfg.amp (no loss scaler needed); a no-op elsewhere."""
    if cfg.amp and device.type == "cuda":
        return torch.autocast(device_type="cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def _bce(logits: torch.Tensor, target: float) -> torch.Tensor:
    return F.binary_cross_entropy_with_logits(logits, torch.full_like(logits, target))


def d_step(G: nn.Module, D: nn.Module, opt_d: torch.optim.Optimizer, real: torch.Tensor,
           labels: torch.Tensor, cfg: GANConfig) -> dict[str, torch.Tensor]:
    """One discriminator update.  Returns detached 0-d tensors (no GPU sync per step):
    d_loss, d_x, d_g_z1, d_real_acc, d_fake_acc and, for AC-GAN, aux_class_acc."""
    n = real.shape[0]
    z = torch.randn(n, cfg.latent_dim, device=real.device)
    with autocast_for(cfg, real.device):
        with torch.no_grad():
            fake = G(z, labels)
        both = torch.cat([real, fake.to(real.dtype)])
        if cfg.channels_last and real.is_cuda:
            both = both.contiguous(memory_format=torch.channels_last)
        opt_d.zero_grad(set_to_none=True)
        src, cls = D(both, torch.cat([labels, labels]))
    src = src.float()
    # One-sided label smoothing: only the real target moves (Salimans et al. 2016).
    loss = _bce(src[:n], 1.0 - cfg.label_smoothing) + _bce(src[n:], 0.0)
    out = {}
    if cls is not None:
        cls = cls.float()
        loss = loss + F.cross_entropy(cls[:n], labels) + F.cross_entropy(cls[n:], labels)
        out["aux_class_acc"] = (cls[:n].argmax(1) == labels).float().mean().detach()
    loss.backward()
    opt_d.step()
    p = torch.sigmoid(src.detach())
    out.update(d_loss=loss.detach(), d_x=p[:n].mean(), d_g_z1=p[n:].mean(),
               d_real_acc=(p[:n] > 0.5).float().mean(), d_fake_acc=(p[n:] < 0.5).float().mean())
    return out


def g_step(G: nn.Module, D: nn.Module, opt_g: torch.optim.Optimizer, labels: torch.Tensor,
           cfg: GANConfig) -> dict[str, torch.Tensor]:
    """One generator update.  Returns detached 0-d tensors: g_loss, d_g_z2."""
    z = torch.randn(labels.shape[0], cfg.latent_dim, device=labels.device)
    opt_g.zero_grad(set_to_none=True)
    with autocast_for(cfg, labels.device):
        fake = G(z, labels)
        if cfg.channels_last and fake.is_cuda:
            fake = fake.contiguous(memory_format=torch.channels_last)
        src, cls = D(fake, labels)
    src = src.float()
    # Label flipping (S0): fakes labelled real, i.e. the non-saturating loss; without it G
    # minimises log(1 - D(G(z))) (the original minimax loss).
    loss = _bce(src, 1.0) if cfg.flip_labels_g else -_bce(src, 0.0)
    if cls is not None:
        loss = loss + F.cross_entropy(cls.float(), labels)
    loss.backward()
    opt_g.step()
    return {"g_loss": loss.detach(), "d_g_z2": torch.sigmoid(src.detach()).mean()}


def does_d_step(i: int, cfg: GANConfig) -> bool:
    """Whether global batch `i` (from 0) gets a D step: always, or every K-th (S2)."""
    return (i + 1) % cfg.g_steps_per_d == 0


def does_g_step(i: int, cfg: GANConfig) -> bool:
    """Whether global batch `i` gets a G step: always, or after every n D steps."""
    return (i + 1) % cfg.d_steps_per_g == 0


def train_epoch(G: nn.Module, D: nn.Module, opt_g: torch.optim.Optimizer,
                opt_d: torch.optim.Optimizer, batches: Iterable[tuple[torch.Tensor, torch.Tensor]],
                cfg: GANConfig, start_iteration: int = 0) -> dict[str, float]:
    """Run one pass over `batches` ((images in [-1, 1], labels) already on the device).

    The D:G schedule follows the global batch counter (start_iteration + i), so it carries
    across epochs (K=10 on a 4-batch epoch still steps D) and across resume.  Returns the
    means of the per-step numbers plus d_steps, g_steps (optimizer steps taken), batches,
    images_per_s and epoch_s.  A metric of a net that took no step this epoch is NaN."""
    t0 = time.perf_counter()
    sums: dict[str, torch.Tensor] = {}
    d_steps = g_steps = n_batches = n_images = 0
    for i, (real, labels) in enumerate(batches, start=start_iteration):
        if does_d_step(i, cfg):
            for k, v in d_step(G, D, opt_d, real, labels, cfg).items():
                sums[k] = sums.get(k, 0) + v
            d_steps += 1
        if does_g_step(i, cfg):
            for k, v in g_step(G, D, opt_g, labels, cfg).items():
                sums[k] = sums.get(k, 0) + v
            g_steps += 1
        n_batches += 1
        n_images += real.shape[0]
    if n_batches == 0:
        raise ValueError("train_epoch got no batches: the data set is smaller than one batch "
                         f"(batch_size={cfg.batch_size}); lower batch_size or add images")
    nan = float("nan")
    out = {k: (float(v) / (d_steps if k not in ("g_loss", "d_g_z2") else g_steps)) for k, v in sums.items()}
    for k in ("d_loss", "d_x", "d_g_z1", "d_real_acc", "d_fake_acc", "g_loss", "d_g_z2"):
        out.setdefault(k, nan)
    if cfg.family == "acgan":
        out.setdefault("aux_class_acc", nan)
    epoch_s = time.perf_counter() - t0
    out.update(d_steps=float(d_steps), g_steps=float(g_steps), batches=float(n_batches),
               images_per_s=n_images / max(epoch_s, 1e-9), epoch_s=epoch_s)
    return out
