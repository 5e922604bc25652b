"""One GAN update shape for every family: `d_step`, `g_step`, `train_epoch`.

Conventions: G(z, labels) -> images; D(x, labels) -> (source logit (N,), class logits or
None).  Losses: BCE on the source logit (+ cross-entropy on the class logits for AC-GAN,
L = L_source + L_class for both nets, as S0/S3).

D sees real and fake images in SEPARATE forward passes (the DCGAN reference; ganhacks'
"separate mini-batches for real and fake"): with BatchNorm in D, one concatenated batch would
normalise a real+fake mixture in D's step but a fake-only batch in G's step, so G would be
trained against a discriminator that does not exist (D's score of the fakes, `d_g_z1`, fell
to 0.001 while G's step saw 0.6-0.7 for the same generator).  The two passes share one
backward, so under DDP a step is still one synchronised backward.  S4's authors instead
update D twice per step, on the real and then on the fake batch (`d_updates="separate"`).

Fakes use the real batch's labels, so each per-class DCGAN pair sees its own class only.
"""
from __future__ import annotations

import contextlib
import time
from typing import Callable, Iterable

import torch
import torch.nn.functional as F
from torch import nn

from trainables.gan.config import GANConfig
from trainables.gan.diffaugment import diff_augment
from trainables.gan.sampling import draw_latent

Augment = Callable[[torch.Tensor], torch.Tensor]


