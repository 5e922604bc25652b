"""`python -m orchestrator.generate` (also `cxr-generate`): synthetic chest X-rays from a
search's selected generator, a registered model or a checkpoint, a folder per class and a
manifest CSV.

    python -m orchestrator.generate latest --per-class 100 --out synth/
    python -m orchestrator.generate --checkpoint runs/gan/epoch_0288 --per-class 100 --out synth/
    python -m orchestrator.generate --model cxr-acgan-generator --per-class 100 --out synth/
"""
from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from orchestrator.cli.search import HelpFormatter, add_mlflow_uri, add_search_name

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
                        help="generator.pt, state.pt or an epoch dir")
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


def main(argv: Sequence[str] | None = None) -> int:
    a = build_parser().parse_args(argv)
    try:
        checkpoint = generator_path(a)
    except LookupError as exc:  # StoreError too: no such search, no store
        print(f"error: {exc}", file=sys.stderr)
        return 2
    from trainables.gan.export import export_synthetic

    manifest = export_synthetic(checkpoint, a.per_class, a.out, seed=a.seed,
                                resolution=a.resolution, device=a.device)
    print(f"wrote {manifest}")
    return 0
