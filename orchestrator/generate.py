"""Export synthetic chest X-rays from a saved GAN: one PNG per image, a folder per class and
a manifest CSV.

    python -m orchestrator.generate --checkpoint runs/gan/epoch_0288 --per-class 100 --out synth/

The output folder has the folder-per-class layout `trainables.data.load_image_set` reads.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Sequence

import pandas as pd
from PIL import Image

from trainables.classifier.strategies import synth_from_generator

MANIFEST = "manifest.csv"


def export_synthetic(checkpoint: str | Path, per_class: int, out: str | Path, *, seed: int = 0,
                     resolution: int | None = None, device: str = "cpu") -> Path:
    """Write ``per_class`` images of every class the generator was trained on to
    out/<class>/<class>_<n>.png and out/manifest.csv; returns the manifest's path.
    Class c uses noise seed ``seed * 1000 + c`` (the same draw as the classifier's GAN
    oversampling with that seed)."""
    from trainables.gan import load_generator

    if per_class < 1:
        raise ValueError(f"--per-class must be >= 1, got {per_class}")
    out = Path(out)
    if (out / MANIFEST).exists():
        raise FileExistsError(f"{out / MANIFEST} exists: choose an empty --out folder (or delete "
                              "the old export) so that exports are never mixed")
    G, cfg, classes = load_generator(checkpoint, device=device)
    res = resolution or cfg.resolution
    synth = synth_from_generator(G, cfg.latent_dim, resolution=res, channels=cfg.channels,
                                 device=device, latent_dist=cfg.latent_dist)
    indices = list(getattr(G, "class_indices", range(len(classes))))
    rows = []
    for c in indices:
        folder = out / classes[c]
        folder.mkdir(parents=True, exist_ok=True)
        images = synth(c, per_class, seed * 1000 + c)
        for i, img in enumerate(images):
            path = folder / f"{classes[c]}_{i:05d}.png"
            Image.fromarray(img[..., 0] if img.shape[-1] == 1 else img).save(path)
            rows.append({"path": str(path.relative_to(out)), "class": classes[c],
                         "class_index": c, "seed": seed * 1000 + c, "index": i,
                         "checkpoint": str(checkpoint)})
    manifest = out / MANIFEST
    pd.DataFrame(rows).to_csv(manifest, index=False)
    return manifest


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m orchestrator.generate", description=__doc__.split("\n")[0])
    source = p.add_mutually_exclusive_group(required=True)
    source.add_argument("--checkpoint", help="generator.pt, state.pt or an epoch dir")
    source.add_argument("--model", help="a registered generator: NAME (alias champion), "
                        "NAME@ALIAS, NAME/VERSION, or runs:/RUN_ID of a search's best trial")
    p.add_argument("--mlflow-uri", default="sqlite:///mlruns/mlflow.db",
                   help="where --model is looked up")
    p.add_argument("--per-class", type=int, required=True, help="images per class")
    p.add_argument("--out", required=True, help="output folder (created; must hold no export)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--resolution", type=int, default=None, help="resize to this size (default: the GAN's)")
    p.add_argument("--device", default="cpu")
    a = p.parse_args(argv)
    checkpoint = a.checkpoint
    if a.model:
        from orchestrator.finalize import generator_artifact

        try:
            checkpoint = generator_artifact(a.model, a.mlflow_uri)
        except LookupError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2
    manifest = export_synthetic(checkpoint, a.per_class, a.out, seed=a.seed,
                                resolution=a.resolution, device=a.device)
    print(f"wrote {manifest}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
