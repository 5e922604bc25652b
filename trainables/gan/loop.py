"""One GAN update shape for every family: `d_step`, `g_step`, `train_epoch`.

Conventions: G(z, labels) -> images; D(x, labels) -> (source output (N,), class logits or
None).  The losses and the logged numbers are the family's (`trainables.gan.losses`): BCE on
the source logit (+ cross-entropy on the class logits for AC-GAN, L = L_source + L_class for
both nets, as S0/S3), or WGAN-GP's critic loss with its gradient penalty.

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
import warnings
from typing import Callable, Iterable

import torch
from torch import nn

from trainables.gan.config import GANConfig
from trainables.gan.diffaugment import diff_augment
from trainables.gan.families import FAMILIES
from trainables.gan.sampling import draw_latent

Augment = Callable[[torch.Tensor], torch.Tensor]


def autocast_for(cfg: GANConfig, device: torch.device):
    """bf16 autocast on CUDA when cfg.amp (no loss scaler needed); a no-op elsewhere."""
    if cfg.amp and device.type == "cuda":
        return torch.autocast(device_type="cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def compiled(model: nn.Module, cfg: GANConfig, device: torch.device) -> nn.Module:
    """`model` compiled for the training step when cfg.compile asks and the device is CUDA
    (the issue-22 H200 run: S0 3,735 -> 4,766 images/s with "reduce-overhead"); the model
    itself otherwise.  The uncompiled module stays the one that is evaluated and saved, so
    state dicts keep their keys.  On CPU compiling costs minutes of start-up on the 2-core
    machines this targets, and no gain was measured there: it is ignored on CPU, with a warning."""
    if cfg.compile == "none":
        return model
    if device.type != "cuda":
        warnings.warn(f"compile={cfg.compile!r} applies on CUDA only; training on {device.type} "
                      "runs eagerly", stacklevel=2)
        return model
    return torch.compile(model, mode=cfg.compile)


def _d_call(D: nn.Module, x: torch.Tensor, labels: torch.Tensor, cfg: GANConfig):
    """D on one batch (real OR fake, never both), after DiffAugment; outputs as float32."""
    x = diff_augment(x, cfg.diffaugment)
    if cfg.channels_last and x.is_cuda:
        x = x.contiguous(memory_format=torch.channels_last)
    with autocast_for(cfg, x.device):
        src, cls = D(x, labels)
    return src.float(), (cls.float() if cls is not None else None)


def d_step(G: nn.Module, D: nn.Module, opt_d: torch.optim.Optimizer, real: torch.Tensor,
           labels: torch.Tensor, cfg: GANConfig) -> dict[str, torch.Tensor]:
    """One discriminator update with the family's loss (and its penalty, if any).  Returns
    detached 0-d tensors (no GPU sync per step): d_loss, d_x, d_g_z1, d_real_acc, d_fake_acc,
    the loss's `extra_keys` and, with a class head (AC-GAN), aux_class_acc."""
    loss = FAMILIES[cfg.family].loss
    z = draw_latent(real.shape[0], cfg.latent_dim, cfg.latent_dist, device=real.device)
    with torch.no_grad(), autocast_for(cfg, real.device):
        fake = G(z, labels).to(real.dtype)
    opt_d.zero_grad(set_to_none=True)
    src_r, cls_r = _d_call(D, real, labels, cfg)
    loss_r = loss.d_real(src_r, cls_r, labels, cfg)
    if cfg.d_updates == "separate":  # S4: two updates per step, real then fake
        loss_r.backward()
        opt_d.step()
        opt_d.zero_grad(set_to_none=True)
    src_f, cls_f = _d_call(D, fake, labels, cfg)
    loss_f = loss.d_fake(src_f, cls_f, labels, cfg)
    # WGAN-GP's penalty: a third pass of D (on interpolates) inside the same backward, so
    # under DDP the step is still one synchronised backward.
    penalty = loss.d_penalty(lambda x: _d_call(D, x, labels, cfg)[0], real, fake)
    step_loss = loss_f if cfg.d_updates == "separate" else loss_r + loss_f
    d_loss = loss_r + loss_f
    if penalty is not None:
        step_loss, d_loss = step_loss + penalty, d_loss + penalty
    step_loss.backward()
    opt_d.step()
    out = dict(d_loss=d_loss.detach(), **loss.d_stats(src_r.detach(), src_f.detach(), penalty))
    if cls_r is not None:
        out["aux_class_acc"] = (cls_r.detach().argmax(1) == labels).float().mean()
    return out


def g_step(G: nn.Module, D: nn.Module, opt_g: torch.optim.Optimizer, labels: torch.Tensor,
           cfg: GANConfig) -> dict[str, torch.Tensor]:
    """One generator update on `cfg.g_batch_size` z (default: the batch's size), labels
    cycled from the batch's.  Returns detached 0-d tensors: g_loss, d_g_z2."""
    loss = FAMILIES[cfg.family].loss
    m = cfg.g_batch_size or labels.shape[0]
    labels = labels.repeat((m + labels.shape[0] - 1) // labels.shape[0])[:m]
    z = draw_latent(m, cfg.latent_dim, cfg.latent_dist, device=labels.device)
    opt_g.zero_grad(set_to_none=True)
    with autocast_for(cfg, labels.device):
        fake = G(z, labels)
    src, cls = _d_call(D, fake, labels, cfg)
    g_loss = loss.g(src, cls, labels, cfg)
    g_loss.backward()
    opt_g.step()
    return {"g_loss": g_loss.detach(), **loss.g_stats(src.detach())}


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
    family = FAMILIES[cfg.family]
    aux = ("aux_class_acc",) if family.class_head else ()
    for k in _D_KEYS + _G_KEYS + family.loss.extra_keys + aux:
        out.setdefault(k, float("nan"))
    epoch_s = time.perf_counter() - t0
    out.update(d_steps=float(d_steps), g_steps=float(g_steps), batches=float(n_batches),
               images_per_s=n_images / max(epoch_s, 1e-9), epoch_s=epoch_s)
    return out
