"""Metrics, bootstrap CIs, imbalance strategies, synthetic-image conversion, Grad-CAM."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from sklearn.metrics import precision_recall_fscore_support

from trainables.classifier.gradcam import gradcam, save_gradcam_png
from trainables.classifier.metrics import (
    accuracy,
    bootstrap_ci,
    classification_metrics,
    confusion,
    mcnemar,
    per_class,
    save_confusion_png,
)
from trainables.classifier.stats import mcnemar_per_seed, seed_interval
from trainables.classifier.strategies import (
    balanced_weights,
    build_train_set,
    synth_from_generator,
    to_uint8_nhwc,
)


def test_per_class_metrics_on_an_analytic_confusion_matrix():
    cm = np.array([[8, 2], [1, 9]])  # rows true, columns predicted
    pc = per_class(cm)
    np.testing.assert_allclose(pc["precision"], [8 / 9, 9 / 11])
    np.testing.assert_allclose(pc["recall"], [8 / 10, 9 / 10])
    np.testing.assert_allclose(pc["specificity"], [9 / 10, 8 / 10])
    np.testing.assert_allclose(pc["f1"], [2 * 8 / (2 * 8 + 2 + 1), 2 * 9 / (2 * 9 + 1 + 2)])


def test_classification_metrics_agree_with_sklearn():
    rng = np.random.default_rng(0)
    y, p = rng.integers(0, 3, 200), rng.integers(0, 3, 200)
    m = classification_metrics(y, p, ("a", "b", "c"))
    pr, rc, f1, _ = precision_recall_fscore_support(y, p, labels=[0, 1, 2], zero_division=0)
    assert m["accuracy"] == pytest.approx(np.mean(y == p))
    assert [m[f"recall/{c}"] for c in "abc"] == pytest.approx(rc)
    assert [m[f"precision/{c}"] for c in "abc"] == pytest.approx(pr)
    assert m["macro_f1"] == pytest.approx(f1.mean())
    assert confusion(y, p, 3).sum() == 200


def test_bootstrap_ci_is_degenerate_for_perfect_predictions_and_brackets_the_point():
    y = np.repeat([0, 1, 2], 30)
    assert bootstrap_ci(y, y, accuracy, n_boot=200) == (1.0, 1.0, 1.0)
    rng = np.random.default_rng(1)
    preds = np.where(rng.random((3, 90)) < 0.7, y, (y + 1) % 3)  # 3 "seeds"
    point, lo, hi = bootstrap_ci(y, preds, accuracy, n_boot=500, seed=0)
    assert point == pytest.approx(np.mean(preds == y))
    assert lo < point < hi and hi - lo < 0.3
    assert bootstrap_ci(y, preds, accuracy, n_boot=500, seed=0) == (point, lo, hi)


def test_mcnemar_tests_one_pair_and_refuses_to_pool_seeds():
    y = np.zeros(30, dtype=int)
    a, b = y.copy(), np.where(np.arange(30) < 10, 1, 0)  # a alone is right on 10 images
    assert mcnemar(y, a, b) == (10, 0, pytest.approx(2 * 0.5 ** 10))
    assert mcnemar(y, a[None], b[None])[:2] == (10, 0) and mcnemar(y, a, a) == (0, 0, 1.0)
    with pytest.raises(ValueError, match="mcnemar_per_seed"):
        mcnemar(y, np.stack([a, a]), np.stack([b, b]))
    assert mcnemar_per_seed(y, np.stack([a, a]), np.stack([b, a])).a_only.tolist() == [10, 0]


def test_seed_interval_is_reexported_and_stays_in_the_unit_interval():
    y = np.repeat([0, 1], 20)
    preds = np.stack([np.where(np.arange(40) < k, 1 - y, y) for k in (0, 1, 2)])  # 1.0, .975, .95
    iv = seed_interval(y, preds, accuracy, n_boot=200)
    assert iv.point == pytest.approx(0.975) and 0 <= iv.low < iv.point < iv.high <= 1


def _toy(counts=(12, 6, 3), res=8):
    labels = np.repeat(np.arange(len(counts)), counts)
    images = np.random.default_rng(0).integers(0, 255, (len(labels), res, res, 1), dtype=np.uint8)
    return images, labels


def _stand_in_synth(c, n, seed):
    """A stand-in generator for strategy unit tests: constant images of value 200 + class."""
    return np.full((n, 8, 8, 1), 200 + c, dtype=np.uint8)


@pytest.mark.parametrize("strategy,counts,augment,n_syn", [
    ("none", [12, 6, 3], False, 0),
    ("class_weights", [12, 6, 3], False, 0),
    ("undersample", [3, 3, 3], False, 0),
    ("oversample", [12, 12, 12], False, 0),
    ("positional", [12, 12, 12], True, 0),
    ("gan", [12, 12, 12], False, 15),
    ("gan_positional", [12, 12, 12], True, 15),
    ("gan_balanced", [12, 12, 12], False, 27),
])
def test_strategies_balance_the_classes(strategy, counts, augment, n_syn):
    images, labels = _toy()
    ts = build_train_set(images, labels, 3, strategy, synth=_stand_in_synth, seed=0)
    rows = ts.epoch_rows(torch.Generator().manual_seed(0))
    assert np.bincount(ts.labels[rows], minlength=3).tolist() == counts == [len(ts) // 3] * 3 \
        or strategy in ("none", "class_weights")
    assert ts.augment is augment and int(ts.synthetic.sum()) == n_syn
    assert ts.images[rows].shape == (sum(counts), 8, 8, 1)
    if n_syn:  # synthetic rows carry their class's stand-in value
        assert (ts.images[ts.synthetic][:, 0, 0, 0] == 200 + ts.labels[ts.synthetic]).all()
    if strategy == "class_weights":
        np.testing.assert_allclose(ts.class_weights, 21 / (3 * np.array([12, 6, 3])))
        np.testing.assert_allclose(balanced_weights(labels, 3), ts.class_weights)


def test_gan_ratio_and_errors():
    images, labels = _toy()
    ts = build_train_set(images, labels, 3, "gan", synth=_stand_in_synth, gan_ratio=0.5)
    assert np.bincount(ts.labels).tolist() == [12, 6, 6]
    with pytest.raises(ValueError, match="needs a GAN generator"):
        build_train_set(images, labels, 3, "gan")
    with pytest.raises(ValueError, match="expected uint8"):
        build_train_set(images, labels, 3, "gan",
                        synth=lambda c, n, s: np.zeros((n, 4, 4, 1), np.uint8))


def test_generator_output_to_uint8_and_seeded_synth():
    x = torch.tensor([-1.0, 0.0, 1.0]).view(1, 1, 1, 3).expand(2, 3, 3, 3)
    u = to_uint8_nhwc(x, resolution=3, channels=1)
    assert u.shape == (2, 3, 3, 1) and u[0, 0, :, 0].tolist() == [0, 128, 255]

    class G(torch.nn.Module):
        def forward(self, z, y):
            return torch.tanh(z[:, :1, None, None] + y[:, None, None, None].float()).expand(-1, 1, 16, 16)

    synth = synth_from_generator(G(), 4, resolution=8, channels=3)
    a, b = synth(1, 5, 7), synth(1, 5, 7)
    assert a.shape == (5, 8, 8, 3) and a.dtype == np.uint8 and np.array_equal(a, b)
    assert not np.array_equal(a, synth(1, 5, 8))


def test_gradcam_highlights_the_evidence(tmp_path):
    # logit_1 = sum over the last conv's output, which copies the input: the CAM is the
    # input itself, so it peaks at the bright square and is ~0 elsewhere.
    conv = torch.nn.Conv2d(1, 1, 1, bias=False)
    conv.weight.data.fill_(1.0)
    model = torch.nn.Sequential(conv, torch.nn.Flatten(), torch.nn.Linear(64, 2, bias=False))
    model[2].weight.data = torch.stack([torch.zeros(64), torch.ones(64)])
    x = torch.zeros(1, 1, 8, 8)
    x[0, 0, 2:4, 5:7] = 1.0
    cam = gradcam(model, x, target=torch.tensor([1]))
    assert cam.shape == (1, 8, 8)
    assert cam[0, 2:4, 5:7].min() == pytest.approx(1.0) and cam[0, 6:, :2].max() == 0
    assert save_gradcam_png(x, cam, ["c"], tmp_path / "g.png").stat().st_size > 0
    assert save_confusion_png(np.eye(2, dtype=int), ["a", "b"], tmp_path / "c.png").stat().st_size > 0
