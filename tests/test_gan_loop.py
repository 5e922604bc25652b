"""The GAN update step: D sees real and fake in separate passes, DDP stays one synchronised
backward, the latent distribution is honoured, per-class DCGAN batches, DiffAugment."""
from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.distributed as dist

from ddp_harness import run_two_gloo_workers
from trainables.gan import GANConfig, build_models, build_optimizer
from trainables.gan.diffaugment import diff_augment, parse_policy
from trainables.gan.loop import d_step, g_step
from trainables.gan.train import PerClassBatchSampler


class Spy(torch.nn.Module):
    """Records the batches a network is called with."""

    def __init__(self, net):
        super().__init__()
        self.net, self.calls = net, []

    def forward(self, x, labels):
        self.calls.append(x.detach().clone())
        return self.net(x, labels)


def _setup(**kw):
    cfg = GANConfig(family="acgan", width=0.0625, **kw)
    torch.manual_seed(0)
    G, D = build_models(cfg, 2)
    return cfg, G, D, build_optimizer(cfg, G.parameters(), 1e-3), build_optimizer(cfg, D.parameters(), 1e-3)


def test_d_step_sends_real_and_fake_through_d_separately():
    """One concatenated batch made D's BatchNorm normalise a real+fake mixture in D's step
    and fakes alone in G's step (issue 11): two different discriminators."""
    cfg, G, D, opt_g, opt_d = _setup()
    spy = Spy(D)
    real = torch.rand(8, 1, 32, 32) * 2 - 1
    labels = torch.tensor([0, 1] * 4)
    d_step(G, spy, opt_d, real, labels, cfg)
    assert [c.shape[0] for c in spy.calls] == [8, 8]
    assert torch.equal(spy.calls[0], real)  # the real batch alone ...
    assert not torch.equal(spy.calls[1], real)  # ... then the fakes alone
    spy.calls.clear()
    g_step(G, spy, opt_g, labels, cfg)
    assert [c.shape[0] for c in spy.calls] == [8]


def test_s4_separate_updates_step_d_twice_and_g_on_its_own_batch():
    cfg, G, D, opt_g, opt_d = _setup(d_updates="separate", g_batch_size=12)
    steps = []
    opt_d.step = (lambda f: (lambda *a, **k: (steps.append(1), f(*a, **k))[1]))(opt_d.step)
    spy = Spy(D)
    real, labels = torch.rand(6, 1, 32, 32) * 2 - 1, torch.tensor([0, 1] * 3)
    out = d_step(G, spy, opt_d, real, labels, cfg)
    assert len(steps) == 2 and torch.isfinite(out["d_loss"])
    spy.calls.clear()
    g_step(G, spy, opt_g, labels, cfg)
    assert spy.calls[0].shape[0] == 12


def test_uniform_latent_is_what_g_gets_everywhere():
    cfg, G, D, opt_g, opt_d = _setup(latent_dist="uniform")
    seen = []
    G.register_forward_pre_hook(lambda m, args: seen.append(args[0].detach().clone()))
    labels = torch.tensor([0, 1] * 4)
    d_step(G, D, opt_d, torch.rand(8, 1, 32, 32) * 2 - 1, labels, cfg)
    g_step(G, D, opt_g, labels, cfg)
    from trainables.gan.sampling import sample
    from trainables.metrics.evaluator import fixed_inputs
    from trainables.classifier.strategies import synth_from_generator
    sample(G, labels, cfg.latent_dim, seed=0, dist=cfg.latent_dist)
    synth_from_generator(G, cfg.latent_dim, resolution=32, channels=1,
                         latent_dist=cfg.latent_dist)(0, 4, seed=1)
    z, _ = fixed_inputs(64, cfg.latent_dim, np.array([0, 1]), seed=0, dist="uniform")
    for z_seen in seen + [z]:
        assert z_seen.min() >= -1 and z_seen.max() <= 1 and z_seen.min() < -0.9
    assert len(seen) == 4
    with pytest.raises(ValueError, match="latent_dist"):
        GANConfig(latent_dist="gauss")


