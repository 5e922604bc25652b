"""Preprocessing (crops, IAGC), PositionalAugment, to_tensor and concurrent cache builds."""
from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from trainables.data import PositionalAugment, PreprocessConfig, to_tensor
from trainables.data.preprocess import crop, iagc, preprocess

REPO = Path(__file__).resolve().parents[1]


def test_to_tensor_ranges_and_layout():
    batch = np.zeros((2, 4, 5, 3), np.uint8)
    batch[0, 1, 2, 0] = 255
    x = to_tensor(batch)
    assert x.shape == (2, 3, 4, 5) and x.dtype == torch.float32
    assert x.min() == -1 and x[0, 0, 1, 2] == 1
    y = to_tensor(torch.from_numpy(batch), value_range="[0,1]")
    assert y.min() == 0 and y[0, 0, 1, 2] == 1
    with pytest.raises(ValueError, match="uint8 \\(N, H, W, C\\)"):
        to_tensor(batch.astype(np.float32))
    with pytest.raises(ValueError, match="value_range"):
        to_tensor(batch, value_range="[0,255]")


def test_crop_top_removes_burned_in_text_band():
    arr = np.full((100, 80), 50, np.uint8)
    arr[:8] = 255  # the top 8 % holds "text"
    out = crop(Image.fromarray(arr), PreprocessConfig(crop_top=0.08))
    assert out.size == (80, 92) and np.asarray(out).max() == 50


def test_central_crop_keeps_the_centre():
    arr = np.zeros((100, 100), np.uint8)
    arr[25:75, 25:75] = 200
    out = np.asarray(crop(Image.fromarray(arr), PreprocessConfig(central_crop=0.5)))
    assert out.shape == (50, 50) and (out == 200).all()


def test_preprocess_shape_and_channels():
    img = Image.fromarray(np.random.default_rng(0).integers(0, 255, (60, 40), np.uint8))
    grey = preprocess(img, resolution=16, channels=1, cfg=PreprocessConfig())
    rgb = preprocess(img, resolution=16, channels=3, cfg=PreprocessConfig(iagc=True))
    assert grey.shape == (16, 16, 1) and rgb.shape == (16, 16, 3) and grey.dtype == np.uint8


def test_iagc_brightens_dim_darkens_bright_keeps_normal():
    rng = np.random.default_rng(0)
    dim = rng.integers(10, 60, (64, 64)).astype(np.uint8)       # mean ~35 < 0.7 x 112
    bright = rng.integers(200, 250, (64, 64)).astype(np.uint8)  # mean ~225 > 1.3 x 112
    normal = rng.integers(80, 140, (64, 64)).astype(np.uint8)   # within +-30 % of 112
    assert iagc(dim).mean() > dim.mean() + 20
    assert iagc(bright).mean() < bright.mean() - 20
    np.testing.assert_array_equal(iagc(normal), normal)
    # A gamma curve keeps the order of grey levels (monotone mapping).
    order = np.argsort(dim.ravel(), kind="stable")
    assert (np.diff(iagc(dim).ravel()[order].astype(int)) >= 0).all()


def test_iagc_truncated_gamma_is_at_most_square_root():
    # With the truncated CDF the gamma never goes below 0.5, so out <= 255 * (in/255) ** 0.5.
    dim = np.random.default_rng(1).integers(0, 70, (32, 32)).astype(np.uint8)
    bound = np.round(255 * (dim / 255.0) ** 0.5)
    assert (iagc(dim) <= bound + 1).all()


def image_batch() -> torch.Tensor:
    x = torch.linspace(-1, 1, 32).view(1, 1, 1, 32).expand(4, 1, 32, 32).clone()
    x[:, :, :, :8] = -1
    return x


def test_augment_identity_when_all_ranges_are_zero():
    aug = PositionalAugment(translate=0, degrees=0, zoom=0, intensity=0, seed=0)
    x = image_batch()
    torch.testing.assert_close(aug(x), x, atol=1e-5, rtol=0)


def test_augment_is_seeded_and_hflip_only_when_asked():
    x = image_batch()
    a = PositionalAugment(seed=3)(x)
    b = PositionalAugment(seed=3)(x)
    c = PositionalAugment(seed=4)(x)
    torch.testing.assert_close(a, b)
    assert not torch.allclose(a, c)
    gen = torch.Generator().manual_seed(7)
    d = PositionalAugment()(x, generator=gen)
    e = PositionalAugment()(x, generator=torch.Generator().manual_seed(7))
    torch.testing.assert_close(d, e)
    assert PositionalAugment().hflip is False
    flip_only = PositionalAugment(translate=0, degrees=0, zoom=0, intensity=0, hflip=True, seed=0)
    x8 = torch.cat([x, x])
    out = flip_only(x8)
    flipped = [torch.allclose(o, torch.flip(i, [-1]), atol=1e-5) for o, i in zip(out, x8)]
    kept = [torch.allclose(o, i, atol=1e-5) for o, i in zip(out, x8)]
    assert all(f or k for f, k in zip(flipped, kept)) and any(flipped) and any(kept)


def test_augment_intensity_shift_is_bounded():
    x = torch.zeros(64, 1, 8, 8)
    out = PositionalAugment(translate=0, degrees=0, zoom=0, intensity=0.1, seed=0)(x)
    shifts = out.mean(dim=(1, 2, 3))
    assert shifts.abs().max() <= 0.2 + 1e-6 and shifts.std() > 0.05  # 10 % of a width of 2
    assert out.min() >= -1 and out.max() <= 1


@pytest.mark.slow  # two fresh interpreters importing torch: ~20 s on 2 cores
def test_two_processes_building_the_same_cache(pneumoniamnist_npz, tmp_path):
    script = textwrap.dedent(f"""
        import sys; sys.path.insert(0, {str(REPO)!r})
        from trainables.data import load_image_set
        s = load_image_set({str(pneumoniamnist_npz)!r}, "val", resolution=20,
                           cache_dir={str(tmp_path)!r})
        print(s.fingerprint, int(s.images.astype("int64").sum()))
    """)
    procs = [subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for _ in range(2)]
    outs = [p.communicate(timeout=120) for p in procs]
    assert all(p.returncode == 0 for p in procs), [err for _, err in outs]
    assert outs[0][0] == outs[1][0]
    assert len(list((tmp_path / "images").glob("*.npy"))) == 1
    assert not list((tmp_path / "images").glob(".*tmp*"))
