"""`python -m orchestrator.generate`: PNGs per class + manifest from a saved generator."""
from __future__ import annotations

import numpy as np
import pandas as pd
from PIL import Image

from orchestrator.cli.generate import main
from trainables.gan import GANConfig
from trainables.gan.build import build_generator
from trainables.gan.checkpoint import save_generator


def test_generate_exports_pngs_and_manifest(tmp_path):
    cfg = GANConfig(family="acgan", resolution=16, channels=1, width=0.125)
    classes = ("COVID-19", "Normal", "Viral Pneumonia")
    (tmp_path / "ep").mkdir()
    save_generator(tmp_path / "ep", build_generator(cfg, 3), cfg, classes, (0, 1, 2))
    out = tmp_path / "synth"
    assert main(["--checkpoint", str(tmp_path / "ep"), "--per-class", "2", "--out", str(out)]) == 0
    m = pd.read_csv(out / "manifest.csv")
    assert m.groupby("class").size().to_dict() == {c: 2 for c in classes}
    img = np.asarray(Image.open(out / m.path[0]))
    assert img.shape == (16, 16) and img.dtype == np.uint8
    # an export is never mixed with another: one error line, rc 2
    assert main(["--checkpoint", str(tmp_path / "ep"), "--per-class", "1", "--out", str(out)]) == 2
