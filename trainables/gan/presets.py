"""Seed-size GAN settings for the five reference systems (shared/SYSTEMS.md S0-S4).

Each preset is a dict of `GANConfig` overrides.  Where a seed is silent we chose what its
authors most plausibly did; those guesses are listed per preset:

- s0 (CXR-ACGAN): AC-GAN at 112x112x3, z 100-d, Adam 2e-4 / beta1 0.5, batch 64, 460 steps
  per epoch, 388 epochs, label flipping for G and one-sided label smoothing, real images
  sheared and zoomed during GAN training ("data augmentation -> shearing and zooming", seed
  slides).  Guessed: smoothing amount 0.1, shear up to 5 degrees and zoom up to 10 % (the
  seed gives no ranges; Keras' usual `shear_range=0.2` is in degrees, i.e. no shear at all),
  the label embedding size 50 (as S3).  Not the seed's: D's blocks follow DCGAN's conventions
  (kernel 4, no BatchNorm on the input block, Dropout 0.25; `d_regularization="dcgan"`)
  instead of S0's BN + Dropout(0.5) in every block: with the latter our AC-GAN drew one image
  per class within 5 epochs in every 64 px run (see `trainables/models/acgan.py`);
  `--set d_regularization=seed` restores the seed's text.
- s1 (per-class DCGAN): one DCGAN per class, each pair trained on batches of its own class
  only (as many steps per epoch as its class has batches), 64x64x1, z ~ U(-1, 1) ("100 random
  numbers drawn from a uniform distribution"), batch 32, Adam 2e-4 betas (0.5, 0.999),
  200 epochs, N(0, 0.02) init.  Guessed: D dropout p=0.25, the uniform range (-1, 1).
  bf16 autocast off: on an H200 it made S1's step 12 % slower (S0 +4 %, S4 +128 %: on
  there; issue 22's measurements), so each preset keeps the precision that was faster.
- s2 (cGAN, slow D): 150x150x1, run 3 of the seed: Adam 2e-4 with beta1 0.9,
  CosineAnnealingWarmRestarts restarting every 10 epochs, one D step every K=10 G steps,
  filters 256 halving.  Guessed: batch 4 (run 1's; run 3 states none), 1000 epochs (the seed
  ran "600+"), label embedding 50.
- s3 (CovidGAN): AC-GAN at 112x112x3 with the alternating-stride D as stated (kernel 3, BN and
  Dropout 0.5 in every block: `d_regularization="seed"`, ~2.4 M parameters, "approximately
  2 M"), Adam 2e-4 / beta1 0.5, batch 64, 1,500 epochs.  Guessed: no label smoothing (the seed
  names none).  This D is the one that collapsed in our S0 runs; `--set d_regularization=dcgan`
  is the alternative.
- s4 (DCGAN 128 px, the minority class only): as the authors' code (korasagar/DCGAN-ChestXray
  `DCGAN.py`): 128x128x3, z ~ N(0, 1), no BatchNorm, D Adam 2e-5 and G Adam 1e-4 (beta1 0.5),
  each step one D update on 64 real images and one on 64 fakes, then one G update on 128 z,
  500 epochs.  The minority class is Normal on the seed's Kermany data.  Differences: the
  authors draw real batches with replacement (we take a shuffled pass), and their epoch is
  len(data) // 128 steps (ours len // 64, the real batch).
"""
from __future__ import annotations

from typing import Any

# With another family these go: they belong to the preset's networks (amp: its measured speed).
_ARCH_KEYS = ("variant", "dcgan_classes", "embed_dim", "d_updates", "g_batch_size",
              "d_regularization", "amp")

PRESETS: dict[str, dict[str, Any]] = {
    "s0": dict(family="acgan", variant="s0", resolution=112, channels=3, latent_dim=100,
               width=1.0, batch_size=64, steps_per_epoch=460, epochs=388, optimizer="adam",
               lr_g=2e-4, lr_d=2e-4, beta1=0.5, beta2=0.999, label_smoothing=0.1,
               flip_labels_g=True, real_shear=5.0, real_zoom=0.1),
    "s1": dict(family="dcgan", variant="s1", resolution=64, channels=1, latent_dim=100,
               latent_dist="uniform", width=1.0, batch_size=32, epochs=200, optimizer="adam",
               lr_g=2e-4, lr_d=2e-4, beta1=0.5, beta2=0.999, dcgan_classes=None,
               amp=False),
    "s2": dict(family="cgan", variant="s2", resolution=150, channels=1, latent_dim=100,
               width=1.0, batch_size=4, epochs=1000, optimizer="adam", lr_g=2e-4, lr_d=2e-4,
               beta1=0.9, beta2=0.999, scheduler="cosine_warm_restarts", t_0=10,
               g_steps_per_d=10),
    "s3": dict(family="acgan", variant="s3", resolution=112, channels=3, latent_dim=100,
               width=1.0, embed_dim=50, d_regularization="seed", batch_size=64, epochs=1500,
               optimizer="adam", lr_g=2e-4, lr_d=2e-4, beta1=0.5, beta2=0.999),
    "s4": dict(family="dcgan", variant="s4", resolution=128, channels=3, latent_dim=100,
               width=1.0, batch_size=64, g_batch_size=128, d_updates="separate", epochs=500,
               optimizer="adam", lr_g=1e-4, lr_d=2e-5, beta1=0.5, beta2=0.999,
               dcgan_classes="minority"),
}


def preset(name: str, family: str | None = None) -> dict[str, Any]:
    """Config overrides for reference system `name` ("s0".."s4") at seed sizes.

    With `family` different from the preset's own, the preset's training settings (optimizer,
    schedule, update ratio, data size) are applied to that family's default architecture."""
    key = name.lower()
    if key not in PRESETS:
        raise ValueError(f"unknown GAN preset {name!r}; choose one of {sorted(PRESETS)}")
    out = dict(PRESETS[key])
    if family is not None and family != out["family"]:
        for k in _ARCH_KEYS:
            out.pop(k, None)
        out["family"] = family
    return out
