"""Classifiers of the seed systems: S0's and S3's custom CNNs, frozen VGG16 / ResNet50.

S0 custom CNN -- how the filter sizes were worked out
-----------------------------------------------------
The S0 slides give only: input 112x112x3; 2 conv blocks (conv, BatchNorm, ReLU); 2 conv
blocks (conv, ReLU); 2 max-pools; 2 dropouts (0.2); flatten; dense 128 ReLU; dropout 0.5;
dense 3; 2,416,611 parameters of which 160 non-trainable.  Keras counts BatchNorm's moving
mean and variance as non-trainable (2 per channel), so the two BN layers hold 80 channels.
Assuming Keras' defaults everywhere (3x3 kernels, padding "valid", 2x2 max-pool) and the
VGG-style order the slides list (conv-BN-ReLU x2, pool, dropout, conv-ReLU x2, pool,
dropout), an exhaustive search over 1..256 filters per layer has exactly one solution:

    conv 3->27  :     756   + BN 27  (108, of which 54 non-trainable)   112 -> 110
    conv 27->53 :  12,932   + BN 53  (212, of which 106 non-trainable)  110 -> 108, pool -> 54
    conv 53->222: 106,116                                                54 -> 52
    conv 222->28:  55,972                                                52 -> 50, pool -> 25
    dense 25*25*28 -> 128: 2,240,128;  dense 128 -> 3: 387
    total 2,416,611 (Keras count), 2,416,451 trainable

(Other layouts also reach the total -- e.g. "same" padding with 3x3 pools -- but none with
powers of two; this one needs no non-default Keras argument.)  `keras_param_count` counts
the way Keras does (parameters + BN running mean/var); PyTorch's `parameters()` gives the
trainable number.

Transfer models: torchvision architectures; ImageNet weights are read from the torch hub
cache or a given file and never downloaded (`PretrainedWeightsMissing` says where to put
them).  With ``pretrained=False`` the backbone trains from scratch (not frozen).
"""
from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

# torchvision's own file names (IMAGENET1K_V1), as they sit in <hub dir>/checkpoints/.
WEIGHT_URLS = {
    "vgg16": "https://download.pytorch.org/models/vgg16-397923af.pth",
    "resnet50": "https://download.pytorch.org/models/resnet50-0676ba61.pth",
}
MODELS = ("s0_cnn", "s3_cnn", "vgg16", "resnet50")
HEADS = ("s3", "s2")  # transfer heads: S3's (default) or S2's 1024-64


class PretrainedWeightsMissing(FileNotFoundError):
    """ImageNet weights are not on disk (this product never downloads them)."""


def _conv_out(size: int, kernel: int, padding: int) -> int:
    return size + 2 * padding - kernel + 1


