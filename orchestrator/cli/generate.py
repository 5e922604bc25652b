"""`python -m orchestrator.generate` (also `cxr-generate`): synthetic chest X-rays from a
search's selected generator, a registered model or a checkpoint, a folder per class and a
manifest CSV.

    python -m orchestrator.generate latest --per-class 100 --out synth/
    python -m orchestrator.generate --checkpoint ray_results/SEARCH/TRIAL/checkpoint_000007 \\
        --per-class 100 --out synth/
    python -m orchestrator.generate --model cxr-acgan-generator --per-class 100 --out synth/
"""
from __future__ import annotations

import argparse
import pickle
import zipfile
from collections.abc import Sequence
from pathlib import Path

from orchestrator.cli import check_out_folder, parse_then_run
from orchestrator.cli.search import HelpFormatter, add_mlflow_uri, add_search_name

GENERATOR_FILES = ("generator.pt", "state.pt")  # trainables.gan.checkpoint's file names
MANIFEST = "manifest.csv"  # trainables.gan.export.MANIFEST
# Where a search keeps a generator: one Tune checkpoint folder per kept epoch of a trial.
WHERE = ("a search keeps generator.pt in <storage>/<search>/<trial>/checkpoint_00000N/ for "
         "each trial's --keep-epochs best epochs and its latest (the ranking's `kept` column "
         "says which)")
EXAMPLES = """examples:
  python -m orchestrator.generate latest --per-class 100 --out synth/
  python -m orchestrator.generate --model cxr-acgan-generator@champion --per-class 100 \\
      --out synth/ --seed 1 --resolution 128
"""


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m orchestrator.generate", formatter_class=HelpFormatter, epilog=EXAMPLES,
        description="Synthetic chest X-rays, a folder per class and a manifest CSV, from a search's\n"
                    "selected generator, a registered model or a checkpoint (also: cxr-generate).")
    which = p.add_argument_group("which generator (one of SEARCH, --checkpoint, --model)")
    source = which.add_mutually_exclusive_group(required=True)
    add_search_name(source, nargs="?")
    source.add_argument("--checkpoint", metavar="PATH",
                        help="generator.pt, state.pt or a checkpoint folder holding one: "
                             "<storage>/<search>/<trial>/checkpoint_00000N (a search's) or "
                             "epoch_XXXX (a standalone run's)")
    source.add_argument("--model", metavar="SPEC",
                        help="a registered generator: NAME (alias champion), NAME@ALIAS, "
                             "NAME/VERSION, or runs:/RUN_ID of a search's best trial")
    add_mlflow_uri(which)
    out = p.add_argument_group("output")
    out.add_argument("--per-class", type=int, required=True, metavar="N", help="images per class")
    out.add_argument("--out", required=True, metavar="DIR",
                     help="output folder (created; must hold no export)")
    out.add_argument("--seed", type=int, default=0, metavar="N",
                     help="class c uses noise seed seed*1000+c")
    out.add_argument("--resolution", type=int, default=None, metavar="PX",
                     help="resize to this size (default: the GAN's)")
    out.add_argument("--device", default="cpu", help="torch device, e.g. cuda")
    return p


def checkpoint_problem(path: str | Path, flag: str = "--checkpoint") -> str | None:
    """Why ``path`` is not a generator checkpoint (a missing path, a trial or search folder,
    a checkpoint folder whose generator was not kept), naming what to pass; None if it is a
    file or a folder holding one (its content is checked when it is loaded)."""
    path = Path(path)
    if not path.exists():
        return f"{flag} {path}: no such file or folder ({WHERE})"
    if path.is_file() or any((path / name).is_file() for name in GENERATOR_FILES):
        return None
    kept = _kept_checkpoints(path)
    if kept:
        return (f"{flag} {path} is a trial folder, not a checkpoint: pass one of its checkpoint "
                f"folders that holds generator.pt, e.g. {kept[-1]} ({len(kept)} kept: "
                f"{', '.join(p.name for p in kept[-3:])}{', ...' if len(kept) > 3 else ''})")
    trials = [p for p in sorted(path.iterdir()) if p.is_dir() and _kept_checkpoints(p)]
    if trials:
        example = _kept_checkpoints(trials[0])[-1]
        return (f"{flag} {path} is a search's folder, not a checkpoint: pass the search's "
                f"name (python -m orchestrator.generate {path.resolve().name} ...) for its "
                f"selected generator, or a trial's checkpoint folder, e.g. {example}")
    siblings = _kept_checkpoints(path.parent) if path.name.startswith("checkpoint_") else []
    also = f"; kept beside it: {', '.join(p.name for p in siblings[-3:])}" if siblings else ""
    return f"{flag} {path} holds no generator.pt or state.pt ({WHERE}){also}"


