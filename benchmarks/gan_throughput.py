"""Training throughput (images/s) of each GAN family at the seed settings (presets s0-s4).

    python -m benchmarks.gan_throughput                 # all presets, 2 timed batches each
    python -m benchmarks.gan_throughput --presets s1 s3 --batches 5 --device cuda

On the CPU the batch defaults to 8 images (a seed-size AC-GAN batch of 64 takes ~100 s on two
busy cores; images/s on a CPU barely depends on the batch size); on CUDA it is the seed's.

One "image" = one real image through a full D step and a G step (the 1:1 schedule; a slow D
with K=10 is cheaper per image).  Inputs are uniform noise in [-1, 1] of the seed shape:
the cost of a step does not depend on pixel values, and this keeps the benchmark free of
data decoding.  The first batch is a warm-up and not timed.
"""
from __future__ import annotations

import argparse
import time

import torch

from trainables.gan import GANConfig, build_models, build_optimizer, preset
from trainables.gan.loop import d_step, g_step
from trainables.gan.families import FAMILIES
from trainables.gan.presets import PRESETS
from trainables.models.init import count_params


def throughput(cfg: GANConfig, num_classes: int, batches: int, device: torch.device) -> dict[str, float]:
    """images/s of `batches` timed (D step + G step) iterations after one warm-up."""
    torch.manual_seed(0)
    G, D = build_models(cfg, num_classes)
    fmt = torch.channels_last if (cfg.channels_last and device.type == "cuda") else torch.contiguous_format
    G, D = G.to(device, memory_format=fmt), D.to(device, memory_format=fmt)
    opt_g, opt_d = build_optimizer(cfg, G.parameters(), cfg.lr_g), build_optimizer(cfg, D.parameters(), cfg.lr_d)
    n, r = cfg.batch_size, cfg.resolution
    labels = torch.arange(n, device=device) % num_classes
    if FAMILIES[cfg.family].per_class:  # a per-class DCGAN only knows its trained classes
        labels = torch.tensor(G.class_indices, device=device).repeat(n)[:n]
    real = torch.rand(n, cfg.channels, r, r, device=device) * 2 - 1
    for i in range(batches + 1):
        if i == 1:
            if device.type == "cuda":
                torch.cuda.synchronize()
            t0 = time.perf_counter()
        d_step(G, D, opt_d, real, labels, cfg)
        g_step(G, D, opt_g, labels, cfg)
    if device.type == "cuda":
        torch.cuda.synchronize()
    dt = time.perf_counter() - t0
    return {"images_per_s": batches * n / dt, "s_per_batch": dt / batches,
            "g_params": count_params(G), "d_params": count_params(D)}


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--presets", nargs="+", default=sorted(PRESETS), choices=sorted(PRESETS))
    p.add_argument("--batches", type=int, default=2, help="timed batches per preset")
    p.add_argument("--batch-size", type=int, default=None,
                   help="batch size (default: 8 on CPU, the seed's on CUDA)")
    p.add_argument("--classes", type=int, default=3)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    print(f"device={device} threads={torch.get_num_threads()} batches={args.batches}", flush=True)
    batch_size = args.batch_size or (8 if device.type == "cpu" else None)
    for name in args.presets:
        over = preset(name)
        if batch_size:
            over["batch_size"] = min(batch_size, over["batch_size"])
        if over.get("dcgan_classes") == "minority":
            over["dcgan_classes"] = (0,)  # no labels here to pick from; S4 trains one class
        cfg = GANConfig.from_dict(over)
        res = throughput(cfg, args.classes, args.batches, device)
        print(f"{name} {cfg.family:5s} {cfg.resolution:3d}px x{cfg.channels} batch {cfg.batch_size:3d}: "
              f"{res['images_per_s']:8.1f} images/s ({res['s_per_batch']:.3f} s/batch; "
              f"G {res['g_params']:,} D {res['d_params']:,} params)", flush=True)


if __name__ == "__main__":
    main()
