"""Memorisation metrics (issue 23): analytic answers for the maths, real X-rays for the
copy detector, and the `python -m orchestrator.audit` command run in-process."""
from __future__ import annotations

import io
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from orchestrator.cli import audit as audit_cli
from trainables.metrics import memorisation as mem

# --- the maths, on hand-built points -------------------------------------------------------

def test_nearest_distances_hand_computed_any_block_size():
    query = np.array([[0.0, 0.0], [3.0, 4.0]])
    reference = np.array([[0.0, 1.0], [6.0, 8.0], [3.0, 0.0]])
    for block in (1, 2, 1024):
        dist, index = mem.nearest_distances(query, reference, block=block)
        np.testing.assert_allclose(dist, [1.0, 4.0])  # (3,4)->(3,0): 4 < 5 < sqrt(18)
        assert index.tolist() == [0, 2]


def test_nearest_distances_exclude_self_skips_the_image_itself():
    x = np.array([[0.0], [1.0], [5.0]])
    dist, index = mem.nearest_distances(x, x, exclude_self=True, block=2)
    np.testing.assert_allclose(dist, [1.0, 1.0, 4.0])
    assert index.tolist() == [1, 0, 1]
    assert mem.nearest_distances(x, x)[0].tolist() == [0.0, 0.0, 0.0]


def test_memorised_share_threshold_is_the_heldout_quantile():
    train = np.arange(10.0)[:, None] * 10  # 0, 10, ..., 90
    held_d = 1.0 + 0.2 * np.arange(20)  # nearest-training distances 1.0 .. 4.8
    heldout = train[np.arange(20) % 10] + held_d[:, None]
    fakes = np.array([[20.0], [30.5], [41.18], [51.2], [63.0]])  # distances 0 .5 1.18 1.2 3
    out = mem.memorised_share(fakes, train, heldout, q=0.05)
    assert out["threshold"] == pytest.approx(1.19)  # linear quantile: 1 + 0.95 * 0.2
    assert out["memorised_share"] == pytest.approx(3 / 5)
    assert out["n"] == 5 and out["q"] == 0.05
    np.testing.assert_allclose(out["distances"], [0, 0.5, 1.18, 1.2, 3], atol=1e-9)
    assert out["nearest"].tolist() == [2, 3, 4, 5, 6]


def test_memorised_share_refuses_too_small_heldout_set():
    x = np.zeros((19, 2))
    with pytest.raises(ValueError, match="has 19 images.*needs at least 20"):
        mem.memorised_share(x, x, x, q=0.05)
    assert mem.min_heldout(0.25) == 4 and mem.min_heldout(0.3) == 4


def test_prdc_hand_computed_on_a_line():
    real = np.array([[0.0], [1.0], [2.0], [3.0]])  # k=1 radii: 1, 1, 1, 1
    fake = np.array([[0.5], [10.0]])  # fake k=1 radii: 9.5, 9.5
    out = mem.prdc(real, fake, k=1, block=3)
    # precision: 0.5 is inside real 0's ball, 10 in none; density: 0.5 is in 2 balls, 10 in 0;
    # recall: every real within 9.5 of 0.5; coverage: reals 0 and 1 have a fake closer than 1.
    assert out == {"precision": 0.5, "recall": 1.0, "density": 1.0, "coverage": 0.5}


def test_prdc_identical_sets_score_one_and_disjoint_sets_zero():
    x = np.random.default_rng(0).normal(size=(60, 8))
    same = mem.prdc(x, x.copy(), k=5, block=16)
    assert same == pytest.approx({"precision": 1, "recall": 1, "density": 1, "coverage": 1})
    far = mem.prdc(x, x + 1000.0, k=5)
    assert far == {"precision": 0.0, "recall": 0.0, "density": 0.0, "coverage": 0.0}


