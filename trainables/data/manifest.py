"""The manifest: every source as one table (path, patient_id, label, source, split).

A manifest is built once per (source listing, options, seed) and saved as Parquet with a
JSON sidecar of metadata; later calls load the saved one, so every trial of a search sees
the same split. Class names are mapped to canonical names here.

Canonical class names (decisions):
- covid, COVID, Covid, COVID-19, covid19, COVIDx "positive" -> "COVID-19";
- normal, NORMAL, ieee8023 "No Finding" -> "Normal";
- pneumonia, PNEUMONIA (Kermany, COVIDx: non-COVID pneumonia) -> "Pneumonia";
- the viral/bacterial distinction is KEPT when a source makes it ("Viral Pneumonia",
  "Bacterial Pneumonia", ieee8023 "Pneumonia/Viral/..." and "Pneumonia/Bacterial/..."),
  because S1 classifies them separately; merge with label_map={"Viral Pneumonia": "Pneumonia"};
- COVIDx binary "negative" -> "Non-COVID-19" (it includes pneumonia, so not "Normal");
- Lung_Opacity -> "Lung Opacity" (S3 drops it: exclude_labels=["Lung Opacity"]).
"""
from __future__ import annotations

import hashlib
import io
import json
import logging
import os
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from trainables.atomic import write_bytes_atomic as write_atomic  # trainables.data exports it

from . import readers
from .errors import DataError
from .splits import split_frame

log = logging.getLogger(__name__)

CANONICAL = {
    "covid": "COVID-19", "covid 19": "COVID-19", "covid19": "COVID-19", "positive": "COVID-19",
    "sars cov 2": "COVID-19",
    "normal": "Normal", "no finding": "Normal",
    "negative": "Non-COVID-19",
    "pneumonia": "Pneumonia",
    "viral pneumonia": "Viral Pneumonia", "pneumonia viral": "Viral Pneumonia",
    "bacterial pneumonia": "Bacterial Pneumonia", "pneumonia bacterial": "Bacterial Pneumonia",
    "fungal pneumonia": "Fungal Pneumonia", "pneumonia fungal": "Fungal Pneumonia",
    "lung opacity": "Lung Opacity",
}
DUPLICATE_POLICIES = ("error", "keep", "drop")
FRAME_COLUMNS = ["path", "patient_id", "label", "source", "split", "content_hash"]


def default_cache_dir() -> Path:
    """``$CXR_CACHE_DIR`` or ``~/.cache/cxr-gan-search``."""
    return Path(os.environ.get("CXR_CACHE_DIR", Path.home() / ".cache" / "cxr-gan-search"))


def _norm(name: str) -> str:
    return re.sub(r"\s+", " ", re.sub(r"[_\-]", " ", name)).strip().lower()


def canonical_label(raw: str) -> str | None:
    """Canonical class name of ``raw`` (folder name, COVIDx class, ieee8023 finding) or None."""
    if "/" in raw:  # ieee8023 hierarchy, e.g. "Pneumonia/Viral/COVID-19"
        parts = [_norm(p) for p in raw.split("/")]
        if CANONICAL.get(parts[-1]) == "COVID-19":
            return "COVID-19"
        for kind in ("viral", "bacterial", "fungal"):
            if kind in parts:
                return CANONICAL[f"{kind} pneumonia"]
        return None
    return CANONICAL.get(_norm(raw))


def map_labels(frame: pd.DataFrame, *, label_map: dict[str, str] | None,
               classes: tuple[str, ...] | None, exclude_labels: tuple[str, ...]) -> pd.DataFrame:
    """Drop excluded labels, map the rest to canonical names; raise on an unknown name."""
    label_map = dict(label_map or {})
    excluded = set(exclude_labels)

    def one(raw: str) -> str | None:
        if raw in label_map:
            return label_map[raw]
        if classes and raw in classes:
            return raw
        canon = canonical_label(raw)
        return label_map.get(canon, canon) if canon is not None else None

    mapping = {raw: one(raw) for raw in frame["raw_label"].unique()}
    keep = ~frame["raw_label"].isin(excluded) & ~frame["raw_label"].map(mapping).isin(excluded)
    frame = frame[keep].copy()
    unknown = sorted({r for r in frame["raw_label"] if mapping[r] is None})
    if unknown:
        example = frame.loc[frame["raw_label"] == unknown[0], "path"].iloc[0]
        raise DataError(f"unknown class name(s) {unknown} (e.g. {example}); map them with "
                        f"label_map={{{unknown[0]!r}: 'ClassName'}}, accept them as-is with "
                        f"classes=, or drop them with exclude_labels=")
    frame["label"] = frame["raw_label"].map(mapping)
    if classes:
        extra = sorted(set(frame["label"]) - set(classes))
        if extra:
            raise DataError(f"class(es) {extra} found in the source but not in classes={classes}; "
                            "add them or exclude them with exclude_labels=")
    if frame.empty:
        raise DataError("no images left after exclude_labels=" + repr(sorted(excluded)))
    return frame