def _ddp_worker(rank: int, world: int, port: int, queue) -> None:
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank,
                            world_size=world)
    try:
        cfg, G, D, opt_g, opt_d = _setup()
        Gw = torch.nn.parallel.DistributedDataParallel(G, find_unused_parameters=True)
        Dw = torch.nn.parallel.DistributedDataParallel(D, find_unused_parameters=True)
        torch.manual_seed(100 + rank)  # every rank its own data and noise
        real, labels = torch.rand(8, 1, 32, 32) * 2 - 1, torch.randint(0, 2, (8,))
        for _ in range(2):
            d_step(Gw, Dw, opt_d, real, labels, cfg)
            g_step(Gw, Dw, opt_g, labels, cfg)
        flat = torch.cat([p.detach().flatten() for p in list(G.parameters()) + list(D.parameters())])
        queue.put((rank, flat.numpy()))
    finally:
        dist.destroy_process_group()


def test_ddp_with_two_gloo_workers_keeps_the_nets_in_sync():
    """Two forward passes of D, one backward: DDP must still synchronise every gradient."""
    got = run_two_gloo_workers(_ddp_worker)
    _, G0, D0, _, _ = _setup()
    start = torch.cat([p.detach().flatten() for p in list(G0.parameters()) + list(D0.parameters())])
    assert np.array_equal(got[0], got[1])  # synchronised
    assert not np.allclose(got[0], start.numpy())  # and trained


def test_per_class_batches_hold_one_class_and_cover_each_class():
    labels = np.array([0] * 70 + [1] * 40 + [2] * 9)
    sampler = PerClassBatchSampler(labels, (0, 1, 2), batch_size=16, seed=3)
    batches = list(sampler)
    assert len(batches) == len(sampler) == 70 // 16 + 40 // 16 + 1
    for b in batches:
        assert len(set(labels[b])) == 1
    per_class = {c: sum(1 for b in batches if labels[b[0]] == c) for c in (0, 1, 2)}
    assert per_class == {0: 4, 1: 2, 2: 1}  # class 2 (9 images) is one batch of 9
    assert labels[batches[0][0]] == 0 and labels[batches[1][0]] == 1  # classes take turns
    sampler.set_epoch(1)
    assert list(sampler) != batches  # reshuffled per epoch ...
    sampler.set_epoch(0)
    assert list(sampler) == batches  # ... and reproducible
    ranks = [list(PerClassBatchSampler(labels, (0, 1), 8, r, 2, seed=3)) for r in (0, 1)]
    assert [labels[b[0]] for b in ranks[0]] == [labels[b[0]] for b in ranks[1]]  # same class per step
    assert not set(sum(ranks[0], [])) & set(sum(ranks[1], []))  # disjoint images
    with pytest.raises(ValueError, match="fewer than 2"):
        PerClassBatchSampler(np.array([0] * 10 + [1]), (0, 1), 4)


def test_diffaugment_is_differentiable_keeps_shape_and_never_flips():
    x = torch.linspace(-1, 1, 32).repeat(4, 1, 32, 1).requires_grad_(True)  # left dark, right bright
    torch.manual_seed(0)
    y = diff_augment(x, "color,translation,cutout")
    assert y.shape == x.shape
    y.sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0
    assert torch.equal(diff_augment(x, ""), x)
    torch.manual_seed(0)
    shifted = diff_augment(x.detach(), "translation")
    # translation moves by at most 1/8 of the side and never mirrors: left stays darker
    assert (shifted[..., :8].mean() < shifted[..., -8:].mean())
    cut = diff_augment(torch.ones(8, 1, 16, 16), "cutout")
    assert ((cut == 0).float().mean(dim=(1, 2, 3)) > 0).all()
    assert parse_policy("none") == () and parse_policy("color, cutout") == ("color", "cutout")
    with pytest.raises(ValueError, match="flip"):
        parse_policy("flip")