def autocast_for(cfg: GANConfig, device: torch.device):
    """bf16 autocast on CUDA when cfg.amp (no loss scaler needed); a no-op elsewhere."""
    if cfg.amp and device.type == "cuda":
        return torch.autocast(device_type="cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def _bce(logits: torch.Tensor, target: float) -> torch.Tensor:
    return F.binary_cross_entropy_with_logits(logits, torch.full_like(logits, target))


def _d_call(D: nn.Module, x: torch.Tensor, labels: torch.Tensor, cfg: GANConfig):
    """D on one batch (real OR fake, never both), after DiffAugment; logits as float32."""
    x = diff_augment(x, cfg.diffaugment)
    if cfg.channels_last and x.is_cuda:
        x = x.contiguous(memory_format=torch.channels_last)
    with autocast_for(cfg, x.device):
        src, cls = D(x, labels)
    return src.float(), (cls.float() if cls is not None else None)


def _d_loss(D: nn.Module, x: torch.Tensor, labels: torch.Tensor, target: float,
            cfg: GANConfig) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """(loss, source logits, class logits) of D on one batch with source target `target`.
    The AC-GAN class loss applies to real and fake alike (Odena et al.: L_C on both)."""
    src, cls = _d_call(D, x, labels, cfg)
    loss = _bce(src, target)
    if cls is not None:
        loss = loss + cfg.aux_weight * F.cross_entropy(cls, labels)
    return loss, src.detach(), cls


def d_step(G: nn.Module, D: nn.Module, opt_d: torch.optim.Optimizer, real: torch.Tensor,
           labels: torch.Tensor, cfg: GANConfig) -> dict[str, torch.Tensor]:
    """One discriminator update.  Returns detached 0-d tensors (no GPU sync per step):
    d_loss, d_x, d_g_z1, d_real_acc, d_fake_acc and, for AC-GAN, aux_class_acc."""
    z = draw_latent(real.shape[0], cfg.latent_dim, cfg.latent_dist, device=real.device)
    with torch.no_grad(), autocast_for(cfg, real.device):
        fake = G(z, labels).to(real.dtype)
    opt_d.zero_grad(set_to_none=True)
    # One-sided label smoothing: only the real target moves (Salimans et al. 2016).
    loss_r, src_r, cls_r = _d_loss(D, real, labels, 1.0 - cfg.label_smoothing, cfg)
    if cfg.d_updates == "separate":  # S4: two updates per step, real then fake
        loss_r.backward()
        opt_d.step()
        opt_d.zero_grad(set_to_none=True)
        loss_f, src_f, _ = _d_loss(D, fake, labels, 0.0, cfg)
        loss_f.backward()
    else:
        loss_f, src_f, _ = _d_loss(D, fake, labels, 0.0, cfg)
        (loss_r + loss_f).backward()
    opt_d.step()
    p_r, p_f = torch.sigmoid(src_r), torch.sigmoid(src_f)
    out = dict(d_loss=(loss_r + loss_f).detach(), d_x=p_r.mean(), d_g_z1=p_f.mean(),
               d_real_acc=(p_r > 0.5).float().mean(), d_fake_acc=(p_f < 0.5).float().mean())
    if cls_r is not None:
        out["aux_class_acc"] = (cls_r.detach().argmax(1) == labels).float().mean()
    return out


def g_step(G: nn.Module, D: nn.Module, opt_g: torch.optim.Optimizer, labels: torch.Tensor,
           cfg: GANConfig) -> dict[str, torch.Tensor]:
    """One generator update on `cfg.g_batch_size` z (default: the batch's size), labels
    cycled from the batch's.  Returns detached 0-d tensors: g_loss, d_g_z2."""
    m = cfg.g_batch_size or labels.shape[0]
    labels = labels.repeat((m + labels.shape[0] - 1) // labels.shape[0])[:m]
    z = draw_latent(m, cfg.latent_dim, cfg.latent_dist, device=labels.device)
    opt_g.zero_grad(set_to_none=True)
    with autocast_for(cfg, labels.device):
        fake = G(z, labels)
    src, cls = _d_call(D, fake, labels, cfg)
    # Label flipping (S0): fakes labelled real, i.e. the non-saturating loss; without it G
    # minimises log(1 - D(G(z))) (the original minimax loss).
    loss = _bce(src, 1.0) if cfg.flip_labels_g else -_bce(src, 0.0)
    if cls is not None:
        loss = loss + cfg.aux_weight * F.cross_entropy(cls, labels)
    loss.backward()
    opt_g.step()
    return {"g_loss": loss.detach(), "d_g_z2": torch.sigmoid(src.detach()).mean()}


def does_d_step(i: int, cfg: GANConfig) -> bool:
    """Whether global batch `i` (from 0) gets a D step: always, or every K-th (S2)."""
    return (i + 1) % cfg.g_steps_per_d == 0


def does_g_step(i: int, cfg: GANConfig) -> bool:
    """Whether global batch `i` gets a G step: always, or after every n D steps."""
    return (i + 1) % cfg.d_steps_per_g == 0


_G_KEYS = ("g_loss", "d_g_z2")
_D_KEYS = ("d_loss", "d_x", "d_g_z1", "d_real_acc", "d_fake_acc")


def train_epoch(G: nn.Module, D: nn.Module, opt_g: torch.optim.Optimizer,
                opt_d: torch.optim.Optimizer, batches: Iterable[tuple[torch.Tensor, torch.Tensor]],
                cfg: GANConfig, start_iteration: int = 0,
                augment_real: Augment | None = None) -> dict[str, float]:
    """Run one pass over `batches` ((images in [-1, 1], labels) already on the device).

    `augment_real` (S0's shear/zoom) transforms the real images before D's step.  The D:G
    schedule follows the global batch counter (start_iteration + i), so it carries across
    epochs (K=10 on a 4-batch epoch still steps D) and across resume.  Returns the means of
    the per-step numbers plus d_steps, g_steps (optimizer steps taken), batches,
    images_per_s and epoch_s.  A metric of a net that took no step this epoch is NaN."""
    t0 = time.perf_counter()
    sums: dict[str, torch.Tensor] = {}
    d_steps = g_steps = n_batches = n_images = 0
    for i, (real, labels) in enumerate(batches, start=start_iteration):
        if does_d_step(i, cfg):
            if augment_real is not None:
                real = augment_real(real)
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
    out = {k: float(v) / (g_steps if k in _G_KEYS else d_steps) for k, v in sums.items()}
    for k in _D_KEYS + _G_KEYS + (("aux_class_acc",) if cfg.family == "acgan" else ()):
        out.setdefault(k, float("nan"))
    epoch_s = time.perf_counter() - t0
    out.update(d_steps=float(d_steps), g_steps=float(g_steps), batches=float(n_batches),
               images_per_s=n_images / max(epoch_s, 1e-9), epoch_s=epoch_s)
    return out