@dataclass(frozen=True)
class Manifest:
    """A saved manifest: the table, its class tuple, metadata and where it lives."""

    frame: pd.DataFrame
    classes: tuple[str, ...]
    meta: dict
    directory: Path

    @property
    def digest(self) -> str:
        """Hash of the manifest content (rows, splits and file contents)."""
        return self.meta["digest"]


def _file_md5(path: str) -> str:
    h = hashlib.md5(usedforsecurity=False)
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _content_hashes(frame: pd.DataFrame, layout: str) -> list[str]:
    if layout != "npz":
        return [_file_md5(p) for p in frame["path"]]
    npz_path = frame["path"].iloc[0].rpartition("#")[0]
    hashes = []
    with np.load(npz_path) as data:
        for split in ("train", "val", "test"):
            images = data[f"{split}_images"]
            hashes += [hashlib.md5(a.tobytes(), usedforsecurity=False).hexdigest() for a in images]
    return hashes


def check_duplicates(frame: pd.DataFrame, layout: str, policy: str) -> pd.DataFrame:
    """Same path twice always raises; byte-identical files under two names follow ``policy``.

    Returns the table of duplicate-content rows (empty when none).
    """
    twice = frame["path"][frame["path"].duplicated()]
    if len(twice):
        raise DataError(f"{twice.iloc[0]}: listed twice in the source ({len(twice)} repeated "
                        "path(s) in all); remove the repeated lines")
    dup = frame[frame["content_hash"].duplicated(keep=False)].sort_values(["content_hash", "path"])
    if len(dup) and layout != "npz" and policy == "error":
        groups = dup.groupby("content_hash")["path"].apply(list)
        shown = "; ".join(" == ".join(g) for g in groups.iloc[:3])
        raise DataError(f"{len(groups)} group(s) of byte-identical image files under different "
                        f"names, e.g. {shown}. Remove the copies, pass duplicates='drop' to keep "
                        "one file of each (the earliest split's), or duplicates='keep' to "
                        "load them anyway (they are then recorded in duplicates.csv beside the "
                        "manifest, and kept in the same split when the split is computed here)")
    return dup


