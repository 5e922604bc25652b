"""`python -m orchestrator.generate`: synthetic chest X-rays from a saved or registered GAN,
a folder per class and a manifest CSV.

    python -m orchestrator.generate --checkpoint runs/gan/epoch_0288 --per-class 100 --out synth/
    python -m orchestrator.generate --model cxr-acgan-generator --per-class 100 --out synth/
"""
from __future__ import annotations

import argparse
import sys
from typing import Sequence

from orchestrator.config import DEFAULT_MLFLOW_URI
from orchestrator.store.models import generator_artifact
from trainables.gan.export import export_synthetic


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m orchestrator.generate", description=__doc__.split("\n")[0])
    source = p.add_mutually_exclusive_group(required=True)
    source.add_argument("--checkpoint", help="generator.pt, state.pt or an epoch dir")
    source.add_argument("--model", help="a registered generator: NAME (alias champion), "
                        "NAME@ALIAS, NAME/VERSION, or runs:/RUN_ID of a search's best trial")
    p.add_argument("--mlflow-uri", default=DEFAULT_MLFLOW_URI,
                   help="where --model is looked up")
    p.add_argument("--per-class", type=int, required=True, help="images per class")
    p.add_argument("--out", required=True, help="output folder (created; must hold no export)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--resolution", type=int, default=None, help="resize to this size (default: the GAN's)")
    p.add_argument("--device", default="cpu")
    a = p.parse_args(argv)
    checkpoint = a.checkpoint
    if a.model:
        try:
            checkpoint = generator_artifact(a.model, a.mlflow_uri)
        except LookupError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2
    manifest = export_synthetic(checkpoint, a.per_class, a.out, seed=a.seed,
                                resolution=a.resolution, device=a.device)
    print(f"wrote {manifest}")
    return 0
