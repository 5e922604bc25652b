"""Bytes a GAN trial writes and keeps for its checkpoints, before and after issue 22's budget
(the generator every epoch, the full training state every `state_every` epochs + the last,
at most two full states on disk).

    python benchmarks/checkpoint_disk.py --epochs 2 4 8            # ~5 min on 2 cores
    python benchmarks/checkpoint_disk.py --epochs 24 --state-every 10 --keep 5

Part 1 runs standalone smoke trials (no Ray, as a notebook or `run_gan_trial` would): "before"
is the old rule replayed by the same code (a full state every epoch, none removed), "after"
the new one; bytes written are counted as the loop writes them.
Part 2 measures real one-trial smoke searches (bytes on disk in the trial's Tune folder:
checkpoints kept by `--keep-epochs` + its `states/`).
Part 3 projects both rules to the seed sizes from the models' parameter counts (float32
weights; Adam's two moments per weight in the training state).
"""
from __future__ import annotations

import argparse
import os
import tempfile
from pathlib import Path

from trainables.gan import GANConfig, build_models, preset
from trainables.gan.checkpoint import FULL_STATES_KEPT, STATE_FILE, StateStore


def folder_bytes(path: Path) -> int:
    return sum(f.stat().st_size for f in Path(path).rglob("*") if f.is_file())


def states_written(epochs: int, every: int) -> int:
    """Full states a trial of `epochs` writes: every `every` epochs and at the last."""
    return epochs // every + (1 if epochs % every else 0)


class _CountingStore(StateStore):
    written = 0

    def save(self, state, epoch, keep=None):
        path = super().save(state, epoch, keep)
        self.written += Path(path).stat().st_size
        return path


def standalone(epochs: int, every: int, keep_all: bool, data: str, work: Path) -> dict:
    """One standalone smoke trial: bytes written, peak and final bytes on disk, states kept."""
    from orchestrator.config import SMOKE_GAN
    from trainables.context import standalone_context
    from trainables.trial import TrialSettings, run_gan_trial

    run = work / f"standalone-{epochs}-{every}-{keep_all}"
    settings = TrialSettings(experiment="acgan", data=data, search_name="disk", storage=str(work),
                             base={**SMOKE_GAN, "epochs": epochs, "state_every": every},
                             data_options={"duplicates": "drop"})
    ctx = standalone_context(run, device="cpu")
    ctx.states = store = _CountingStore(run, keep=10 ** 9 if keep_all else FULL_STATES_KEPT)
    seen = {"epoch_bytes": 0, "peak": 0}

    def report(metrics, epoch_dir):
        if epoch_dir is not None:  # what a Ray trial uploads: all but the state
            seen["epoch_bytes"] += sum(f.stat().st_size for f in epoch_dir.iterdir()
                                       if f.is_file() and f.name != STATE_FILE)
        seen["peak"] = max(seen["peak"], folder_bytes(run))

    ctx.report = report
    run_gan_trial({}, settings, ctx)
    return dict(written=seen["epoch_bytes"] + store.written, peak=seen["peak"],
                kept=folder_bytes(run), states=len(list(run.rglob(STATE_FILE))))


def searched(epochs: int, keep: int, every: int, data: str, work: Path) -> tuple[int, int]:
    """(bytes kept, bytes if every epoch's generator and state were kept) of a one-trial
    smoke search."""
    from orchestrator import pipeline
    from orchestrator.cli import search

    name = f"disk-{epochs}"
    cfg = search.config_from_args([
        "acgan", "--smoke", "--data", data, "--name", name, "--num-samples", "1",
        "--max-epochs", str(epochs), "--scheduler", "none", "--keep-epochs", str(keep),
        "--set", f"state_every={every}",
        "--storage", str(work / "ray_results"), "--mlflow-uri", f"sqlite:///{work}/mlflow.db"])
    pipeline.run_search(cfg)
    trial = next(p for p in (work / "ray_results" / name).iterdir() if p.is_dir())
    checkpoint = max(folder_bytes(c) for c in trial.glob("checkpoint_*"))
    state = max(f.stat().st_size for f in trial.glob(f"states/*/{STATE_FILE}"))
    return folder_bytes(trial), (checkpoint + state) * epochs


def projected(preset_name: str, epochs: int, keep: int, every: int) -> dict[str, float]:
    """GB written and kept per trial at a preset's seed size, from parameter counts."""
    cfg = GANConfig.from_dict(preset(preset_name))
    G, D = build_models(cfg, 3, ("COVID-19", "Normal", "Pneumonia"))
    g, d = (sum(p.numel() for p in m.parameters()) * 4 for m in (G, D))
    state = 3 * (g + d)  # weights + Adam's two moments; generator.pt (g) beside it
    return dict(state=state / 1e9, generator=g / 1e9,
                written_before=epochs * (state + g) / 1e9,
                written_after=(states_written(epochs, every) * state + epochs * g) / 1e9,
                kept_search=(FULL_STATES_KEPT * state + min(keep + 1, epochs) * g) / 1e9)


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--epochs", type=int, nargs="+", default=[2, 4, 8])
    p.add_argument("--keep", type=int, default=5)
    p.add_argument("--state-every", type=int, default=GANConfig.state_every)
    p.add_argument("--data", default="../shared/data/covid19-image-dataset")
    p.add_argument("--presets", nargs="*", default=["s0"])
    p.add_argument("--no-search", action="store_true", help="skip part 2 (Ray searches)")
    args = p.parse_args(argv)
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    work = Path(tempfile.mkdtemp(prefix="cxr-disk-"))
    every = args.state_every

    print(f"standalone smoke trial (no Ray): before = a full state every epoch, all kept; "
          f"after = state_every {every}, {FULL_STATES_KEPT} kept")
    for epochs in args.epochs:
        old = standalone(epochs, 1, True, args.data, work)
        new = standalone(epochs, every, False, args.data, work)
        print(f"  {epochs:4d} epochs: written {old['written'] / 1e6:8.2f} -> "
              f"{new['written'] / 1e6:8.2f} MB, kept {old['kept'] / 1e6:8.2f} -> "
              f"{new['kept'] / 1e6:8.2f} MB (peak {new['peak'] / 1e6:.2f}), state.pt files kept "
              f"{old['states']} -> {new['states']}")

    if not args.no_search:
        import ray

        ray.init(num_cpus=2, include_dashboard=False)
        rows = [(e, *searched(e, args.keep, every, args.data, work)) for e in args.epochs]
        ray.shutdown()
        print(f"\nsmoke search, --keep-epochs {args.keep}, state_every {every}: bytes kept vs "
              "every epoch kept")
        for epochs, kept, all_kept in rows:
            print(f"  {epochs:4d} epochs: {kept / 1e6:8.2f} MB kept, {all_kept / 1e6:8.2f} MB if "
                  f"every epoch were kept, ratio kept/every {kept / all_kept:.2f}")

    for name in args.presets:
        epochs = int(preset(name)["epochs"])
        gb = projected(name, epochs, args.keep, every)
        print(f"{name} at seed size, {epochs} epochs (from parameter counts; state.pt "
              f"{gb['state']:.3f} GB, generator.pt {gb['generator']:.3f} GB): written per trial "
              f"{gb['written_before']:.1f} GB -> {gb['written_after']:.1f} GB "
              f"(state_every {every}); kept per search trial {gb['kept_search']:.2f} GB; "
              f"kept standalone {gb['written_before']:.1f} GB -> "
              f"{FULL_STATES_KEPT * gb['state'] + epochs * gb['generator']:.1f} GB")


if __name__ == "__main__":
    main()
