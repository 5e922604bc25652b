"""GPU memory of one GAN trial: an estimate from its config, how many such trials share a GPU
(`--trials-per-gpu auto`), and the check a trial runs before it trains on a shared GPU.

Ray's fractional GPUs do not isolate memory: a trial that does not fit would crash with an OOM,
and take its neighbours on the same device with it.  So a trial that shares its GPU first
compares the device's free memory with its own estimate and fails alone, with the reason.

The estimate (MiB), deliberately simple and on the high side:

    need = FIXED_MIB                                   CUDA context + evaluator (Inception)
         + 16 B x (parameters of G and D)              fp32 weights, grads, Adam's two moments
         + 4 B x ACTIVATIONS_PER_PIXEL x width x resolution^2 x batch x 2
                                                       activations kept for backward, D on
                                                       real and fake

The parameters are counted on PyTorch's meta device (no memory, no compute).
ACTIVATIONS_PER_PIXEL is the elements of every module output in one G + D forward, per
output pixel at width 1.0: measured on the meta device, 300 (S0), 420 (S3), 130 (S2).
"""
from __future__ import annotations

import math

MIB = 2 ** 20
FIXED_MIB = 1024  # CUDA context (~500 MiB per process) + the evaluator's feature extractor
ACTIVATIONS_PER_PIXEL = 420  # the largest seed's (S3); see the module docstring
PARAMETER_STATE_BYTES = 16  # fp32 weight + grad + Adam exp_avg + exp_avg_sq
USABLE_SHARE = 0.8  # of the free memory: fragmentation and the allocator's cache need room
MAX_TRIALS_PER_GPU = 8  # the H200 figures: 8 trials add little over 4


class GpuMemoryError(RuntimeError):
    """A trial that would not fit in its shared GPU's free memory."""


def count_parameters(cfg, num_classes: int) -> int:
    """Parameters of the trial's G and D, built on the meta device (nothing allocated)."""
    import numpy as np
    import torch

    from trainables.gan.build import build_models, trained_classes

    # dcgan_classes="minority" needs labels to pick a class; any one class has the same size.
    indices = trained_classes(cfg, num_classes, np.arange(num_classes))
    with torch.device("meta"):
        G, D = build_models(cfg, num_classes, class_indices=indices)
    return sum(p.numel() for model in (G, D) for p in model.parameters())


def estimate_mib(parameters: int, *, resolution: int, width: float, batch: int) -> int:
    """The estimate of the module docstring, from numbers (see `trial_estimate_mib`)."""
    state = PARAMETER_STATE_BYTES * parameters
    activations = 4 * ACTIVATIONS_PER_PIXEL * width * resolution ** 2 * batch * 2
    return math.ceil(FIXED_MIB + (state + activations) / MIB)


def trial_estimate_mib(cfg, num_classes: int) -> int:
    """GPU memory (MiB) one trial of `cfg` (a GANConfig) needs, roughly and on the high side."""
    batch = max(cfg.batch_size, cfg.g_batch_size or 0)
    return estimate_mib(count_parameters(cfg, num_classes), resolution=cfg.resolution,
                        width=cfg.width, batch=batch)


def trials_per_gpu(free_mib: float | None, need_mib: float) -> int:
    """`--trials-per-gpu auto`: clamp(floor(free x 0.8 / need), 1, 8); 1 without a GPU to
    measure (`free_mib` None)."""
    if not free_mib or need_mib <= 0:
        return 1
    return max(1, min(MAX_TRIALS_PER_GPU, int(free_mib * USABLE_SHARE // need_mib)))


def shortfall(free_mib: float, need_mib: float) -> str | None:
    """Why a trial must not start on a GPU with `free_mib` free (None: it fits)."""
    if free_mib >= need_mib:
        return None
    return (f"not enough GPU memory for this trial: {free_mib:.0f} MiB free, need "
            f"~{need_mib:.0f} MiB; lower --trials-per-gpu")


def free_mib(device) -> float:
    """Free memory (MiB) of a CUDA device, as the driver sees it (all processes counted)."""
    import torch

    free, _total = torch.cuda.mem_get_info(device)
    return free / MIB


def require(device, need_mib: float) -> None:
    """Raise GpuMemoryError (the trial fails alone) unless `device` has `need_mib` free."""
    reason = shortfall(free_mib(device), need_mib)
    if reason is not None:
        raise GpuMemoryError(reason)


def visible_free_mib() -> float | None:
    """Free memory (MiB) of the first GPU this process sees; None without one.  Asked of
    `nvidia-smi` first: torch would create a CUDA context (~500 MiB) in the driver that
    stays for the whole search."""
    import os
    import shutil
    import subprocess

    if os.environ.get("CUDA_VISIBLE_DEVICES", None) in ("", "-1"):
        return None
    if shutil.which("nvidia-smi"):
        first = os.environ.get("CUDA_VISIBLE_DEVICES", "0").split(",")[0]
        out = subprocess.run(["nvidia-smi", f"--id={first}", "--query-gpu=memory.free",
                              "--format=csv,noheader,nounits"],
                             capture_output=True, text=True, timeout=30, check=False)
        if out.returncode == 0 and out.stdout.strip():
            return float(out.stdout.split()[0])
    import torch

    return free_mib(0) if torch.cuda.is_available() else None
