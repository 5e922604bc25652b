"""Disk per trial against epochs: what a search keeps (`--keep-epochs K`: the generators of
the K best epochs + the latest, full training states only in the last two) vs what keeping
every epoch's checkpoint would take.

    python benchmarks/checkpoint_disk.py --epochs 2 4 8            # real smoke searches, ~5 min
    python benchmarks/checkpoint_disk.py --epochs 2 4 8 --keep 5

Part 1 measures real one-trial smoke searches (bytes on disk in the trial's Tune folder).
Part 2 projects the same rule to the seed sizes, from the models' parameter counts
(float32 weights; Adam's two moments per weight in the training state).
"""
from __future__ import annotations

import argparse
import os
import tempfile
from pathlib import Path

import ray

from orchestrator import pipeline
from orchestrator.cli import search
from trainables.gan import GANConfig, build_models, preset


def folder_bytes(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


def measured(epochs: int, keep: int, data: str, work: Path) -> tuple[int, int]:
    """(bytes kept, bytes of every epoch's full checkpoint) of a one-trial smoke search."""
    name = f"disk-{epochs}"
    cfg = search.config_from_args([
        "acgan", "--smoke", "--data", data, "--name", name, "--num-samples", "1",
        "--max-epochs", str(epochs), "--scheduler", "none", "--keep-epochs", str(keep),
        "--storage", str(work / "ray_results"), "--mlflow-uri", f"sqlite:///{work}/mlflow.db"])
    pipeline.run_search(cfg)
    trial = next(p for p in (work / "ray_results" / name).iterdir() if p.is_dir())
    checkpoints = sorted(trial.glob("checkpoint_*"))
    full = max(folder_bytes(c) for c in checkpoints if (c / "state.pt").exists())
    return folder_bytes(trial), full * epochs


def projected(preset_name: str, epochs: int, keep: int) -> tuple[float, float]:
    """(GB kept, GB if every epoch were kept) at a preset's seed size, from parameter counts."""
    cfg = GANConfig.from_dict(preset(preset_name))
    G, D = build_models(cfg, 3, ("COVID-19", "Normal", "Pneumonia"))
    g, d = (sum(p.numel() for p in m.parameters()) * 4 for m in (G, D))
    state = 3 * (g + d) + g  # weights + Adam's two moments, and generator.pt beside it
    kept = 2 * state + min(keep + 1, epochs) * g
    return kept / 1e9, epochs * state / 1e9


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--epochs", type=int, nargs="+", default=[2, 4, 8])
    p.add_argument("--keep", type=int, default=5)
    p.add_argument("--data", default="../shared/data/covid19-image-dataset")
    p.add_argument("--presets", nargs="*", default=["s0"])
    args = p.parse_args(argv)
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    work = Path(tempfile.mkdtemp(prefix="cxr-disk-"))
    ray.init(num_cpus=2, include_dashboard=False)
    rows = [(e, *measured(e, args.keep, args.data, work)) for e in args.epochs]
    ray.shutdown()
    print(f"\nsmoke trial, --keep-epochs {args.keep}: bytes kept vs every epoch kept")
    for epochs, kept, every in rows:
        print(f"  {epochs:4d} epochs: {kept / 1e6:8.2f} MB kept, {every / 1e6:8.2f} MB if every "
              f"epoch were kept, ratio kept/every {kept / every:.2f}")
    for name in args.presets:
        epochs = int(preset(name)["epochs"])
        kept, every = projected(name, epochs, args.keep)
        print(f"{name} at seed size, {epochs} epochs (from parameter counts): {kept:.2f} GB kept "
              f"per trial vs {every:.1f} GB, ratio {kept / every:.4f}")


if __name__ == "__main__":
    main()