def drop_duplicate_copies(frame: pd.DataFrame, source) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Keep one file of each byte-identical group: the one in the earliest split (train,
    then val, then test: no held-out image is also a training image), then by path.
    Returns (kept frame, dropped rows); copies that disagree on the label are an error."""
    groups = frame[frame["content_hash"].duplicated(keep=False)]
    labels = groups.groupby("content_hash")["label"].nunique()
    if (labels > 1).any():
        bad = groups[groups["content_hash"] == labels[labels > 1].index[0]]
        raise DataError(f"byte-identical images with different labels: " + "; ".join(
            f"{p} ({l})" for p, l in zip(bad["path"], bad["label"])) + ". Fix the labels or "
            "remove one of the files")
    order = frame["split"].map({"train": 0, "val": 1, "test": 2}).fillna(-1)
    ranked = frame.assign(_order=order).sort_values(["_order", "path"])
    drop = ranked.index[ranked["content_hash"].duplicated(keep="first")]
    dropped = frame.loc[drop]
    msg = (f"{source}: dropped {len(dropped)} byte-identical copies ({len(groups)} files in "
           f"{groups['content_hash'].nunique()} groups); kept one file each, listed in "
           "duplicates.csv beside the manifest (--duplicates keep loads them all)")
    print(msg)  # once: a log.warning beside it repeated it on stderr
    return frame.drop(index=drop), dropped


def _listing_key(frame: pd.DataFrame, layout: str, source: Path, options: dict) -> str:
    h = hashlib.sha256(json.dumps({"layout": layout, "source": str(source.resolve()),
                                   "options": options}, sort_keys=True, default=str).encode())
    files = {p.rpartition("#")[0] if layout == "npz" else p for p in frame["path"]}
    for p in sorted(files):
        st = os.stat(p)
        h.update(f"{p}\0{st.st_size}\0{st.st_mtime_ns}\0".encode())
    h.update(pd.util.hash_pandas_object(frame.astype(str), index=False).values.tobytes())
    return h.hexdigest()


def load_manifest(source: str | Path, *, layout: str | None = None,
                  label_map: dict[str, str] | None = None,
                  classes: tuple[str, ...] | None = None, exclude_labels=(), seed: int = 0,
                  val_fraction: float = 0.15, test_fraction: float = 0.15,
                  duplicates: str = "error", views: tuple[str, ...] = readers.FRONTAL_VIEWS,
                  cache_dir: str | Path | None = None) -> Manifest:
    """Read ``source``, map labels, split at patient level, save; or load the saved one."""
    if duplicates not in DUPLICATE_POLICIES:
        raise ValueError(f"duplicates must be one of {DUPLICATE_POLICIES}, got {duplicates!r}")
    source = Path(os.path.abspath(source))
    layout = layout or readers.detect_layout(source)
    raw, notes = _read(source, layout, classes, views)
    options = {"label_map": label_map, "classes": classes, "exclude_labels": sorted(exclude_labels),
               "seed": seed, "val_fraction": val_fraction, "test_fraction": test_fraction,
               "duplicates": duplicates, "views": list(views)}
    key = _listing_key(raw, layout, source, options)
    directory = Path(cache_dir or default_cache_dir()) / "manifests" / key[:20]
    if (directory / "manifest.json").is_file():
        meta = json.loads((directory / "manifest.json").read_text())
        frame = pd.read_parquet(directory / "manifest.parquet")
        return Manifest(frame, tuple(meta["classes"]), meta, directory)
    return _build(raw, notes, source, layout, options, directory)


def _read(source: Path, layout: str, classes, views) -> tuple[pd.DataFrame, dict]:
    if layout not in readers.READERS:
        raise ValueError(f"unknown layout {layout!r}; use {', '.join(readers.READERS)}")
    return readers.READERS[layout](source, classes, views)


def _build(raw: pd.DataFrame, notes: dict, source: Path, layout: str, options: dict,
           directory: Path) -> Manifest:
    frame = map_labels(raw, label_map=options["label_map"], classes=options["classes"],
                       exclude_labels=tuple(options["exclude_labels"]))
    if layout == "npz":
        frame["content_hash"] = _npz_hashes(frame, raw, layout)
    else:
        frame["content_hash"] = _content_hashes(frame, layout)
    dup = check_duplicates(frame, layout, options["duplicates"])
    dropped = pd.DataFrame(columns=frame.columns)
    if len(dup) and options["duplicates"] == "drop":
        frame, dropped = drop_duplicate_copies(frame, source)
    has_ids = frame["patient_id"].notna().all()
    if not has_ids:
        frame["patient_id"] = frame["path"]  # each image is its own patient
    groups = frame["patient_id"]
    if len(dup) and frame["split"].isna().all():
        # Byte-identical copies must never straddle a split computed here: group them.
        first = frame.groupby("content_hash")["patient_id"].transform("first")
        frame["patient_id"] = first
    frame, how = split_frame(frame, seed=options["seed"], val_fraction=options["val_fraction"],
                             test_fraction=options["test_fraction"])
    frame["patient_id"] = groups
    classes = tuple(sorted(frame["label"].unique()))
    _check_classes_per_split(frame, classes)
    frame = frame[FRAME_COLUMNS].reset_index(drop=True)
    meta = {"source": str(source.resolve()), "layout": layout, "options": options,
            "classes": list(classes), "split_method": how,
            "patient_ids": "from the source" if has_ids else
            "none in the source: each image is its own patient",
            "counts": {s: frame[frame["split"] == s]["label"].value_counts().sort_index().to_dict()
                       for s in sorted(frame["split"].unique())},
            "duplicate_content_rows": len(dup),
            "duplicate_content_across_splits": _cross_split(frame, dup), **notes}
    if len(dup):
        log.warning("%s: %d images are byte-identical copies of another image, %d copy groups "
                    "span two splits (duplicates=%r); listed in %s", source, len(dup),
                    meta["duplicate_content_across_splits"], options["duplicates"],
                    directory / "duplicates.csv")
    meta["digest"] = _digest(frame, classes)
    directory.mkdir(parents=True, exist_ok=True)
    buf = io.BytesIO()
    frame.to_parquet(buf, index=False)
    write_atomic(directory / "manifest.parquet", buf.getvalue())
    if len(dup):
        copies = pd.concat([frame[frame["content_hash"].isin(dup["content_hash"])].assign(action="kept"),
                            dropped.assign(action="dropped")])
        write_atomic(directory / "duplicates.csv", copies[["content_hash", "path", "label",
                                                           "split", "action"]].to_csv(index=False).encode())
        meta["duplicate_copies_dropped"] = len(dropped)
    # The JSON is written last: its presence marks a complete manifest.
    write_atomic(directory / "manifest.json", json.dumps(meta, indent=1, default=str).encode())
    return Manifest(frame, classes, meta, directory)


def _cross_split(frame: pd.DataFrame, dup: pd.DataFrame) -> int:
    """Number of byte-identical groups whose copies sit in different splits (leakage)."""
    copies = frame[frame["content_hash"].isin(dup["content_hash"])]
    return int((copies.groupby("content_hash")["split"].nunique() > 1).sum())


def _npz_hashes(frame: pd.DataFrame, raw: pd.DataFrame, layout: str) -> list[str]:
    # Hash all rows of the npz once, then keep those that survived exclude_labels.
    all_hashes = pd.Series(_content_hashes(raw, layout), index=raw.index)
    return all_hashes.loc[frame.index].tolist()


def _check_classes_per_split(frame: pd.DataFrame, classes: tuple[str, ...]) -> None:
    for split, rows in frame.groupby("split"):
        missing = sorted(set(classes) - set(rows["label"]))
        if missing:
            raise DataError(f"class(es) {missing} have no images in the {split!r} split; a "
                            "class needs images in every split (add images, or exclude it)")


def _digest(frame: pd.DataFrame, classes: tuple[str, ...]) -> str:
    h = hashlib.sha256("\0".join(classes).encode())
    h.update(pd.util.hash_pandas_object(frame.astype(str), index=False).values.tobytes())
    return h.hexdigest()
