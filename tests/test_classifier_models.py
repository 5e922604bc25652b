"""Classifier models: exact parameter counts, shapes, offline pretrained weights, config."""
from __future__ import annotations

import pytest
import torch

from trainables.classifier.config import ClassifierConfig
from trainables.models.classifiers import (S0CNN, S3CNN, PretrainedWeightsMissing,
                                           TransferClassifier, build_classifier,
                                           keras_param_count, last_conv)


def test_s0_cnn_has_exactly_the_seeds_parameter_count():
    m = S0CNN(num_classes=3, in_channels=3, resolution=112)
    assert keras_param_count(m) == 2_416_611
    assert sum(p.numel() for p in m.parameters() if p.requires_grad) == 2_416_451  # Keras "trainable"
    assert m(torch.zeros(2, 3, 112, 112)).shape == (2, 3)


def test_s3_cnn_matches_the_seeds_table():
    assert keras_param_count(S3CNN(3, 3, 224)) == 3_043_695


@pytest.mark.parametrize("name", ["s0_cnn", "s3_cnn"])
def test_custom_cnns_run_at_small_grey_sizes(name):
    m = build_classifier(name, 4, in_channels=1, resolution=32)
    assert m(torch.zeros(3, 1, 32, 32)).shape == (3, 4)
    assert isinstance(last_conv(m), torch.nn.Conv2d)


def test_missing_imagenet_weights_is_a_clear_error(tmp_path, monkeypatch):
    old = torch.hub.get_dir()
    torch.hub.set_dir(str(tmp_path))
    try:
        with pytest.raises(PretrainedWeightsMissing) as err:
            build_classifier("resnet50", 3, resolution=32, pretrained=True)
    finally:
        torch.hub.set_dir(old)
    msg = str(err.value)
    expected = tmp_path / "checkpoints" / "resnet50-0676ba61.pth"
    assert str(expected) in msg
    assert "https://download.pytorch.org/models/resnet50-0676ba61.pth" in msg
    assert "--no-pretrained" in msg
    assert not expected.exists()  # nothing was downloaded


def test_imagenet_weights_load_from_the_hub_cache_and_freeze(tmp_path):
    import torchvision

    ref = torchvision.models.resnet50(weights=None)
    (tmp_path / "checkpoints").mkdir()
    torch.save(ref.state_dict(), tmp_path / "checkpoints" / "resnet50-0676ba61.pth")
    old = torch.hub.get_dir()
    torch.hub.set_dir(str(tmp_path))
    try:
        m = build_classifier("resnet50", 3, resolution=32, pretrained=True)
    finally:
        torch.hub.set_dir(old)
    assert torch.equal(m.features[0].weight, ref.conv1.weight)
    assert torch.equal(m.features[7][2].bn3.running_var, ref.layer4[2].bn3.running_var)
    assert not any(p.requires_grad for p in m.features.parameters())
    assert all(p.requires_grad for p in m.head.parameters())
    m.train()
    assert not m.features.training  # frozen BN statistics stay fixed


def test_no_pretrained_trains_the_whole_backbone():
    m = build_classifier("resnet50", 3, resolution=32, pretrained=False)
    assert isinstance(m, TransferClassifier) and not m.frozen
    assert all(p.requires_grad for p in m.parameters())
    assert m(torch.zeros(2, 1, 32, 32)).shape == (2, 3)


@pytest.mark.parametrize("arch, spatial, channels", [("vgg16", 4, 512), ("resnet50", 5, 2048)])
def test_s2_head_flattens_the_seed_feature_maps(arch, spatial, channels):
    """S2 (150x150 input): block5_pool 4x4x512 / conv5_block3_out 5x5x2048, flattened into
    dense 1024 -> 64 -> output."""
    m = build_classifier(arch, 2, resolution=150, pretrained=False, head="s2")
    dense = [l for l in m.head if isinstance(l, torch.nn.Linear)]
    assert [(l.in_features, l.out_features) for l in dense] == \
        [(spatial * spatial * channels, 1024), (1024, 64), (64, 2)]
    assert m(torch.zeros(1, 1, 150, 150)).shape == (1, 2)
    with pytest.raises(ValueError, match="head"):
        ClassifierConfig(head="s9")


def test_config_rejects_unknown_keys_and_bad_values():
    with pytest.raises(ValueError, match="unknown ClassifierConfig key"):
        ClassifierConfig.from_dict({"learning_rate": 0.1})
    with pytest.raises(ValueError, match="strategy"):
        ClassifierConfig(strategy="smote")
    with pytest.raises(ValueError, match="lr"):
        ClassifierConfig(lr=0)
    cfg = ClassifierConfig.from_dict({"optimizer": "sgd", "lr": 0.01, "batch_size": 256})
    assert ClassifierConfig.from_dict(cfg.to_dict()) == cfg
