"""A search's data as files in its storage, so that a trial on any node reads the same images.

The driver decodes the fit and validation sets once (the usual manifest and decoded cache, on
its own machine) and publishes them under the search's storage as a *bundle*:

    <storage>/cxr-data/<key>/{fit,val}_images.npy  uint8 (N, H, W, C)
                             {fit,val}_labels.npy  int64 (N,)
                             bundle.json           classes, splits, fingerprints; written last

`<storage>` is what Tune writes checkpoints to: `s3://`, `gs://` (pyarrow's file systems, as
Ray uses) or a folder.  A trial reads only the bundle, never the driver's data path: from a
remote store it is copied once per node into `<cache>/bundles/<key>` (the key is the data
fingerprint, so a bundle is never stale) and memory-mapped there; a folder is memory-mapped in
place.  Publishing an existing bundle is a no-op.
"""
from __future__ import annotations

import hashlib
import io
import json
import os
import shutil
import uuid
from pathlib import Path

import numpy as np
import pyarrow.fs as pafs

from .errors import DataError

ROLES = ("fit", "val")
META = "bundle.json"
FOLDER = "cxr-data"


def bundle_key(fit, val) -> str:
    return hashlib.sha256(f"{fit.fingerprint}|{val.fingerprint}".encode()).hexdigest()[:24]


def _filesystem(uri: str) -> tuple[pafs.FileSystem, str]:
    if "://" in uri:
        return pafs.FileSystem.from_uri(uri)
    return pafs.LocalFileSystem(), str(Path(uri).expanduser().resolve())


def _exists(fs: pafs.FileSystem, path: str) -> bool:
    return fs.get_file_info(path).type == pafs.FileType.File


def _write(fs: pafs.FileSystem, path: str, data: bytes) -> None:
    # Unique name then move, so a reader on another node never sees half a file.
    tmp = f"{path}.{uuid.uuid4().hex}.tmp"
    with fs.open_output_stream(tmp) as out:
        out.write(data)
    fs.move(tmp, path)


def _npy(array) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, np.ascontiguousarray(np.asarray(array)))
    return buffer.getvalue()


def _describe(image_set) -> dict:
    return {"split": image_set.split, "fingerprint": image_set.fingerprint,
            "paths": list(image_set.paths), "skipped": list(image_set.skipped),
            "manifest_dir": image_set.manifest_dir}


def publish(fit, val, storage: str) -> str:
    """Write (fit, val) under `storage` once; returns the bundle's URI (or folder)."""
    uri = f"{storage.rstrip('/')}/{FOLDER}/{bundle_key(fit, val)}"
    fs, root = _filesystem(uri)
    if _exists(fs, f"{root}/{META}"):
        return uri
    fs.create_dir(root, recursive=True)
    for role, image_set in zip(ROLES, (fit, val)):
        _write(fs, f"{root}/{role}_images.npy", _npy(image_set.images))
        _write(fs, f"{root}/{role}_labels.npy", _npy(image_set.labels))
    meta = {"classes": list(fit.classes), **{role: _describe(s) for role, s in zip(ROLES, (fit, val))}}
    _write(fs, f"{root}/{META}", json.dumps(meta).encode())
    return uri


def local_copy(uri: str, cache_dir: Path) -> Path:
    """The bundle as a local folder: in place for a folder, else this node's cached copy
    (downloaded once; concurrent trials each download, the first rename wins)."""
    fs, root = _filesystem(uri)
    if isinstance(fs, pafs.LocalFileSystem):
        if not Path(root, META).is_file():
            raise DataError(f"data bundle {uri}: {META} missing (not published, or the storage "
                            "is not mounted on this node); the search's driver publishes it")
        return Path(root)
    local = Path(cache_dir) / "bundles" / Path(root).name
    if (local / META).is_file():
        return local
    if not _exists(fs, f"{root}/{META}"):
        raise DataError(f"data bundle {uri}: {META} not found; the search's driver publishes "
                        "it, and this node needs read access to the storage (IAM role)")
    tmp = local.with_name(f".{local.name}.{uuid.uuid4().hex}")
    tmp.mkdir(parents=True)
    try:
        for info in fs.get_file_info(pafs.FileSelector(root)):
            if info.type == pafs.FileType.File and not info.base_name.endswith(".tmp"):
                with fs.open_input_stream(info.path) as src, open(tmp / info.base_name, "wb") as dst:
                    shutil.copyfileobj(src, dst, length=1 << 22)
        os.replace(tmp, local)
    except OSError:
        if not (local / META).is_file():
            raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return local


def load(uri: str, cache_dir: Path, image_set_type) -> tuple:
    """(fit, val) ImageSets of a published bundle, memory-mapped from a local folder."""
    folder = local_copy(uri, cache_dir)
    meta = json.loads((folder / META).read_text())
    out = []
    for role in ROLES:
        info = meta[role]
        out.append(image_set_type(
            images=np.load(folder / f"{role}_images.npy", mmap_mode="r"),
            labels=np.load(folder / f"{role}_labels.npy"), classes=tuple(meta["classes"]),
            paths=tuple(info["paths"]), split=info["split"], fingerprint=info["fingerprint"],
            skipped=tuple(info["skipped"]), manifest_dir=info["manifest_dir"]))
    return tuple(out)


def check_shape(image_set, resolution: int, channels: int, uri: str) -> None:
    shape = tuple(image_set.images.shape[1:])
    if shape != (resolution, resolution, channels):
        raise DataError(f"data bundle {uri} holds {shape[0]}x{shape[1]}x{shape[2]} images but "
                        f"this trial asks for {resolution}x{resolution}x{channels}: resolution and "
                        "channels are fixed per search (the driver publishes one size)")


