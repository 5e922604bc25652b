"""Export synthetic chest X-rays from a saved GAN: one PNG per image, a folder per class and
a manifest CSV (the folder-per-class layout `trainables.data.load_image_set` reads)."""
from __future__ import annotations

from pathlib import Path

import pandas as pd
from PIL import Image

from trainables.classifier.strategies import synth_from_generator
from trainables.gan.checkpoint import load_generator

MANIFEST = "manifest.csv"


def export_synthetic(checkpoint: str | Path, per_class: int, out: str | Path, *, seed: int = 0,
                     resolution: int | None = None, device: str = "cpu") -> Path:
    """Write ``per_class`` images of every class the generator was trained on to
    out/<class>/<class>_<n>.png and out/manifest.csv; returns the manifest's path.
    Class c uses noise seed ``seed * 1000 + c`` (the same draw as the classifier's GAN
    oversampling with that seed)."""
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
