"""GAN training on the real 3-class chest X-rays (32 px, narrow nets, CPU)."""
from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
import torch
from PIL import Image

from trainables.context import standalone_context
from trainables.data import load_image_set, to_tensor
from trainables.gan import (GANConfig, build_models, build_optimizer, load_generator, sample,
                            train_gan)
from trainables.gan.loop import train_epoch

REPORT_KEYS = {"epoch", "g_loss", "d_loss", "d_real_acc", "d_fake_acc", "d_x", "d_g_z1", "d_g_z2",
               "lr_g", "lr_d", "d_steps", "g_steps", "images_per_s", "epoch_s", "diverged"}


@pytest.fixture(scope="module")
def covid3_32(covid3_dir, tmp_path_factory):
    """The real covid19-image-dataset train split (251 images) at 32x32x1."""
    return load_image_set(covid3_dir, "train", resolution=32, channels=1,
                          cache_dir=tmp_path_factory.mktemp("cache"), duplicates="keep")


@pytest.fixture(scope="module")
def covid3_small(covid3_32):
    """64 of those real images (all classes), for the tests that need several runs."""
    rows = np.sort(np.random.default_rng(0).permutation(len(covid3_32))[:64])
    return SimpleNamespace(images=np.asarray(covid3_32.images[rows]),
                           labels=covid3_32.labels[rows], classes=covid3_32.classes)


@pytest.mark.parametrize("family", ["acgan", "dcgan", "cgan"])
def test_each_family_trains_on_real_data_and_writes_its_artefacts(family, covid3_32, tmp_path):
    cfg = GANConfig(family=family, width=0.0625, epochs=2, batch_size=32, grid_per_class=4)
    ctx = standalone_context(tmp_path)
    G0, _ = build_models(cfg, 3)
    reports = train_gan(cfg, covid3_32, ctx)

    assert [r["epoch"] for r in reports] == [0.0, 1.0] and ctx.history == reports
    keys = REPORT_KEYS | ({"aux_class_acc"} if family == "acgan" else set())
    for r in reports:
        assert keys <= set(r) and all(np.isfinite(r[k]) for k in keys)
        assert r["d_steps"] == r["g_steps"] == 251 // 32  # drop_last, 1:1 ratio
        assert 0 <= r["d_real_acc"] <= 1 and r["diverged"] == 0.0
    assert reports[0]["g_loss"] != reports[1]["g_loss"]
    assert reports[0]["d_loss"] != reports[1]["d_loss"]

    last = tmp_path / "epoch_0001"
    grid = Image.open(last / "grid.png")
    # 4 per row, one row per class, 2-px padding, scaled x4 (32 px tiles shown at 128 px),
    # the class names left of the rows and the epoch above them
    tiles_w, tiles_h = 4 * (2 + 4 * 34), 4 * (2 + 3 * 34)
    assert grid.size[0] > tiles_w and grid.size[1] > tiles_h
    margin = np.asarray(grid.convert("L"))[-tiles_h:, :grid.size[0] - tiles_w]
    assert (margin < 128).any()  # text: the class names
    state = torch.load(last / "state.pt", weights_only=True)
    assert state["epoch"] == 1 and state["config"] == cfg.to_dict()
    assert state["classes"] == list(covid3_32.classes) and state["metrics"]["epoch"] == 1.0
    assert {"generator", "discriminator", "opt_g", "opt_d", "rng"} <= set(state)

    G, cfg2, classes = load_generator(last)
    assert cfg2 == cfg and classes == covid3_32.classes and not G.training
    # the trained weights moved away from the seed's initial ones
    moved = [not torch.equal(a, b) for a, b in zip(G0.state_dict().values(), G.state_dict().values())
             if a.is_floating_point()]
    assert all(moved)
    x = sample(G, torch.tensor([0, 1, 2]), cfg.latent_dim, seed=3)
    assert x.shape == (3, 1, 32, 32) and x.abs().max() <= 1
    assert torch.equal(x, sample(G, torch.tensor([0, 1, 2]), cfg.latent_dim, seed=3))


