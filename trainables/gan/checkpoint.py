"""Self-describing, atomically written GAN checkpoints (`state.pt`, `generator.pt`).

Both load with `torch.load(..., weights_only=True)`: they hold only tensors and plain Python
types (RNG states included).

Every epoch folder holds `generator.pt` (what ranking and registration read), the grid and
`resume.json`; the full training state `state.pt` (G, D, both optimisers: ~140 MB at S0's
size) is written only every `GANConfig.state_every` epochs, at the last and at a stop, into a
`StateStore` that keeps the newest two, each with `state.json` beside it (format, bytes,
sha256): a state whose bytes do not match is corrupt and resume falls back to the one before
it.  Resume from any epoch folder goes through `resume_state`: the newest full state no later
than that epoch.  Before each write the free space is checked (`trainables.disk`)."""
from __future__ import annotations

import contextlib
import hashlib
import io
import json
import pickle
import random
import re
import warnings
import zipfile
from pathlib import Path
from typing import Any, Optional

import numpy as np
import pyarrow.fs as pafs
import torch
from torch import nn

from trainables import disk
from trainables.atomic import atomic_path, write_bytes_atomic
from trainables.gan.build import build_generator
from trainables.gan.config import GANConfig

STATE_FILE, GENERATOR_FILE = "state.pt", "generator.pt"
STATE_SEAL = "state.json"    # beside each state.pt: its format, size and sha256
STATE_FORMAT, GENERATOR_FORMAT = "cxr-gan-state/1", "cxr-gan-generator/1"
RESUME_FILE = "resume.json"  # in every epoch folder: {"epoch": e, "state_epoch": newest state}
STATES_DIR = "states"        # a Ray trial's full states, beside its checkpoint folders
FULL_STATES_KEPT = 2         # the newest, and the one before it for a torn or corrupt newest
_EPOCH_DIR = re.compile(r"epoch_(\d{4,})")
# What an unreadable state.pt raises: a torn zip, a truncated file, a refused pickle.
_UNREADABLE = (RuntimeError, EOFError, OSError, ValueError, KeyError, pickle.UnpicklingError,
               zipfile.BadZipFile)


def atomic_save(obj: Any, path: Path | str) -> Path:
    """torch.save to a temporary file beside `path`, then os.replace (never a torn file);
    the free space is checked first and a full disk raises `disk.DiskFull` naming `path`."""
    need = disk.nbytes(obj)
    with disk.writing(Path(path).parent, need), atomic_path(path) as tmp:
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
                                "epoch_XXXX directory written by train_gan (its full training "
                                "state is written every `state_every` epochs only; resume "
                                "through trainables.gan.checkpoint.resume_state)")
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


# ------------------------------------------------------------------- full training states
def _load_state(source: Path | io.BytesIO, where: str) -> dict[str, Any]:
    ck = torch.load(source, map_location="cpu", weights_only=True)
    if not isinstance(ck, dict) or ck.get("format") != STATE_FORMAT:
        raise ValueError(f"{where} is not a full GAN training state ({STATE_FORMAT})")
    return ck


class CorruptState(ValueError):
    """A state file whose bytes are not the ones written (truncated, altered)."""


def _check_seal(data: bytes, seal: Optional[dict], where: str) -> None:
    if seal is None:
        return
    if len(data) != seal.get("bytes"):
        raise CorruptState(f"{where} has {len(data)} bytes, {seal.get('bytes')} were written "
                           "(truncated or altered)")
    if hashlib.sha256(data).hexdigest() != seal.get("sha256"):
        raise CorruptState(f"{where}: sha256 differs from the one written (altered)")


