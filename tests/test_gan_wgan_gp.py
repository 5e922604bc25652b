"""WGAN-GP, the family added through the registry alone: critic, gradient penalty against
hand-computed values, the n_critic schedule, config, guard, DDP and a real-data run."""
from __future__ import annotations

import math
from types import SimpleNamespace

import numpy as np
import pytest
import torch
import torch.distributed as dist

from ddp_harness import run_two_gloo_workers
from trainables.context import standalone_context
from trainables.data import load_image_set
from trainables.gan import (GANConfig, build_models, build_optimizer, load_generator, preset,
                            train_gan)
from trainables.gan.families import FAMILIES
from trainables.gan.guard import DivergenceGuard
from trainables.gan.losses import WassersteinGPLoss, gradient_penalty
from trainables.gan.loop import d_step, g_step, train_epoch
from trainables.gan.presets import PRESETS

WGAN = FAMILIES["wgan_gp"]


def _setup(**kw):
    cfg = GANConfig(family="wgan_gp", width=0.0625, **{**WGAN.defaults, **kw})
    torch.manual_seed(0)
    G, D = build_models(cfg, 3)
    return cfg, G, D, build_optimizer(cfg, G.parameters(), cfg.lr_g), \
        build_optimizer(cfg, D.parameters(), cfg.lr_d)


def _batch(n=8, seed=1):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(n, 1, 32, 32, generator=g) * 2 - 1, torch.arange(n) % 3


def _flat(*nets):
    return torch.cat([p.detach().flatten().clone() for n in nets for p in n.parameters()])


@pytest.mark.parametrize("variant", ["layernorm", "plain"])
def test_critic_has_no_batchnorm_no_sigmoid_and_uses_the_label(variant):
    cfg, G, D, _, _ = _setup(variant=variant)
    x, labels = _batch()
    fake = G(torch.randn(8, cfg.latent_dim), labels)
    assert fake.shape == (8, 1, 32, 32) and fake.abs().max() <= 1
    score, cls = D(x, labels)
    assert score.shape == (8,) and cls is None
    assert not any(isinstance(m, torch.nn.modules.batchnorm._BatchNorm) for m in D.modules())
    has_ln = any(isinstance(m, torch.nn.GroupNorm) for m in D.modules())
    assert has_ln == (variant == "layernorm")
    with torch.no_grad():  # an unbounded score: nothing squashes it into (0, 1)
        D.score.bias.fill_(5.0)
        assert D(x, labels)[0].min() > 1
        D.score.bias.fill_(-5.0)
        assert D(x, labels)[0].max() < 0
    other, _ = D(x, (labels + 1) % 3)
    assert not torch.allclose(other, D(x, labels)[0])  # conditional (projection)


def test_gradient_penalty_matches_hand_computed_values():
    # Linear critic w . x: the gradient is w everywhere, so GP = (|w| - 1)^2 = (5 - 1)^2.
    w = torch.tensor([3.0, 4.0], requires_grad=True)
    real, fake = torch.randn(3, 1, 1, 2), torch.randn(3, 1, 1, 2)
    gp = gradient_penalty(lambda x: x.flatten(1) @ w, real, fake)
    assert gp.item() == pytest.approx(16.0)
    gp.backward()  # the penalty trains the critic: d/dw (|w| - 1)^2 = 2 (|w| - 1) w / |w|
    assert torch.allclose(w.grad, torch.tensor([4.8, 6.4]))
    # Quadratic critic |x|^2 / 2: the gradient is the interpolate itself.
    real = torch.tensor([[3.0, 4.0], [4.0, 0.0]]).view(2, 1, 1, 2)
    fake = torch.tensor([[0.0, 0.0], [0.0, 2.0]]).view(2, 1, 1, 2)
    eps = torch.tensor([0.5, 0.25])  # x_hat = eps real + (1 - eps) fake = (1.5, 2), (1, 1.5)
    gp = gradient_penalty(lambda x: 0.5 * (x ** 2).flatten(1).sum(1), real, fake, eps)
    expected = ((2.5 - 1) ** 2 + (math.sqrt(1 + 1.5 ** 2) - 1) ** 2) / 2
    assert gp.item() == pytest.approx(expected)
    assert WassersteinGPLoss().d_penalty(lambda x: x.flatten(1) @ w.detach(), real, fake).item() \
        == pytest.approx(10 * 16.0)