def test_resume_continues_exactly(covid3_small, tmp_path):
    # slow D (one D step every 3 batches, 2 batches an epoch: the schedule crosses epochs),
    # a StepLR, and an `evaluate` that draws from the global RNG: all must resume exactly.
    base = dict(family="acgan", width=0.0625, batch_size=32, g_steps_per_d=3,
                scheduler="step", step_size=1, gamma=0.5, eval_every=2)
    calls = []

    def evaluate(G, epoch):
        calls.append((epoch, G.training))
        return {"noise": float(torch.rand(()))}

    full = train_gan(GANConfig(epochs=2, **base), covid3_small,
                     standalone_context(tmp_path / "full"), evaluate)
    first = train_gan(GANConfig(epochs=1, **base), covid3_small,
                      standalone_context(tmp_path / "part"), evaluate)
    rest = train_gan(GANConfig(epochs=2, **base), covid3_small,
                     standalone_context(tmp_path / "part", resume_dir=tmp_path / "part" / "epoch_0000"),
                     evaluate)
    assert calls == [(1, False), (0, False), (1, False)]  # rank 0, eval mode, every 2nd and last
    assert [r["epoch"] for r in rest] == [1.0]
    assert first[0]["d_steps"] == 0 and rest[0]["d_steps"] == 1  # D stepped at global batch 2
    assert rest[0]["lr_g"] == full[1]["lr_g"] == 1e-4
    for k in ("g_loss", "d_loss", "aux_class_acc", "d_x"):
        assert rest[0][k] == full[1][k], k
    a = torch.load(tmp_path / "full" / "epoch_0001" / "state.pt", weights_only=True)
    b = torch.load(tmp_path / "part" / "epoch_0001" / "state.pt", weights_only=True)
    for net in ("generator", "discriminator"):
        for k, v in a[net].items():
            assert torch.equal(v, b[net][k]), f"{net}.{k}"


def _count_steps(opt):
    n = [0]
    opt.register_step_post_hook(lambda *args: n.__setitem__(0, n[0] + 1))
    return n


@pytest.mark.parametrize("ratio,expected", [
    ({"d_steps_per_g": 3}, [(6, 2), (6, 2)]),        # n D steps per G step
    ({"g_steps_per_d": 3}, [(2, 6), (2, 6)]),        # one D step every K G steps (S2)
    ({"g_steps_per_d": 4}, [(1, 6), (2, 6)]),        # the K-schedule runs on across epochs
])
def test_update_ratio_counts_actual_optimizer_steps(ratio, expected, covid3_32):
    cfg = GANConfig(family="cgan", width=0.0625, batch_size=16, **ratio)
    torch.manual_seed(0)
    G, D = build_models(cfg, 3)
    opt_g, opt_d = build_optimizer(cfg, G.parameters(), cfg.lr_g), build_optimizer(cfg, D.parameters(), cfg.lr_d)
    n_g, n_d = _count_steps(opt_g), _count_steps(opt_d)
    batches = [(to_tensor(np.asarray(covid3_32.images[i:i + 16])), torch.tensor(covid3_32.labels[i:i + 16]))
               for i in range(0, 96, 16)]  # 6 real batches
    it = 0
    for want_d, want_g in expected:
        before = n_d[0], n_g[0]
        m = train_epoch(G, D, opt_g, opt_d, batches, cfg, start_iteration=it)
        it += int(m["batches"])
        assert (n_d[0] - before[0], n_g[0] - before[1]) == (want_d, want_g)
        assert (m["d_steps"], m["g_steps"]) == (want_d, want_g)


def test_minority_dcgan_trains_only_the_smallest_class(covid3_small, tmp_path):
    counts = np.bincount(covid3_small.labels, minlength=3)
    cfg = GANConfig(family="dcgan", width=0.0625, epochs=1, batch_size=8, dcgan_classes="minority")
    reports = train_gan(cfg, covid3_small, standalone_context(tmp_path))
    minority = int(np.argmin(counts))
    assert reports[0]["d_steps"] == counts[minority] // 8
    G, _, classes = load_generator(tmp_path / "epoch_0000" / "generator.pt")
    assert G(torch.randn(2, 100), torch.tensor([minority] * 2)).shape == (2, 1, 32, 32)
    other = (minority + 1) % 3
    with pytest.raises(ValueError, match=f"no network for class {other}"):
        G(torch.randn(1, 100), torch.tensor([other]))


