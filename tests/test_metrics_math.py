"""Metric maths against analytic answers and against pytorch-fid (no Inception needed)."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from trainables.metrics.cas import accuracy_f1, bootstrap_scores, classification_accuracy_score
from trainables.metrics.features import (WeightsNotFoundError, choose_dims, load_extractor,
                                         to_uint8)
from trainables.metrics.frechet import (feature_statistics, frechet_distance,
                                        frechet_distance_from_features,
                                        trace_sqrt_product_eig, trace_sqrt_product_lowrank)
from trainables.metrics.inception_score import inception_score
from trainables.metrics.kid import kid
from trainables.metrics.stats_cache import StatsCache, stats_key
from trainables.metrics.visual import constant_fraction, diversity_ratio


def _features(n, d, seed, shift=0.0):
    rng = np.random.default_rng(seed)
    mix = rng.normal(size=(d, d)) / d ** 0.5
    return rng.normal(size=(n, d)) @ mix + shift


def test_equal_covariances_give_squared_mean_distance():
    rng = np.random.default_rng(0)
    a = rng.normal(size=(20, 20))
    sigma = a @ a.T + np.eye(20)
    mu1, mu2 = rng.normal(size=20), rng.normal(size=20)
    assert frechet_distance(mu1, sigma, mu2, sigma) == pytest.approx(((mu1 - mu2) ** 2).sum(), rel=1e-9)


def test_diagonal_gaussians_closed_form():
    s1, s2 = np.array([1.0, 4.0, 9.0]), np.array([4.0, 1.0, 16.0])
    want = ((np.sqrt(s1) - np.sqrt(s2)) ** 2).sum()
    assert frechet_distance(np.zeros(3), np.diag(s1), np.zeros(3), np.diag(s2)) == pytest.approx(want)


def test_matches_pytorch_fid_where_the_reference_is_exact():
    from pytorch_fid.fid_score import calculate_frechet_distance
    f1, f2 = _features(400, 64, 1), _features(300, 64, 2, shift=0.2)
    m1, s1 = feature_statistics(f1)
    m2, s2 = feature_statistics(f2)
    ref = calculate_frechet_distance(m1, s1, m2, s2)
    for ours in (frechet_distance(m1, s1, m2, s2), frechet_distance_from_features(f1, f2)):
        assert abs(ours - ref) / ref < 1e-6
    # the low-rank identity holds at any N, not only N <= d
    assert trace_sqrt_product_lowrank(f1, f2) == pytest.approx(trace_sqrt_product_eig(s1, s2), rel=1e-6)


def test_lowrank_path_equals_eigen_path_when_n_below_d():
    f1, f2 = _features(40, 128, 3), _features(50, 128, 4, shift=0.1)
    m1, s1 = feature_statistics(f1)
    m2, s2 = feature_statistics(f2)
    assert frechet_distance_from_features(f1, f2) == pytest.approx(
        frechet_distance(m1, s1, m2, s2), rel=1e-7)


def test_frechet_rejects_bad_shapes():
    with pytest.raises(ValueError, match="shape"):
        frechet_distance(np.zeros(3), np.eye(3), np.zeros(4), np.eye(4))
    with pytest.raises(ValueError, match="dims differ"):
        frechet_distance_from_features(np.ones((5, 3)), np.ones((5, 4)))


def test_kid_same_distribution_is_zero_within_ci_and_different_is_not():
    x = _features(200, 32, 5)
    rng = np.random.default_rng(0)
    same_x = rng.normal(size=(200, 32))
    same = kid(same_x, rng.normal(size=(200, 32)))
    assert same.ci_low <= 0.0 <= same.ci_high
    assert same.n_x == same.n_y == 200
    diff = kid(same_x, rng.normal(size=(200, 32)) + 0.5)
    assert diff.ci_low > 0
    assert diff.kid > same.kid
    assert kid(x, x + 0.0).kid == pytest.approx(kid(x, x).kid)


def test_kid_jackknife_matches_brute_force_leave_one_out():
    rng = np.random.default_rng(1)
    x, y = rng.normal(size=(8, 4)), rng.normal(size=(9, 4)) + 0.3
    r = kid(x, y)
    loo_x = [kid(np.delete(x, i, 0), y).kid for i in range(8)]
    loo_y = [kid(x, np.delete(y, j, 0)).kid for j in range(9)]
    var = 7 / 8 * np.sum((loo_x - np.mean(loo_x)) ** 2) + 8 / 9 * np.sum((loo_y - np.mean(loo_y)) ** 2)
    assert r.se == pytest.approx(np.sqrt(var), rel=1e-9)


def test_inception_score_analytic():
    assert inception_score(np.zeros((20, 5)), splits=2)[0] == pytest.approx(1.0)
    one_hot = np.eye(4)[np.arange(40) % 4] * 50.0  # confident and evenly spread
    assert inception_score(one_hot, splits=2)[0] == pytest.approx(4.0, rel=1e-6)


def test_accuracy_f1_and_bootstrap():
    y = np.array([0, 0, 1, 1, 2, 2])
    acc, f1 = accuracy_f1(y, np.array([0, 0, 1, 2, 2, 2]), 3)
    assert acc == pytest.approx(5 / 6)
    assert f1 == pytest.approx((1 + 2 / 3 + 0.8) / 3)
    s = bootstrap_scores(y, y, 3, n_boot=50)
    assert s["acc"] == s["acc_ci_low"] == s["acc_ci_high"] == 1.0


def test_cas_learns_a_separable_task_and_is_seeded():
    g = torch.Generator().manual_seed(0)
    labels = torch.arange(60) % 2
    imgs = torch.rand(60, 1, 16, 16, generator=g) * 0.2 - 0.1 + (labels.float() * 1.2 - 0.6)[:, None, None, None]
    a = classification_accuracy_score(imgs, labels, imgs[:30], labels[:30].numpy(), 2,
                                      epochs=5, size=16, n_boot=100)
    b = classification_accuracy_score(imgs, labels, imgs[:30], labels[:30].numpy(), 2,
                                      epochs=5, size=16, n_boot=100)
    assert a["acc"] >= 0.9 and a == b
    assert a["acc_ci_low"] <= a["acc"] <= a["acc_ci_high"]


def test_visual_checks_see_collapse_and_grey_images():
    g = torch.Generator().manual_seed(0)
    real = torch.rand(20, 1, 16, 16, generator=g) * 2 - 1
    labels = np.arange(20) % 2
    collapsed = real[:1].expand(20, -1, -1, -1)
    assert diversity_ratio(real, labels, real, labels) == pytest.approx(1.0)
    assert diversity_ratio(collapsed, labels, real, labels) == pytest.approx(0.0)
    grey = torch.zeros(10, 1, 16, 16)
    assert constant_fraction(torch.cat([grey, real[:10]])) == pytest.approx(0.5)


def test_to_uint8_quantises_like_png():
    x = torch.tensor([-1.0, 0.0, 1.0, 2.0]).view(1, 1, 2, 2)
    assert to_uint8(x).ravel().tolist() == [0, 128, 255, 255]


def test_choose_dims_follows_s4():
    assert choose_dims(5000, (64, 192, 768, 2048))[0] == 2048
    assert choose_dims(500, (64, 192, 768, 2048))[0] == 768
    d, why = choose_dims(500, (2048,))
    assert d == 2048 and "only 2048" in why


def test_missing_weights_give_the_documented_error(tmp_path):
    with pytest.raises(WeightsNotFoundError) as err:
        load_extractor("auto", hub_dir=tmp_path, torchscript_dir=tmp_path, device="cpu")
    msg = str(err.value)
    assert "pt_inception-2015-12-05-6726825d.pth" in msg and "default_1.pt" in msg
    assert "https://github.com/mseitzer/pytorch-fid/releases" in msg and str(tmp_path) in msg
    with pytest.raises(WeightsNotFoundError, match="pass its path"):
        load_extractor("pytorch-fid", weights_path=tmp_path / "nope.pth", device="cpu")


def test_stats_cache_computes_once(tmp_path):
    cache, calls = StatsCache(tmp_path), []
    key = stats_key(fingerprint="f", split="val", resolution=64, extractor="x",
                    weights_sha256="abc", dims=64, n=3)

    def compute():
        calls.append(1)
        return {"mu": np.arange(3.0)}
    a, b = cache.get(key, compute), cache.get(key, compute)
    assert len(calls) == 1 and (cache.hits, cache.misses) == (1, 1)
    np.testing.assert_array_equal(a["mu"], b["mu"])
    assert key != stats_key(fingerprint="f", split="val", resolution=64, extractor="x",
                            weights_sha256="abc", dims=768, n=3)


def _slow_compute(cache_dir, key, log, barrier):
    """In another process: once all are ready, miss the cache; a compute is counted in `log`."""
    import time

    def compute():
        with open(log, "a") as f:
            f.write("computed\n")
        time.sleep(1.0)
        return {"mu": np.arange(3.0)}
    barrier.wait()
    mu = StatsCache(cache_dir).get(key, compute)["mu"]
    with open(log, "a") as f:
        f.write(f"got {mu.tolist()}\n")


def test_trials_started_together_compute_the_statistics_once(tmp_path):
    """Three processes miss the cache at the same moment: one computes, the others wait for
    its file."""
    import multiprocessing as mp

    key = stats_key(fingerprint="f", split="val", resolution=64, extractor="x",
                    weights_sha256="abc", dims=64, n=3)
    log, ctx = tmp_path / "calls.log", mp.get_context("spawn")
    barrier = ctx.Barrier(3)
    procs = [ctx.Process(target=_slow_compute, args=(str(tmp_path / "c"), key, str(log), barrier))
             for _ in range(3)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
    assert [p.exitcode for p in procs] == [0, 0, 0]
    text = log.read_text()
    assert text.count("got [0.0, 1.0, 2.0]") == 3 and text.count("computed") == 1, text


def test_intra_fid_pairs_each_class_with_its_own_real_images(covid3_dir, tmp_path):
    """Fakes that are real images of the *asked* class vs of the next class: the per-class
    Fréchet distance sees the label swap far more than the pooled FID does.  Features here
    are 8x8-pooled pixels, a stand-in to check the per-class pairing only (never a metric)."""
    import torch
    import torch.nn.functional as F

    from trainables.data import load_image_set
    from trainables.metrics import GanEvaluator

    class PooledPixels:
        name, weights_sha256, dims, has_logits = "pooled-pixels(test)", "none", 64, False

        def features(self, images, batch_size=50, with_logits=False):
            x = torch.from_numpy(np.array(images)).permute(0, 3, 1, 2).float()
            return F.adaptive_avg_pool2d(x, 8).flatten(1).double().numpy(), None

    kw = dict(resolution=32, channels=1, cache_dir=tmp_path / "c", duplicates="drop")
    val, train = (load_image_set(covid3_dir, s, **kw) for s in ("val", "train"))
    ev = GanEvaluator(val, metrics=("fid", "intra_fid"), n_fake=60, device="cpu",
                      hub_dir=tmp_path, torchscript_dir=tmp_path, cache_dir=tmp_path / "s")
    ev.extractor = PooledPixels()
    labels = ev.labels.numpy()
    rng = np.random.default_rng(0)

    def fakes(shift):
        return np.asarray(train.images)[[rng.choice(np.flatnonzero(train.labels == (c + shift) % 3))
                                         for c in labels]]

    same, swapped = ev._feature_metrics(fakes(0), labels), ev._feature_metrics(fakes(1), labels)
    # 60 fakes in the validation set's class shares (about 20 each)
    assert same["intra_fid_n_classes"] == 3
    assert same["intra_fid_min_n_fake"] == np.bincount(labels).min() >= 19
    assert same["intra_fid_min_n_real"] == min(np.bincount(val.labels))
    assert swapped["intra_fid"] > 2 * same["intra_fid"]
    assert swapped["intra_fid"] / same["intra_fid"] > 1.5 * swapped["fid"] / same["fid"]