def test_training_steps_are_finite_and_move_both_nets():
    cfg, G, D, opt_g, opt_d = _setup()
    g0, d0 = _flat(G), _flat(D)
    x, labels = _batch()
    m = train_epoch(G, D, opt_g, opt_d, [(x, labels)] * 10, cfg)
    keys = ("d_loss", "g_loss", "d_x", "d_g_z1", "d_g_z2", "d_real_acc", "d_fake_acc",
            "wasserstein_estimate", "gradient_penalty")
    assert all(math.isfinite(m[k]) for k in keys) and "aux_class_acc" not in m
    assert m["gradient_penalty"] > 0
    assert m["wasserstein_estimate"] == pytest.approx(m["d_x"] - m["d_g_z1"], abs=1e-5)
    assert m["g_loss"] == pytest.approx(-m["d_g_z2"])
    assert not torch.equal(_flat(D), d0) and not torch.equal(_flat(G), g0)


def test_five_critic_steps_per_generator_step():
    cfg, G, D, opt_g, opt_d = _setup()
    assert cfg.d_steps_per_g == 5
    order = []
    for opt, tag in ((opt_d, "D"), (opt_g, "G")):
        opt.step = (lambda f, t: (lambda *a, **k: (order.append(t), f(*a, **k))[1]))(opt.step, tag)
    m = train_epoch(G, D, opt_g, opt_d, [_batch(seed=s) for s in range(10)], cfg)
    assert "".join(order) == "DDDDDGDDDDDG"
    assert (m["d_steps"], m["g_steps"]) == (10.0, 2.0)


def test_label_smoothing_and_flipping_do_not_apply():
    def losses(**kw):
        cfg, G, D, opt_g, opt_d = _setup(**kw)
        x, labels = _batch()
        torch.manual_seed(2)
        return float(d_step(G, D, opt_d, x, labels, cfg)["d_loss"]), \
            float(g_step(G, D, opt_g, labels, cfg)["g_loss"])

    assert losses() == losses(label_smoothing=0.2, flip_labels_g=False)


def test_config_builds_round_trips_and_rejects_what_does_not_apply():
    cfg = GANConfig(family="wgan_gp")
    assert cfg.variant == "layernorm" and GANConfig.from_dict(cfg.to_dict()) == cfg
    assert cfg.replace(variant="plain").variant == "plain"
    for bad, field in (({"d_updates": "separate"}, "d_updates"), ({"variant": "s2"}, "variant"),
                       ({"dcgan_classes": (0,)}, "dcgan_classes")):
        with pytest.raises(ValueError, match=field):
            GANConfig(family="wgan_gp", **bad)


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_family_defaults_on_top_of_every_preset_are_valid(name):
    cfg = GANConfig.from_dict({**preset(name, family="wgan_gp"), **WGAN.defaults})
    got = (cfg.lr_g, cfg.lr_d, cfg.beta1, cfg.beta2, cfg.d_steps_per_g, cfg.g_steps_per_d)
    assert got == (1e-4, 1e-4, 0.0, 0.9, 5, 1)
    assert all(f.defaults == {} for k, f in FAMILIES.items() if k != "wgan_gp")