def test_bad_inputs_get_clear_errors(covid3_small, tmp_path):
    with pytest.raises(ValueError, match="resolution"):
        train_gan(GANConfig(resolution=64), covid3_small, standalone_context(tmp_path))
    with pytest.raises(ValueError, match="batch_size"):
        train_gan(GANConfig(batch_size=128), covid3_small, standalone_context(tmp_path))
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_generator(tmp_path / "nope.pt")
    torch.save({"weights": torch.zeros(1)}, tmp_path / "other.pt")
    with pytest.raises(ValueError, match="not a GAN checkpoint"):
        load_generator(tmp_path / "other.pt")


def test_label_smoothing_and_label_flipping_change_the_losses(covid3_32):
    from trainables.gan.loop import d_step, g_step

    real = to_tensor(np.asarray(covid3_32.images[:16]))
    labels = torch.tensor(covid3_32.labels[:16])

    def losses(**kw):
        cfg = GANConfig(family="acgan", width=0.0625, **kw)
        torch.manual_seed(0)
        G, D = build_models(cfg, 3)
        opt_g, opt_d = build_optimizer(cfg, G.parameters(), 1e-4), build_optimizer(cfg, D.parameters(), 1e-4)
        torch.manual_seed(1)
        return float(d_step(G, D, opt_d, real, labels, cfg)["d_loss"]), \
            float(g_step(G, D, opt_g, labels, cfg)["g_loss"])

    d0, g0 = losses()
    d_smooth, _ = losses(label_smoothing=0.2)
    _, g_minimax = losses(flip_labels_g=False)
    assert d_smooth != d0 and np.isfinite(d_smooth)
    # without flipping G minimises log(1 - D(G(z))) = -BCE(fake, 0): the source part is negative
    assert g_minimax < g0


def test_steps_per_epoch_caps_batches_and_resume_stays_exact(covid3_small, tmp_path):
    """S0 trained a fixed 460 steps per epoch; the cap must keep the slow-D schedule and
    resume exact (the global batch counter advances by the capped count)."""
    cfg = GANConfig(family="cgan", width=0.0625, epochs=2, batch_size=8, steps_per_epoch=3,
                    g_steps_per_d=2, grid_per_class=2)
    full = train_gan(cfg, covid3_small, standalone_context(tmp_path / "a"))
    assert [r["g_steps"] for r in full] == [3.0, 3.0]
    assert [r["d_steps"] for r in full] == [1.0, 2.0]  # global batches 1 | 3, 5 (K=2)
    first = train_gan(cfg.replace(epochs=1), covid3_small, standalone_context(tmp_path / "b"))
    resumed = train_gan(cfg, covid3_small, standalone_context(
        tmp_path / "c", resume_dir=tmp_path / "b" / "epoch_0000"))
    assert first[0]["g_loss"] == full[0]["g_loss"] and resumed[-1]["g_loss"] == full[1]["g_loss"]


def test_resume_with_a_new_learning_rate_applies_it(covid3_small, tmp_path):
    """PBT restarts a trial from another trial's checkpoint with mutated rates: the restored
    optimizer state must not silently bring the old learning rate back."""
    cfg = GANConfig(family="acgan", width=0.0625, epochs=1, batch_size=16, grid_per_class=2,
                    lr_g=2e-4, lr_d=2e-4)
    train_gan(cfg, covid3_small, standalone_context(tmp_path / "a"))
    resumed = train_gan(cfg.replace(epochs=2, lr_g=1e-3), covid3_small, standalone_context(
        tmp_path / "b", resume_dir=tmp_path / "a" / "epoch_0000"))
    assert resumed[-1]["lr_g"] == pytest.approx(1e-3) and resumed[-1]["lr_d"] == pytest.approx(2e-4)


