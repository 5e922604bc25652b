"""t-SNE and contact-sheet PNGs, and the pytorch-fid loading path (from disk, never downloaded)."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from trainables.metrics.features import PT_FID_FILE, load_extractor
from trainables.metrics.inception_score import inception_score
from trainables.metrics.tsne import tsne_plot


@pytest.mark.slow  # sklearn t-SNE: ~10 s idle, ~50 s on the shared 2 cores
def test_tsne_png(tmp_path):
    rng = np.random.default_rng(0)
    out = tsne_plot(rng.normal(size=(15, 8)), rng.normal(size=(15, 8)) + 3, tmp_path / "t.png")
    assert Image.open(out).size[0] > 100


def test_pytorch_fid_weights_are_read_from_the_hub_cache_without_download(tmp_path):
    """Plumbing only: a state dict with pytorch-fid's layout (random values, never used as a
    metric) placed where the real weights go must load from disk and expose 1008 logits."""
    from pytorch_fid.inception import fid_inception_v3, FID_WEIGHTS_URL  # noqa: F401
    from pytorch_fid import inception as pfi
    net = pfi._inception_v3(num_classes=1008, aux_logits=False, weights=None)
    for name, block in [("Mixed_5b", pfi.FIDInceptionA(192, 32)), ("Mixed_5c", pfi.FIDInceptionA(256, 64)),
                        ("Mixed_5d", pfi.FIDInceptionA(288, 64)), ("Mixed_6b", pfi.FIDInceptionC(768, 128)),
                        ("Mixed_6c", pfi.FIDInceptionC(768, 160)), ("Mixed_6d", pfi.FIDInceptionC(768, 160)),
                        ("Mixed_6e", pfi.FIDInceptionC(768, 192)), ("Mixed_7b", pfi.FIDInceptionE_1(1280)),
                        ("Mixed_7c", pfi.FIDInceptionE_2(2048))]:
        setattr(net, name, block)
    (tmp_path / "checkpoints").mkdir()
    torch.save(net.state_dict(), tmp_path / "checkpoints" / PT_FID_FILE)
    ex = load_extractor("auto", dims=768, hub_dir=tmp_path, device="cpu")
    assert ex.name == "pytorch-fid" and ex.has_logits and ex.dims == 768
    imgs = np.random.default_rng(0).integers(0, 255, (2, 32, 32, 1), dtype=np.uint8)
    f, logits = ex.features(imgs, with_logits=True)
    assert f.shape == (2, 768) and logits.shape == (2, 1008)
    assert np.isfinite(inception_score(logits, splits=1)[0])
