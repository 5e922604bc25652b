"""Self-describing, atomically written GAN checkpoints (`state.pt`, `generator.pt`).

Both load with `torch.load(..., weights_only=True)`: they hold only tensors and plain Python
types (RNG states included)."""
from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from trainables.atomic import atomic_path
from trainables.gan.build import build_generator
from trainables.gan.config import GANConfig

STATE_FILE, GENERATOR_FILE = "state.pt", "generator.pt"
STATE_FORMAT, GENERATOR_FORMAT = "cxr-gan-state/1", "cxr-gan-generator/1"


def atomic_save(obj: Any, path: Path | str) -> Path:
    """torch.save to a temporary file beside `path`, then os.replace (never a torn file)."""
    with atomic_path(path) as tmp:
        torch.save(obj, tmp)
    return Path(path)


def rng_state() -> dict[str, Any]:
    """Every RNG the loop touches, as tensors / plain types."""
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    return {
        "torch": torch.get_rng_state(),
        "cuda": list(torch.cuda.get_rng_state_all()) if torch.cuda.is_available() else [],
        "python": random.getstate(),
        "numpy": [kind, torch.from_numpy(np.asarray(keys, dtype=np.int64)), int(pos),
                  int(has_gauss), float(cached)],
    }


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore what `rng_state` saved."""
    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    kind, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, cached))


def _resolve(path: Path | str, preferred: str) -> Path:
    path = Path(path)
    if path.is_dir():
        for name in (preferred, STATE_FILE):
            if (path / name).is_file():
                return path / name
        raise FileNotFoundError(f"no {preferred} or {STATE_FILE} in {path}: expected an "
                                "epoch_XXXX directory written by train_gan")
    if not path.is_file():
        raise FileNotFoundError(f"GAN checkpoint {path} does not exist (a search keeps the "
                                "generators of the --keep-epochs best epochs per trial and the "
                                "latest; the ranking's `kept` column says which)")
    return path


def load_checkpoint(path: Path | str) -> dict[str, Any]:
    """Load `state.pt` (a file or the epoch directory holding it), weights_only."""
    file = _resolve(path, STATE_FILE)
    ck = torch.load(file, map_location="cpu", weights_only=True)
    if not isinstance(ck, dict) or ck.get("format") not in (STATE_FORMAT, GENERATOR_FORMAT):
        raise ValueError(f"{file} is not a GAN checkpoint written by trainables.gan "
                         f"(format {ck.get('format') if isinstance(ck, dict) else type(ck)})")
    return ck


def save_generator(epoch_dir: Path, G: nn.Module, cfg: GANConfig, classes: tuple[str, ...],
                   class_indices: tuple[int, ...]) -> Path:
    """Write `generator.pt`: generator weights + config + classes, nothing else."""
    return atomic_save({"format": GENERATOR_FORMAT, "generator": G.state_dict(),
                        "config": cfg.to_dict(), "classes": list(classes),
                        "class_indices": list(class_indices)}, epoch_dir / GENERATOR_FILE)


def load_generator(path: Path | str, device: str | torch.device = "cpu"
                   ) -> tuple[nn.Module, GANConfig, tuple[str, ...]]:
    """(G in eval mode, its GANConfig, class names) from generator.pt, state.pt or an epoch dir.
    Call it as G(z, labels) with labels indexing `classes`."""
    ck = load_checkpoint(_resolve(path, GENERATOR_FILE))
    cfg = GANConfig.from_dict(ck["config"])
    classes = tuple(ck["classes"])
    G = build_generator(cfg, len(classes), classes, ck["class_indices"])
    G.load_state_dict(ck["generator"])
    return G.to(device).eval(), cfg, classes