class S0CNN(nn.Module):
    """S0's custom CNN (2,416,611 Keras parameters at 112x112x3, 3 classes).

    Filters (27, 53, 222, 28) are derived in the module docstring; other resolutions keep
    the layers and change only the flatten size.
    """

    def __init__(self, num_classes: int = 3, in_channels: int = 3, resolution: int = 112,
                 dropout: float = 0.5, conv_dropout: float = 0.2,
                 filters: tuple[int, int, int, int] = (27, 53, 222, 28)) -> None:
        super().__init__()
        f1, f2, f3, f4 = filters
        self.features = nn.Sequential(
            nn.Conv2d(in_channels, f1, 3), nn.BatchNorm2d(f1), nn.ReLU(inplace=True),
            nn.Conv2d(f1, f2, 3), nn.BatchNorm2d(f2), nn.ReLU(inplace=True),
            nn.MaxPool2d(2), nn.Dropout(conv_dropout),
            nn.Conv2d(f2, f3, 3), nn.ReLU(inplace=True),
            nn.Conv2d(f3, f4, 3), nn.ReLU(inplace=True),
            nn.MaxPool2d(2), nn.Dropout(conv_dropout),
        )
        s = (_conv_out(_conv_out(resolution, 3, 0), 3, 0) // 2)
        s = _conv_out(_conv_out(s, 3, 0), 3, 0) // 2
        if s < 1:
            raise ValueError(f"S0CNN needs resolution >= 14, got {resolution}")
        self.head = nn.Sequential(nn.Flatten(), nn.Linear(s * s * f4, 128), nn.ReLU(inplace=True),
                                  nn.Dropout(dropout), nn.Linear(128, num_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


class S3CNN(nn.Module):
    """S3's "CustomCNN": input BN, conv 64 (same) / pool / conv 64 (same) / pool / dropout /
    conv 32 (valid) / pool / dropout / dense 128 / dropout / dense.  3,043,695 Keras
    parameters at 224x224x3 (the seed's table)."""

    def __init__(self, num_classes: int = 3, in_channels: int = 3, resolution: int = 224,
                 dropout: float = 0.5, conv_dropout: float = 0.2) -> None:
        super().__init__()
        # The seed does not give its dropout rates; 0.2 / 0.5 as in S0.
        self.features = nn.Sequential(
            nn.BatchNorm2d(in_channels),
            nn.Conv2d(in_channels, 64, 3, padding=1), nn.ReLU(inplace=True), nn.MaxPool2d(2),
            nn.Conv2d(64, 64, 3, padding=1), nn.ReLU(inplace=True), nn.MaxPool2d(2),
            nn.Dropout(conv_dropout),
            nn.Conv2d(64, 32, 3), nn.ReLU(inplace=True), nn.MaxPool2d(2),
            nn.Dropout(conv_dropout),
        )
        s = (_conv_out(resolution // 2 // 2, 3, 0)) // 2
        if s < 1:
            raise ValueError(f"S3CNN needs resolution >= 12, got {resolution}")
        self.head = nn.Sequential(nn.Flatten(), nn.Linear(s * s * 32, 128), nn.ReLU(inplace=True),
                                  nn.Dropout(dropout), nn.Linear(128, num_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


class TransferClassifier(nn.Module):
    """A torchvision backbone (VGG16 or ResNet50) with the seeds' heads.

    head "s3": vgg16 conv features -> flatten -> dense 128 ReLU -> dropout -> dense K;
    resnet50 conv features -> global average pool -> dense 128, 64 ReLU -> dropout 0.5 ->
    dense K.  head "s2" (either backbone): block5_pool / conv5_block3_out features ->
    flatten -> dense 1024, 64 ReLU -> dense K (S2's single sigmoid unit is K = 2 logits here).
    Grey inputs (1 channel) are repeated to 3 channels.  ``frozen`` freezes the backbone
    (and keeps its BatchNorm statistics fixed in train mode).
    """

    def __init__(self, arch: str, num_classes: int = 3, resolution: int = 224,
                 dropout: float = 0.5, frozen: bool = True, head: str = "s3") -> None:
        super().__init__()
        import torchvision  # imported here: only the transfer models need it

        if head not in HEADS:
            raise ValueError(f"unknown transfer head {head!r}; choose one of {HEADS}")
        self.arch, self.frozen = arch, frozen
        if arch in ("vgg16", "resnet50") and head == "s2":
            self.features = _backbone(torchvision, arch)
            with torch.no_grad():  # the flattened size at this resolution (S2: 4x4x512, 5x5x2048)
                flat = self.features(torch.zeros(1, 3, resolution, resolution)).numel()
            self.head = nn.Sequential(nn.Flatten(), nn.Linear(flat, 1024), nn.ReLU(inplace=True),
                                      nn.Linear(1024, 64), nn.ReLU(inplace=True),
                                      nn.Linear(64, num_classes))
        elif arch == "vgg16":
            self.features = _backbone(torchvision, arch)
            s = resolution // 32
            if s < 1:
                raise ValueError(f"vgg16 needs resolution >= 32, got {resolution}")
            self.head = nn.Sequential(nn.Flatten(), nn.Linear(512 * s * s, 128),
                                      nn.ReLU(inplace=True), nn.Dropout(dropout),
                                      nn.Linear(128, num_classes))
        elif arch == "resnet50":
            self.features = _backbone(torchvision, arch)
            self.head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                                      nn.Linear(2048, 128), nn.ReLU(inplace=True),
                                      nn.Linear(128, 64), nn.ReLU(inplace=True),
                                      nn.Dropout(dropout), nn.Linear(64, num_classes))
        else:
            raise ValueError(f"unknown transfer architecture {arch!r}; use 'vgg16' or 'resnet50'")
        if frozen:
            for p in self.features.parameters():
                p.requires_grad_(False)

    def train(self, mode: bool = True) -> "TransferClassifier":
        super().train(mode)
        if self.frozen:  # a frozen Keras backbone also keeps its BN statistics
            self.features.eval()
        return self

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[1] == 1:
            x = x.expand(-1, 3, -1, -1)
        return self.head(self.features(x))


def _backbone(torchvision, arch: str) -> nn.Module:
    """The convolutional part of a torchvision model (the names ImageNet weights load into)."""
    if arch == "vgg16":
        return torchvision.models.vgg16(weights=None).features
    net = torchvision.models.resnet50(weights=None)
    return nn.Sequential(net.conv1, net.bn1, net.relu, net.maxpool,
                         net.layer1, net.layer2, net.layer3, net.layer4)


def weights_file(arch: str, weights_path: str | Path | None = None) -> Path:
    """Where the ImageNet weights of ``arch`` are expected: ``weights_path`` or
    ``torch.hub.get_dir()/checkpoints/<torchvision file name>``."""
    if arch not in WEIGHT_URLS:
        raise ValueError(f"no pretrained weights for {arch!r}; models with weights: "
                         f"{sorted(WEIGHT_URLS)}")
    if weights_path is not None:
        return Path(weights_path)
    return Path(torch.hub.get_dir()) / "checkpoints" / WEIGHT_URLS[arch].rsplit("/", 1)[1]


def load_imagenet_weights(model: TransferClassifier, weights_path: str | Path | None = None
                          ) -> Path:
    """Copy torchvision's ImageNet backbone weights into ``model.features``; never downloads."""
    path = weights_file(model.arch, weights_path)
    if not path.is_file():
        url = WEIGHT_URLS[model.arch]
        raise PretrainedWeightsMissing(
            f"ImageNet weights for {model.arch} not found at {path}. This tool never downloads "
            f"them: fetch {url} on a machine with internet and put the file at {path} (the "
            f"torch hub cache, TORCH_HOME), or pass its path (weights_path / --weights), or "
            f"train from scratch with pretrained=False (--no-pretrained).")
    state = torch.load(path, map_location="cpu", weights_only=True)
    if model.arch == "vgg16":
        feats = {k[len("features."):]: v for k, v in state.items() if k.startswith("features.")}
    else:
        names = ("conv1", "bn1", "relu", "maxpool", "layer1", "layer2", "layer3", "layer4")
        feats = {}
        for k, v in state.items():
            head = k.split(".", 1)[0]
            if head in names:
                feats[f"{names.index(head)}.{k.split('.', 1)[1]}"] = v
    model.features.load_state_dict(feats, strict=True)
    return path


def build_classifier(name: str, num_classes: int, *, in_channels: int = 3,
                     resolution: int = 112, dropout: float = 0.5, pretrained: bool = True,
                     weights_path: str | Path | None = None, head: str = "s3") -> nn.Module:
    """A classifier by name (``MODELS``).  Transfer models with ``pretrained=True`` load
    ImageNet weights from disk and freeze the backbone; ``pretrained=False`` trains all."""
    if name == "s0_cnn":
        return S0CNN(num_classes, in_channels, resolution, dropout=dropout)
    if name == "s3_cnn":
        return S3CNN(num_classes, in_channels, resolution, dropout=dropout)
    if name in WEIGHT_URLS:
        model = TransferClassifier(name, num_classes, resolution, dropout, frozen=pretrained,
                                   head=head)
        if pretrained:
            load_imagenet_weights(model, weights_path)
        return model
    raise ValueError(f"unknown classifier {name!r}; choose one of {MODELS}")


def keras_param_count(model: nn.Module) -> int:
    """Parameters as Keras counts them: all parameters plus BatchNorm running mean/var."""
    n = sum(p.numel() for p in model.parameters())
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.running_mean is not None:
            n += m.running_mean.numel() + m.running_var.numel()
    return n


def last_conv(model: nn.Module) -> nn.Conv2d:
    """The last Conv2d of ``model`` (Grad-CAM's target layer)."""
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    if not convs:
        raise ValueError(f"{type(model).__name__} has no Conv2d layer for Grad-CAM")
    return convs[-1]