def test_acgan_class_check_compares_d_head_with_a_reference_classifier(covid3_dir, covid3_32,
                                                                       tmp_path):
    """AC-GAN's own class head on the fakes vs a classifier trained on real images: the
    evaluator gets D's head from the training loop, and both numbers reach the report."""
    from trainables.metrics import GanEvaluator

    val = load_image_set(covid3_dir, "val", resolution=32, channels=1,
                         cache_dir=tmp_path / "cache", duplicates="keep")
    ev = GanEvaluator(val, metrics=("visual",), n_fake=30, cas_epochs=2, device="cpu",
                      real_train=covid3_32, latent_dim=GANConfig().latent_dim)
    cfg = GANConfig(family="acgan", width=0.0625, epochs=1, batch_size=32, steps_per_epoch=2)
    (r,) = train_gan(cfg, covid3_32, standalone_context(tmp_path), evaluate=ev)
    assert {"aux_class_acc", "aux_fake_class_acc", "ref_class_acc", "class_confusion"} <= set(r)
    assert 0 <= r["aux_fake_class_acc"] <= 1 and 0 <= r["ref_class_acc"] <= 1
    assert r["class_confusion"] == pytest.approx(r["aux_fake_class_acc"] - r["ref_class_acc"])
    # where the evaluation's seconds went (issue 22: which part to make cheaper on a device)
    parts = {k: v for k, v in r.items() if k.startswith("time_eval_") and k != "time_eval_s"}
    assert set(parts) == {"time_eval_generate_s", "time_eval_visual_s"}
    assert all(v > 0 for v in parts.values()) and sum(parts.values()) <= r["eval_seconds"]
    # families without a class head get the reference check only
    (r,) = train_gan(GANConfig(family="cgan", width=0.0625, epochs=1, batch_size=32,
                               steps_per_epoch=2), covid3_32, standalone_context(tmp_path / "c"),
                     evaluate=ev)
    assert "ref_class_acc" in r and "class_confusion" not in r


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (run it where the "
                    "device machine is lent: bf16 autocast and channels_last are CUDA-only)")
@pytest.mark.parametrize("family", ["acgan", "dcgan", "cgan"])
def test_mixed_precision_and_channels_last_on_gpu(family, covid3_32, tmp_path):
    cfg = GANConfig(family=family, width=0.25, epochs=2, batch_size=32, amp=True,
                    channels_last=True)
    reports = train_gan(cfg, covid3_32, standalone_context(tmp_path, device="cuda"))
    for r in reports:
        assert np.isfinite(r["g_loss"]) and np.isfinite(r["d_loss"]) and r["diverged"] == 0.0
    assert reports[0]["g_loss"] != reports[1]["g_loss"]
    G, _, _ = load_generator(tmp_path / "epoch_0001")
    x = sample(G, torch.tensor([0, 1, 2]), cfg.latent_dim, seed=0)
    assert torch.isfinite(x).all() and x.abs().max() <= 1


def test_an_image_budget_stops_the_trial_and_sets_the_evaluation_schedule(covid3_32, tmp_path):
    """Issue 22 item 2: `max_images` ends a trial whatever its epochs (a search then costs the
    same on any data set size), `images_seen` is reported every epoch, and
    `eval_every_images` evaluates each time the images seen cross a multiple of it."""
    cfg = GANConfig(family="acgan", width=0.0625, epochs=50, batch_size=32, max_images=500,
                    eval_every_images=300, state_every=50)
    evaluated = []

    def evaluate(G, epoch):
        evaluated.append(epoch)
        return {"fid": 1.0}

    reports = train_gan(cfg, covid3_32, standalone_context(tmp_path), evaluate)
    per_epoch = (251 // 32) * 32  # drop_last: 7 batches of 32
    assert [r["images_seen"] for r in reports] == [per_epoch, 2 * per_epoch, 3 * per_epoch]
    assert evaluated == [1, 2]  # 448 crosses 300, 672 crosses 600 and is the last
    assert (tmp_path / "epoch_0002" / "state.pt").is_file()  # the last epoch's full state

