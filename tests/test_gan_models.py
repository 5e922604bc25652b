"""GAN model families: seed parameter counts, shapes, ranges, per-class routing."""
from __future__ import annotations

import pytest
import torch

from trainables.gan import GANConfig, build_models, preset
from trainables.models.acgan import ACGANDiscriminator, ACGANGenerator
from trainables.models.dcgan import DCGANDiscriminator, DCGANGenerator, PerClassGenerator
from trainables.models.init import count_params


def test_s1_dcgan_parameter_counts_are_exact():
    # S1 (shared/SYSTEMS.md): G 3,574,656 and D 2,763,520 at 64x64x1, z 100-d.
    assert count_params(DCGANGenerator(resolution=64, channels=1, latent_dim=100)) == 3_574_656
    assert count_params(DCGANDiscriminator(resolution=64, channels=1)) == 2_763_520


def test_s1_preset_builds_one_exact_pair_per_class():
    cfg = GANConfig.from_dict(preset("s1"))
    G, D = build_models(cfg, num_classes=4)
    assert count_params(G) == 4 * 3_574_656 and count_params(D) == 4 * 2_763_520


def test_s3_covidgan_parameter_counts_are_approximately_the_seeds():
    # S3 gives "approximately 22 million" (G) and "approximately 2 million" (D): we accept
    # what rounds to those figures, i.e. +-0.5 M for G (2 significant figures) and
    # [1.5 M, 2.5 M) for D (1 significant figure).
    cfg = GANConfig.from_dict(preset("s3"))
    G, D = build_models(cfg, num_classes=3)
    assert 21_500_000 <= count_params(G) < 22_500_000
    assert 1_500_000 <= count_params(D) < 2_500_000


@pytest.mark.parametrize("family", ["acgan", "dcgan", "cgan"])
@pytest.mark.parametrize("resolution,channels", [(32, 1), (112, 3), (150, 1)])
def test_every_family_gives_images_of_the_requested_shape_in_range(family, resolution, channels):
    cfg = GANConfig(family=family, resolution=resolution, channels=channels, width=0.05)
    G, D = build_models(cfg, num_classes=3)
    labels = torch.tensor([0, 1, 2, 1])
    x = G(torch.randn(4, cfg.latent_dim) * 50, labels)  # large z saturates tanh: still in range
    assert x.shape == (4, channels, resolution, resolution)
    assert x.min() >= -1 and x.max() <= 1
    src, cls = D(x, labels)
    assert src.shape == (4,)
    assert (cls is not None) == (family == "acgan")
    if cls is not None:
        assert cls.shape == (4, 3)


def test_s4_dcgan_is_its_authors_keras_model():
    """S4 as korasagar/DCGAN-ChestXray `DCGAN.py`: Dense -> 8x8x1024, four ConvTranspose k4 s2
    (512..64) and a k5 tanh conv; D five k5 convs, dropout 0.4, dense; no BatchNorm.  The
    parameter counts are the Keras models' (Dense/Conv with biases)."""
    cfg = GANConfig.from_dict(preset("s4"))
    assert (cfg.resolution, cfg.channels, cfg.lr_d, cfg.lr_g, cfg.beta1) == (128, 3, 2e-5, 1e-4, 0.5)
    assert (cfg.batch_size, cfg.g_batch_size, cfg.d_updates) == (64, 128, "separate")
    G, D = build_models(cfg, num_classes=2, class_indices=[0])  # S4: the minority class only
    assert count_params(G) == 17_766_019 and count_params(D) == 17_480_321
    g_layers = [type(m).__name__ for m in G.modules()]
    d_layers = [type(m).__name__ for m in D.modules()]
    assert g_layers.count("ConvTranspose2d") == 4 and g_layers.count("Conv2d") == 1
    assert d_layers.count("Conv2d") == 5 and d_layers.count("Dropout") == 1
    assert "BatchNorm2d" not in g_layers + d_layers
    convt = [m for m in G.modules() if isinstance(m, torch.nn.ConvTranspose2d)]
    assert [m.out_channels for m in convt] == [512, 256, 128, 64]
    small = GANConfig.from_dict({**preset("s4"), "width": 0.0625})
    G, D = build_models(small, num_classes=2, class_indices=[0])
    labels = torch.tensor([0, 0])
    x = G(torch.randn(2, small.latent_dim), labels)
    assert x.shape == (2, 3, 128, 128) and x.abs().max() <= 1
    src, cls = D(x, labels)
    assert src.shape == (2,) and cls is None


def test_seed_sizes_give_the_seed_shapes():
    g = ACGANGenerator(3, resolution=112, channels=3)
    assert g(torch.randn(2, 100), torch.tensor([0, 2])).shape == (2, 3, 112, 112)
    for variant in ("s0", "s3"):
        d = ACGANDiscriminator(3, resolution=112, channels=3, variant=variant)
        # both variants end at S0/S3's 7x7x512 before the heads
        assert d.source.in_features == 7 * 7 * 512


def test_per_class_dcgan_routes_labels_and_rejects_untrained_classes():
    torch.manual_seed(0)
    G = PerClassGenerator([0, 2], ("Covid", "Normal", "Viral"), resolution=32, width=0.1).eval()
    z = torch.randn(3, 100)
    both = G(z, torch.tensor([0, 2, 0]))
    # sample k comes from the generator of its own label, whatever the rest of the batch is
    assert torch.allclose(both[1:2], G.nets[1](z[1:2]), atol=1e-6)
    assert torch.allclose(both[0:1], G.nets[0](z[0:1]), atol=1e-6)
    with pytest.raises(ValueError, match="class 1 \\('Normal'\\)"):
        G(z, torch.tensor([0, 1, 2]))


def test_weights_are_initialised_n_0_002():
    g = DCGANGenerator(resolution=64)
    w = g.body[3].weight.detach()  # 512 -> 256 transposed conv: 2 M weights
    assert abs(float(w.mean())) < 1e-3 and abs(float(w.std()) - 0.02) < 1e-3