def _kept_checkpoints(folder: Path) -> list[Path]:
    """The checkpoint_* / epoch_* folders directly in ``folder`` that hold a generator."""
    found = [p for pattern in ("checkpoint_*", "epoch_*") for p in folder.glob(pattern)
             if any((p / name).is_file() for name in GENERATOR_FILES)]
    return sorted(found)


def checked(a: argparse.Namespace) -> argparse.Namespace:
    """The options, checked before MLflow or torch load (ValueError / ConfigError)."""
    if a.per_class < 1:
        raise ValueError(f"--per-class must be >= 1, got {a.per_class}")
    if a.resolution is not None and a.resolution < 1:
        raise ValueError(f"--resolution must be >= 1, got {a.resolution}")
    if a.checkpoint:
        problem = checkpoint_problem(a.checkpoint)
        if problem:
            raise ValueError(problem)
    check_out_folder(a.out)
    if (Path(a.out) / MANIFEST).exists():
        raise ValueError(f"--out {a.out} already holds an export ({MANIFEST}): choose an empty "
                         "folder (or delete the old export) so that exports are never mixed")
    return a


def generator_path(a: argparse.Namespace) -> str | Path:
    """The generator the options name; LookupError when MLflow has no such model or search.
    A search gives the generator it registered last: its selection, or a re-rank's."""
    if a.checkpoint:
        return a.checkpoint
    # MLflow and torch: only once the options are good
    from orchestrator.store import models

    if a.model:
        return models.generator_artifact(a.model, a.mlflow_uri)
    from orchestrator.store.reader import resolve_name

    return models.search_generator(resolve_name(a.search, a.mlflow_uri), a.mlflow_uri).path


# What loading a file that is no GAN checkpoint raises: no torch file, a torn or empty one,
# another program's pickle, a dict without the generator's keys.
UNREADABLE = (OSError, ValueError, KeyError, EOFError, RuntimeError, pickle.UnpicklingError,
              zipfile.BadZipFile)


def check_loads(checkpoint: str | Path, what: str) -> None:
    """ConfigError in one line unless ``checkpoint`` loads as a generator (a small file: it is
    loaded again by the export, so that an error there is never taken for the user's)."""
    from orchestrator.config import ConfigError
    from trainables.gan.checkpoint import load_generator

    try:
        load_generator(checkpoint)
    except UNREADABLE as exc:
        # torch's unpickling message advises weights_only=False: not advice to pass on
        first = "" if isinstance(exc, pickle.UnpicklingError) else \
            (str(exc).strip().splitlines() or [""])[0]
        raise ConfigError(f"{what}: not a generator checkpoint written by a search or "
                          f"train_gan ({type(exc).__name__}{': ' + first if first else ''}); "
                          f"{WHERE}") from None


def run(a: argparse.Namespace) -> None:
    from orchestrator.config import ConfigError

    try:
        checkpoint = generator_path(a)
    except LookupError as exc:  # StoreError too: no such search, no store
        raise ConfigError(str(exc)) from None
    check_loads(checkpoint, f"--checkpoint {a.checkpoint}" if a.checkpoint else str(checkpoint))
    from trainables.gan.export import export_synthetic

    manifest = export_synthetic(checkpoint, a.per_class, a.out, seed=a.seed,
                                resolution=a.resolution, device=a.device)
    print(f"wrote {manifest}")


def main(argv: Sequence[str] | None = None) -> int:
    a = build_parser().parse_args(argv)
    return parse_then_run(lambda: checked(a), run)
