"""GANConfig validation and presets."""
from __future__ import annotations

import pytest

from trainables.gan import GANConfig, preset
from trainables.gan.presets import PRESETS


def test_defaults_round_trip_through_a_plain_dict():
    cfg = GANConfig(family="dcgan", dcgan_classes=("Normal",))
    d = cfg.to_dict()
    assert d["dcgan_classes"] == ["Normal"] and d["variant"] == "s1"
    assert GANConfig.from_dict(d) == cfg


def test_unknown_key_is_rejected_by_name():
    with pytest.raises(ValueError, match="lr_gen"):
        GANConfig.from_dict({"lr_gen": 1e-3})


@pytest.mark.parametrize("bad", [
    {"lr_g": 0.0}, {"lr_d": -1e-4}, {"d_steps_per_g": 0}, {"g_steps_per_d": 0},
    {"d_steps_per_g": 2, "g_steps_per_d": 3}, {"scheduler": "cosine"}, {"optimizer": "rmsprop"},
    {"family": "stylegan"}, {"family": "cgan", "variant": "s1"}, {"channels": 2},
    {"batch_size": 1}, {"label_smoothing": 0.7}, {"nesterov": True, "optimizer": "sgd", "momentum": 0.0},
    {"dcgan_classes": ("Normal",)},  # only for family dcgan
    {"gamma": 0.0}, {"t_0": 0},
])
def test_bad_values_are_rejected_naming_the_field(bad):
    with pytest.raises(ValueError) as err:
        GANConfig.from_dict(bad)
    assert any(k in str(err.value) for k in list(bad) + ["dcgan_classes", "nesterov"])


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_every_preset_is_a_valid_config_at_seed_size(name):
    cfg = GANConfig.from_dict(preset(name))
    assert cfg.width == 1.0 and cfg.variant == name


def test_s2_preset_is_the_slow_discriminator_run():
    cfg = GANConfig.from_dict(preset("s2"))
    assert (cfg.family, cfg.g_steps_per_d, cfg.scheduler, cfg.t_0, cfg.resolution) == \
        ("cgan", 10, "cosine_warm_restarts", 10, 150)


def test_preset_for_another_family_keeps_training_settings_only():
    d = preset("s2", family="acgan")
    cfg = GANConfig.from_dict(d)
    assert cfg.family == "acgan" and cfg.variant == "s0" and cfg.g_steps_per_d == 10


def test_unknown_preset_lists_the_names():
    with pytest.raises(ValueError, match="s0.*s4"):
        preset("s9")


def test_optimizers_and_schedulers_follow_the_config():
    import torch

    from trainables.gan import build_optimizer, build_scheduler

    params = [torch.nn.Parameter(torch.zeros(2))]
    sgd = build_optimizer(GANConfig(optimizer="sgd", nesterov=True, momentum=0.9), params, 0.01)
    assert isinstance(sgd, torch.optim.SGD) and sgd.param_groups[0]["nesterov"]
    adam = build_optimizer(GANConfig(beta1=0.9), params, 2e-4)
    assert adam.param_groups[0]["betas"] == (0.9, 0.999)
    assert build_scheduler(GANConfig(), adam) is None

    def lrs(cfg, n):
        opt = build_optimizer(cfg, [torch.nn.Parameter(torch.zeros(1))], 1.0)
        sched, out = build_scheduler(cfg, opt), []
        for _ in range(n):
            out.append(opt.param_groups[0]["lr"])
            opt.step()
            sched.step()
        return out

    cos = lrs(GANConfig(scheduler="cosine_warm_restarts", t_0=3), 7)
    assert cos[0] == cos[3] == cos[6] == 1.0 and cos[1] < 1.0  # restarts every t_0 epochs
    assert lrs(GANConfig(scheduler="step", step_size=2, gamma=0.5), 5) == [1.0, 1.0, 0.5, 0.5, 0.25]
    assert lrs(GANConfig(scheduler="exponential", gamma=0.5), 3) == [1.0, 0.5, 0.25]