class StateStore:
    """The full training states of one run, `<root>/epoch_XXXX/state.pt` on a pyarrow file
    system (local, s3://, gs://), at most `keep` of them.

    A standalone run's store is its run folder (the state beside the epoch's generator.pt); a
    Ray trial's is `states/` beside its checkpoint folders, out of reach of Ray's best-K
    retention, which keeps checkpoints by score and would delete the state resume needs."""

    def __init__(self, root: str | Path, filesystem: Optional[pafs.FileSystem] = None,
                 keep: int = FULL_STATES_KEPT):
        if filesystem is None:  # a local path: pyarrow wants it absolute
            filesystem, root = pafs.LocalFileSystem(), Path(root).resolve()
        self.filesystem, self.root, self.keep = filesystem, str(root).rstrip("/"), keep

    @classmethod
    def beside(cls, checkpoint_path: str, filesystem: Optional[pafs.FileSystem] = None
               ) -> "StateStore":
        """The store of the Ray trial (or Train run) whose checkpoint folder is
        `checkpoint_path`: `states/` in the folder that holds its checkpoints."""
        return cls(f"{checkpoint_path.rstrip('/').rpartition('/')[0]}/{STATES_DIR}", filesystem)

    def __repr__(self) -> str:
        return f"StateStore({self.filesystem.type_name}:{self.root})"

    def path(self, epoch: int) -> str:
        return f"{self.root}/epoch_{epoch:04d}/{STATE_FILE}"

    @property
    def _local(self) -> bool:
        return self.filesystem.type_name == "local"

    @property
    def local_root(self) -> Optional[Path]:
        """The store's folder when it is on this machine's disk (its free space is ours to
        check), else None."""
        return Path(self.root) if self._local else None

    def epochs(self) -> list[int]:
        """The epochs that have a state here, oldest first."""
        entries = self.filesystem.get_file_info(pafs.FileSelector(self.root, allow_not_found=True))
        epochs = [int(m.group(1)) for e in entries if e.type == pafs.FileType.Directory
                  and (m := _EPOCH_DIR.fullmatch(e.base_name))]
        files = self.filesystem.get_file_info([self.path(e) for e in epochs])
        return sorted(e for e, f in zip(epochs, files) if f.type == pafs.FileType.File)

    def save(self, state: dict[str, Any], epoch: int, keep: Optional[int] = None) -> str:
        """Write epoch `epoch`'s state (atomically), then drop all but the newest `keep`
        (default: the store's), and any later epoch's (a line a resume abandoned)."""
        path = self.path(epoch)
        folder = path.rpartition("/")[0]
        buffer = io.BytesIO()
        torch.save(state, buffer)
        data = buffer.getbuffer()
        seal = json.dumps({"format": STATE_FORMAT, "bytes": len(data),
                           "sha256": hashlib.sha256(data).hexdigest()}).encode()
        if self._local:
            Path(folder).mkdir(parents=True, exist_ok=True)
            with disk.writing(folder, len(data)):
                write_bytes_atomic(path, data)
                write_bytes_atomic(f"{folder}/{STATE_SEAL}", seal)
        else:
            # An object store shows an object only once its upload completed: atomic as is.
            self.filesystem.create_dir(folder)
            for name, payload in ((path, data), (f"{folder}/{STATE_SEAL}", seal)):
                with self.filesystem.open_output_stream(name) as out:
                    out.write(payload)
        epochs = self.epochs()
        older = [e for e in epochs if e < epoch]
        keep = self.keep if keep is None else keep
        for stale in [e for e in epochs if e > epoch] + older[:max(len(older) - keep + 1, 0)]:
            self._remove(stale)
        return path

    def _remove(self, epoch: int) -> None:
        path = self.path(epoch)
        folder = path.rpartition("/")[0]
        self.filesystem.delete_file(path)
        with contextlib.suppress(FileNotFoundError, OSError):
            self.filesystem.delete_file(f"{folder}/{STATE_SEAL}")
        if not self.filesystem.get_file_info(pafs.FileSelector(folder, allow_not_found=True)):
            self.filesystem.delete_dir(folder)  # the store's own folder; an epoch folder of a
                                                # standalone run still holds its generator

    def load(self, epoch: int) -> dict[str, Any]:
        """Epoch `epoch`'s state, its bytes checked against the seal beside it (a state
        written before seals existed is checked by its format only)."""
        path = self.path(epoch)
        with self.filesystem.open_input_file(path) as handle:
            data = handle.read()
        _check_seal(data, self._read_seal(path), path)
        return _load_state(io.BytesIO(data), path)

    def _read_seal(self, path: str) -> Optional[dict]:
        try:
            with self.filesystem.open_input_file(f"{path.rpartition('/')[0]}/{STATE_SEAL}") as f:
                return json.loads(f.read())
        except (FileNotFoundError, OSError, ValueError):
            return None

    def load_newest(self, at_most: Optional[int] = None) -> Optional[dict[str, Any]]:
        """The newest readable state no later than epoch `at_most`; an unreadable one (torn,
        corrupt) falls back to the one before it.  None when there is none; raises when
        there are states but none can be read."""
        errors = []
        for epoch in reversed(self.epochs()):
            if at_most is not None and epoch > at_most:
                continue
            try:
                return self.load(epoch)
            except _UNREADABLE as exc:
                errors.append(f"{self.path(epoch)}: {exc}")
                warnings.warn(f"unreadable training state {self.path(epoch)} ({exc}); trying "
                              "the one before it", RuntimeWarning, stacklevel=2)
        if errors:
            raise ValueError("no readable full training state: " + "; ".join(errors))
        return None


def write_resume_note(epoch_dir: Path, epoch: int, state_epoch: Optional[int]) -> None:
    """`resume.json`: the epoch of this checkpoint and of the newest full state written so
    far, so a resume from a copy of the folder (Ray downloads it) knows where it stands."""
    (Path(epoch_dir) / RESUME_FILE).write_text(json.dumps({"epoch": epoch,
                                                           "state_epoch": state_epoch}))


def checkpoint_epoch(checkpoint_dir: Path) -> Optional[int]:
    """The epoch of a checkpoint folder: its resume.json, else its epoch_XXXX name."""
    note = Path(checkpoint_dir) / RESUME_FILE
    if note.is_file():
        return int(json.loads(note.read_text())["epoch"])
    m = _EPOCH_DIR.fullmatch(Path(checkpoint_dir).name)
    return int(m.group(1)) if m else None


def resume_state(checkpoint_dir: Path, states: Optional[StateStore] = None
                 ) -> Optional[dict[str, Any]]:
    """The full training state to resume the checkpoint folder `checkpoint_dir` from: its own
    state.pt when it has one, else the newest no later than its epoch in `states` (default:
    the epoch folders beside it, a standalone run's).  None when there is none: the run then
    starts over."""
    checkpoint_dir = Path(checkpoint_dir)
    epoch = checkpoint_epoch(checkpoint_dir)
    own = checkpoint_dir / STATE_FILE
    if own.is_file():
        try:
            data = own.read_bytes()
            seal = checkpoint_dir / STATE_SEAL
            _check_seal(data, json.loads(seal.read_text()) if seal.is_file() else None, str(own))
            return _load_state(io.BytesIO(data), str(own))
        except _UNREADABLE as exc:
            warnings.warn(f"unreadable training state {own} ({exc}); trying the one before it",
                          RuntimeWarning, stacklevel=2)
            epoch = None if epoch is None else epoch - 1
    store = states or StateStore(checkpoint_dir.parent)
    return store.load_newest(at_most=epoch)