def test_s0_and_s1_presets_carry_their_seed_details():
    from trainables.gan import preset

    s0, s1 = GANConfig.from_dict(preset("s0")), GANConfig.from_dict(preset("s1"))
    assert s0.steps_per_epoch == 460 and s0.real_shear > 0 and s0.real_zoom > 0
    assert s1.latent_dist == "uniform" and s1.batch_size == 32
    from trainables.gan.train import real_augment

    aug = real_augment(s0)
    x = torch.rand(4, 1, 32, 32) * 2 - 1
    assert aug(x).shape == x.shape and not torch.equal(aug(x), x)
    assert real_augment(s1) is None


def test_one_class_generator_is_compared_with_its_own_class_and_gets_no_cas(covid3_dir, tmp_path):
    """S4 trains the minority class only: FID's reference is that class's real images, and
    CAS / the class check (which need two classes) are skipped with the reason."""
    from trainables.data import load_image_set
    from trainables.metrics.evaluator import GanEvaluator

    kw = dict(resolution=32, channels=1, cache_dir=tmp_path / "cache", duplicates="keep")
    val, train = load_image_set(covid3_dir, "val", **kw), load_image_set(covid3_dir, "train", **kw)
    ev = GanEvaluator(val, metrics=("cas", "visual"), classes=(1,), real_train=train, device="cpu")
    assert set(np.asarray(ev.real.labels)) == {1} and len(ev.real) == int((val.labels == 1).sum())
    assert set(ev.labels.tolist()) == {1} and set(ev.cas_labels.tolist()) == {1}
    assert "one-class" in ev.protocol["skipped"]["cas"]
    cfg, G, _, _, _ = _setup()
    m = ev(G, 0)
    assert not any(k.startswith("cas_") for k in m) and "ref_class_acc" not in m


def test_compile_is_a_checked_option_ignored_on_cpu_with_a_warning():
    from trainables.gan.loop import compiled

    with pytest.raises(ValueError, match="compile='fast'"):
        GANConfig(compile="fast")
    cfg, G, _, _, _ = _setup(compile="reduce-overhead")
    with pytest.warns(UserWarning, match="applies on CUDA only"):
        assert compiled(G, cfg, torch.device("cpu")) is G
    assert compiled(G, cfg.replace(compile="none"), torch.device("cuda")) is G
    # On CUDA it is torch.compile's wrapper (lazy: nothing is compiled until it is called).
    assert isinstance(compiled(G, cfg, torch.device("cuda")), torch._dynamo.eval_frame.OptimizedModule)


def test_steps_through_compiled_wrappers_train_the_modules_that_are_saved():
    """The step runs on compiled wrappers (here dynamo with the eager backend: the CPU has no
    use for inductor) and updates the very parameters G.state_dict() saves, under its keys."""
    cfg, G, D, opt_g, opt_d = _setup()
    keys, before = list(G.state_dict()), {k: v.clone() for k, v in G.state_dict().items()}
    Gc, Dc = torch.compile(G, backend="eager"), torch.compile(D, backend="eager")
    real, labels = torch.rand(8, 1, 32, 32) * 2 - 1, torch.tensor([0, 1] * 4)
    d_step(Gc, Dc, opt_d, real, labels, cfg)
    out = g_step(Gc, Dc, opt_g, labels, cfg)
    assert torch.isfinite(out["g_loss"])
    assert list(G.state_dict()) == keys
    assert any(not torch.equal(before[k], v) for k, v in G.state_dict().items())


def test_precision_follows_the_preset_measurements():
    from trainables.gan import preset

    assert GANConfig.from_dict(preset("s1")).amp is False  # bf16 was 12 % slower for S1
    assert GANConfig.from_dict(preset("s0")).amp and GANConfig.from_dict(preset("s4")).amp
    assert GANConfig.from_dict(preset("s1", "acgan")).amp  # another family's nets: the default