def test_guard_keeps_nonfinite_and_collapse_checks_but_not_d_wins():
    def run(family):
        guard = DivergenceGuard.for_config(GANConfig(family=family, guard_patience=2,
                                                     guard_warmup=0, guard_collapse_std=0.0))
        varied = torch.rand(4, 1, 8, 8)
        labels = torch.tensor([0, 0, 1, 1])
        reasons = [guard.update({"epoch": e, "d_loss": -5.0 - e, "g_loss": float(e),
                                 "d_steps": 1, "g_steps": 1}, varied, labels) for e in range(3)]
        return guard, reasons

    _, bce = run("dcgan")
    assert bce[1] and "discriminator won" in bce[1]  # a negative D loss is "below the floor"
    guard, critic = run("wgan_gp")
    assert critic == [None, None, None]  # a critic's loss is unbounded below: no floor
    assert "non-finite" in guard.update({"d_loss": math.nan, "g_loss": 0.0}, None, None)
    guard.collapse_std = 1e-3
    flat = torch.zeros(4, 1, 8, 8)
    assert "collapsed" in guard.update({"epoch": 3, "d_loss": -1.0, "g_loss": 0.0}, flat,
                                       torch.tensor([0, 0, 1, 1]))


def _ddp_worker(rank: int, world: int, port: int, queue) -> None:
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank,
                            world_size=world)
    try:
        cfg, G, D, opt_g, opt_d = _setup()
        Gw = torch.nn.parallel.DistributedDataParallel(G, find_unused_parameters=True)
        Dw = torch.nn.parallel.DistributedDataParallel(D, find_unused_parameters=True)
        torch.manual_seed(100 + rank)  # every rank its own data, noise and interpolates
        real, labels = torch.rand(8, 1, 32, 32) * 2 - 1, torch.randint(0, 3, (8,))
        for _ in range(2):
            d_step(Gw, Dw, opt_d, real, labels, cfg)
            g_step(Gw, Dw, opt_g, labels, cfg)
        queue.put((rank, _flat(G, D).numpy()))
    finally:
        dist.destroy_process_group()


def test_ddp_keeps_critic_and_generator_in_sync_with_the_penalty():
    """The penalty's double backward runs inside D's one backward: DDP must still average
    every gradient (ranks differ in data, so unsynchronised nets would drift apart)."""
    got = run_two_gloo_workers(_ddp_worker)
    _, G0, D0, _, _ = _setup()
    assert np.array_equal(got[0], got[1])
    assert not np.allclose(got[0], _flat(G0, D0).numpy())


def test_train_gan_runs_wgan_gp_on_real_data(covid3_dir, tmp_path):
    full = load_image_set(covid3_dir, "train", resolution=32, channels=1,
                          cache_dir=tmp_path / "cache", duplicates="keep")
    rows = np.sort(np.random.default_rng(0).permutation(len(full))[:64])
    data = SimpleNamespace(images=np.asarray(full.images[rows]), labels=full.labels[rows],
                           classes=full.classes)
    cfg = GANConfig(family="wgan_gp", width=0.0625, epochs=2, batch_size=8, grid_per_class=2,
                    **WGAN.defaults)
    reports = train_gan(cfg, data, standalone_context(tmp_path / "run"))
    assert [r["g_steps"] for r in reports] == [1.0, 2.0]  # global batches 4 | 9, 14 (n=5)
    for r in reports:
        assert r["diverged"] == 0.0 and math.isfinite(r["wasserstein_estimate"])
    G, cfg2, _ = load_generator(tmp_path / "run" / "epoch_0001")
    assert cfg2 == cfg and G(torch.randn(2, 100), torch.tensor([0, 2])).shape == (2, 1, 32, 32)


def test_the_search_takes_wgan_gp_with_its_defaults_on_a_seed_preset(tmp_path):
    """A family registered in FAMILIES is an experiment of the search: any seed preset's
    budget, the family's own optimiser settings on top, validated before anything starts."""
    from orchestrator.cli import search
    from orchestrator.run.settings import trial_settings

    cfg = search.config_from_args(["wgan_gp", "--smoke", "--name", "w"])
    assert cfg.preset == "s0"
    base = trial_settings(cfg, str(tmp_path)).base
    assert base["family"] == "wgan_gp" and base["d_steps_per_g"] == 5
    assert (base["beta1"], base["beta2"], base["lr_g"]) == (0.0, 0.9, 1e-4)
    assert "variant" not in base  # the AC-GAN preset's architecture is not carried over