def test_pixel_features_ignore_brightness_and_contrast():
    img = np.random.default_rng(1).integers(0, 200, size=(2, 40, 40, 1), dtype=np.uint8)
    brighter = (img.astype(np.int64) // 2 + 50).astype(np.uint8)  # re-windowed copy
    f = mem.pixel_features(np.concatenate([img, brighter]))
    assert f.shape == (4, 32 * 32)
    np.testing.assert_allclose(np.linalg.norm(f, axis=1), 1.0, atol=1e-5)
    np.testing.assert_allclose(f.mean(axis=1), 0.0, atol=1e-6)
    assert np.linalg.norm(f[0] - f[2]) < 0.05 and np.linalg.norm(f[0] - f[1]) > 1.0
    rgb = np.repeat(img, 3, axis=-1)
    np.testing.assert_allclose(mem.pixel_features(rgb), f[:2], atol=1e-5)


# --- real X-rays: copies are flagged, unseen images and noise are not ----------------------

def _jpeg_resized(img: np.ndarray, side: int = 96, quality: int = 75) -> np.ndarray:
    """The same X-ray resized and re-encoded as JPEG, then read back at its first size."""
    buf = io.BytesIO()
    Image.fromarray(img[..., 0]).resize((side, side), Image.Resampling.BILINEAR).save(
        buf, "JPEG", quality=quality)
    back = Image.open(io.BytesIO(buf.getvalue())).convert("L").resize(img.shape[1::-1])
    return np.asarray(back)[..., None]


@pytest.fixture(scope="module")
def xrays(radiography_dir) -> dict[str, np.ndarray]:
    """Disjoint sets of real 128 px X-rays (both classes): train, heldout, unseen."""
    files = [f for c in ("COVID", "Normal") for f in sorted((radiography_dir / c).glob("*.png"))[:210]]
    files = [files[i] for i in np.random.default_rng(0).permutation(len(files))]
    imgs = np.stack([np.asarray(Image.open(f).convert("L"))[..., None] for f in files])
    return {"train": imgs[:300], "heldout": imgs[300:360], "unseen": imgs[360:420]}


def test_copying_generator_is_flagged_in_pixel_space(xrays):
    train = xrays["train"]
    copies = np.concatenate([train[:20], np.stack([_jpeg_resized(x) for x in train[20:40]])])
    f = {k: mem.pixel_features(v) for k, v in xrays.items()}
    out = mem.memorised_share(mem.pixel_features(copies), f["train"], f["heldout"])
    assert out["memorised_share"] >= 0.9
    assert (out["nearest"] == np.arange(40)).mean() >= 0.9  # and each points at its original


def test_unseen_real_images_are_not_flagged(xrays):
    f = {k: mem.pixel_features(v) for k, v in xrays.items()}
    out = mem.memorised_share(f["unseen"], f["train"], f["heldout"])
    assert out["memorised_share"] <= 0.1


def test_noise_has_no_precision(xrays):
    noise = np.random.default_rng(2).integers(0, 256, size=(60, 128, 128, 1), dtype=np.uint8)
    out = mem.prdc(mem.pixel_features(xrays["train"]), mem.pixel_features(noise), k=5)
    assert out["precision"] <= 0.02 and out["coverage"] <= 0.02


def test_copies_are_flagged_with_inception_features(xrays):
    """One small check in the project's feature space (~16 images through Inception)."""
    from trainables.metrics.features import WeightsNotFoundError, load_extractor
    try:
        ex = load_extractor("tf-inception-torchscript", dims=2048, device="cpu")
    except WeightsNotFoundError as exc:
        pytest.skip(str(exc))
    train, held = xrays["train"][:8], xrays["heldout"][:4]
    copies = np.concatenate([train[:2], np.stack([_jpeg_resized(x) for x in train[2:4]])])
    feats = [ex.features(x, batch_size=16)[0] for x in (copies, train, held)]
    out = mem.memorised_share(*feats, q=0.25)
    assert out["memorised_share"] >= 0.9


# --- the audit command ---------------------------------------------------------------------

@pytest.fixture(scope="module")
def small_source(tmp_path_factory, radiography_dir):
    """A 2 x 150-image copy of the radiography subset (own splits), its cache, and its
    (fit, val, test) path lists as the data loader splits them."""
    from trainables.data import load_image_set
    from trainables.data.selection import load_selection_sets

    root = tmp_path_factory.mktemp("audit")
    for c in ("COVID", "Normal"):
        (root / "src" / c).mkdir(parents=True)
        for f in sorted((radiography_dir / c).glob("*.png"))[:150]:
            shutil.copy(f, root / "src" / c / f.name)
    mp = pytest.MonkeyPatch()
    mp.setenv("CXR_CACHE_DIR", str(root / "cache"))
    fit, val = load_selection_sets(root / "src", resolution=128, duplicates="keep")
    test = load_image_set(root / "src", "test", resolution=128, duplicates="keep")
    yield root, [list(s.paths) for s in (fit, val, test)]
    mp.undo()


def _folder(dst: Path, paths: list[str], reencode: int = 0) -> Path:
    """Copies of ``paths`` in ``dst``; the last ``reencode`` of them as 96 px JPEGs."""
    dst.mkdir(parents=True)
    for i, p in enumerate(paths):
        if i >= len(paths) - reencode:
            Image.open(p).convert("L").resize((96, 96)).save(dst / f"{i}.jpg", quality=80)
        else:
            shutil.copy(p, dst / f"{i}.png")
    return dst


def test_audit_flags_a_folder_of_training_copies(small_source, capsys):
    root, (fit, _, _) = small_source
    synth = _folder(root / "copies", fit[:30], reencode=10)
    out = root / "out_copies"
    rc = audit_cli.main(["--synthetic", str(synth), "--data", str(root / "src"),
                         "--space", "pixel", "--out", str(out), "--top", "4"])
    printed = capsys.readouterr().out
    assert rc == 0
    result = json.loads((out / "audit.json").read_text())
    assert result["memorised_share"] >= 0.9 and result["n_synthetic"] == 30
    assert {"precision", "recall", "density", "coverage", "threshold", "q", "space",
            "pairs"} <= set(result)
    assert len(result["pairs"]) == 4 and result["pairs"][0]["distance"] < result["threshold"]
    assert "resized 10 of 30 synthetic image(s) to 128x128" in printed
    assert "memorised share" in printed and (out / "most_copied.png").stat().st_size > 0


def test_audit_passes_unseen_real_images(small_source, tmp_path):
    root, (_, _, test) = small_source
    synth = _folder(tmp_path / "unseen", test)
    rc = audit_cli.main(["--synthetic", str(synth), "--data", str(root / "src"),
                         "--space", "pixel", "--json", str(tmp_path / "r.json"),
                         "--out", str(tmp_path / "out")])
    assert rc == 0
    assert json.loads((tmp_path / "r.json").read_text())["memorised_share"] <= 0.1


@pytest.mark.parametrize("case", ["empty", "no_data", "small_heldout"])
def test_audit_user_errors_are_one_line_and_exit_2(small_source, tmp_path, capsys, case):
    root, (fit, val, _) = small_source
    synth = tmp_path / "empty" if case == "empty" else _folder(tmp_path / "s", fit[:5])
    synth.mkdir(exist_ok=True)
    argv = ["--synthetic", str(synth), "--out", str(tmp_path / "out")]
    argv += [] if case == "no_data" else ["--data", str(root / "src")]
    if case == "small_heldout":
        argv += ["--heldout", str(_folder(tmp_path / "h", val[:5]))]
    assert audit_cli.main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "\n" not in err and "Traceback" not in err
    expected = {"empty": "no PNG/JPEG images", "no_data": "--data is required",
                "small_heldout": "needs at least 20"}[case]
    assert expected in err


def test_audit_draws_from_a_generator(small_source, tmp_path, capsys):
    """--generator instead of --synthetic: the images are drawn first (the same export as
    `generate`); an untrained generator draws noise, which copies nothing."""
    from trainables.gan import GANConfig
    from trainables.gan.build import build_generator
    from trainables.gan.checkpoint import save_generator

    root, _ = small_source
    cfg = GANConfig(family="acgan", resolution=32, channels=1, width=0.125)
    (tmp_path / "ep").mkdir()
    save_generator(tmp_path / "ep", build_generator(cfg, 2), cfg, ("COVID-19", "Normal"), (0, 1))
    out = tmp_path / "out"
    rc = audit_cli.main(["--generator", str(tmp_path / "ep"), "--per-class", "15",
                         "--data", str(root / "src"), "--out", str(out)])
    assert rc == 0, capsys.readouterr().err
    result = json.loads((out / "audit.json").read_text())
    assert result["n_synthetic"] == 30 and result["generator"] == str(tmp_path / "ep")
    assert result["memorised_share"] <= 0.1 and (out / "synthetic" / "manifest.csv").is_file()
    assert audit_cli.main(["--generator", str(tmp_path / "ep"), "--data", str(root / "src"),
                           "--out", str(out)]) == 2  # never mixes two exports
    assert "already holds an export" in capsys.readouterr().err


def test_audit_generator_errors_name_the_generator(tmp_path, capsys):
    missing = str(tmp_path / "nope" / "generator.pt")
    assert audit_cli.main(["--generator", missing, "--data", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip()
    assert err == f"error: --generator {missing}: no such file or folder"


def test_audit_defaults_match_the_metric_module_and_help_imports_no_torch():
    import subprocess
    import sys

    assert (audit_cli.DEFAULT_Q, audit_cli.DEFAULT_K) == (mem.DEFAULT_Q, mem.DEFAULT_K)
    code = ("import sys; from orchestrator.cli.audit import main\n"
            "try: main(['--help'])\nexcept SystemExit: pass\n"
            "print(sorted(m for m in ('torch', 'mlflow', 'ray') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip().endswith("[]")


# ------------------------------------------------------------------------------ per epoch
class _Replay(torch.nn.Module):
    """A "generator" that returns stored images in turn: its training images (a copier)
    or anything else, as [-1, 1] NCHW like a real G(z, y)."""

    def __init__(self, images: np.ndarray):
        super().__init__()
        self.register_buffer("x", torch.from_numpy(images).permute(0, 3, 1, 2).float() / 127.5 - 1)
        self.calls = 0

    def forward(self, z, y):
        idx = (torch.arange(len(z)) + self.calls) % len(self.x)
        self.calls += len(z)
        return self.x[idx]


class _image_set:
    """The parts of an ImageSet the evaluator reads."""

    def __init__(self, images: np.ndarray, split: str):
        self.images, self.labels = images, np.arange(len(images)) % 2
        self.classes, self.split = ("COVID-19", "Normal"), split
        self.fingerprint = f"test-{split}-{len(images)}"

    def __len__(self) -> int:
        return len(self.images)


def test_the_evaluator_flags_a_copying_generator_each_epoch(xrays, tmp_path):
    """Issue 23: `memorisation` in the per-epoch evaluator: a generator replaying its
    training images scores memorised_share >= 0.9, one replaying unseen real images <= 0.1;
    the copy view lists pairs at distance ~0."""
    from trainables.metrics.evaluator import GanEvaluator

    train = xrays["train"][:, ::4, ::4]  # 32 px, as a smoke trial
    heldout, unseen = xrays["heldout"][:, ::4, ::4], xrays["unseen"][:, ::4, ::4]
    ev = GanEvaluator(_image_set(heldout, "val"), metrics=("memorisation",), n_fake=40,
                      real_train=_image_set(train, "train"), latent_dim=4, device="cpu")
    assert ev.protocol["memorised_q"] == 0.05 and ev.protocol["memorised_threshold"] > 0
    copier = ev(_Replay(train), epoch=0)
    assert copier["memorised_share"] >= 0.9 and copier["nn_train_distance"] < 1e-3
    honest = ev(_Replay(unseen), epoch=0)
    assert honest["memorised_share"] <= 0.1
    pairs = ev.most_copied(_Replay(train), top=3)
    assert len(pairs) == 3 and all(d < 1e-3 for _, _, d in pairs)
    png = ev.copy_view(_Replay(train), tmp_path / "most_copied.png", top=3)
    assert png.is_file() and png.read_bytes()[:4] == b"\x89PNG"


def test_the_evaluator_skips_memorisation_with_a_reason_when_it_cannot_measure(xrays):
    from trainables.metrics.evaluator import GanEvaluator

    small = xrays["heldout"][:10, ::4, ::4]  # fewer than 1 / 0.05 = 20 held-out images
    ev = GanEvaluator(_image_set(small, "val"), metrics=("memorisation",), n_fake=10,
                      real_train=_image_set(xrays["train"][:, ::4, ::4], "train"), latent_dim=4,
                      device="cpu")
    assert "needs at least 20" in ev.protocol["skipped"]["memorised_share"]
    assert "memorised_share" not in ev(_Replay(small), epoch=0)


def test_the_evaluator_measures_copies_in_inception_space_too(xrays, tmp_path):
    """Issue 23 item 1: beside pixels, the nearest-training distance in the FID network's
    feature space, whose training features are cached like the real statistics."""
    from trainables.metrics.evaluator import GanEvaluator
    from trainables.metrics.features import WeightsNotFoundError, load_extractor
    try:
        load_extractor("tf-inception-torchscript", dims=2048, device="cpu")
    except WeightsNotFoundError as exc:
        pytest.skip(str(exc))
    train = xrays["train"][:60, ::4, ::4]
    heldout, unseen = xrays["heldout"][:40, ::4, ::4], xrays["unseen"][:40, ::4, ::4]
    ev = GanEvaluator(_image_set(heldout, "val"), metrics=("fid", "memorisation_inception"), n_fake=40,
                      real_train=_image_set(train, "train"), latent_dim=4, device="cpu",
                      extractor="tf-inception-torchscript", dims=2048, cache_dir=tmp_path)
    copier = ev(_Replay(train), epoch=0)
    assert copier["memorised_share_inception"] >= 0.9
    assert copier["nn_train_distance_inception"] < 1e-2 * ev.protocol["memorised_inception_threshold"]
    honest = ev(_Replay(unseen), epoch=1)
    assert honest["memorised_share_inception"] <= 0.15
    assert ev.cache.misses == 2  # validation statistics and training features, each once
