"""The manifest: every source as one table (path, patient_id, label, source, split, group).

A manifest is built once per (source listing, options, seed) and saved as Parquet with a
JSON sidecar of metadata; later calls load the saved one, so every trial of a search sees
the same split. Class names are mapped to canonical names here.

Leaks are checked here, once per build: byte-identical files (content hashes) and
near-duplicates (`near_duplicates`: the same picture resized or re-encoded). ``group`` is
the unit no split may cut: a patient, merged with the images that are copies or
near-copies of each other. Splits computed here, the selection hold-out and the CV folds
(`selection`) keep a group on one side; copies across a source's own splits follow the
``duplicates`` policy.

Canonical class names (decisions):
- covid, COVID, Covid, COVID-19, covid19, COVIDx "positive" -> "COVID-19";
- normal, NORMAL, ieee8023 "No Finding" -> "Normal";
- pneumonia, PNEUMONIA (Kermany, COVIDx: non-COVID pneumonia) -> "Pneumonia";
- the viral/bacterial distinction is KEPT when a source makes it ("Viral Pneumonia",
  "Bacterial Pneumonia", ieee8023 "Pneumonia/Viral/..." and "Pneumonia/Bacterial/..."),
  because S1 classifies them separately; merge with label_map={"Viral Pneumonia": "Pneumonia"}
  (on the command line: --label-map 'Viral Pneumonia=Pneumonia');
- COVIDx binary "negative" -> "Non-COVID-19" (it includes pneumonia, so not "Normal");
- Lung_Opacity -> "Lung Opacity" (S3 drops it: exclude_labels=["Lung Opacity"], on the command
  line --exclude-classes 'Lung Opacity').

Error messages name the command-line options (--label-map, --classes, --exclude-classes,
--duplicates) and, in brackets, the Python keywords of `load_image_set` they set.
"""
from __future__ import annotations

import hashlib
import io
import json
import logging
import os
import re
import shlex
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from trainables.atomic import write_bytes_atomic as write_atomic  # trainables.data exports it

from . import near_duplicates as nd
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
FRAME_COLUMNS = ["path", "patient_id", "label", "source", "split", "content_hash", "group"]
SPLIT_ORDER = {"train": 0, "val": 1, "test": 2}
NEAR_COLUMNS = ["path", "split", "label", "match_path", "match_split", "match_label",
                "correlation", "action"]


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
        raise DataError(_unknown_message(frame, mapping, unknown))
    frame["label"] = frame["raw_label"].map(mapping)
    if classes:
        extra = sorted(set(frame["label"]) - set(classes))
        if extra:
            raise DataError(f"class(es) {extra} found in the source but not in --classes "
                            f"{_cli_list(classes)} (classes={tuple(classes)}); add them to "
                            f"--classes or leave them out with --exclude-classes "
                            f"{_cli_list(extra)} (exclude_labels=)")
    if frame.empty:
        raise DataError(f"no images left after --exclude-classes {_cli_list(sorted(excluded))} "
                        f"(exclude_labels={sorted(excluded)})")
    return frame


def _cli_list(names) -> str:
    """Class names as one shell word of a comma-separated option: Normal,'Lung Opacity'."""
    return shlex.quote(",".join(names))


def _unknown_message(frame: pd.DataFrame, mapping: dict, unknown: list[str]) -> str:
    """What to do about class names the loader does not know, as the command line's options
    (and the Python keywords they set)."""
    example = frame.loc[frame["raw_label"] == unknown[0], "path"].iloc[0]
    every = sorted({m for m in mapping.values() if m is not None} | set(unknown))
    return (f"unknown class name(s) {unknown} (e.g. {example}); accept them as they are with "
            f"--classes {_cli_list(every)} (every class of the data; classes=), map them with "
            f"--label-map {shlex.quote(unknown[0] + '=ClassName')} (label_map="
            f"{{{unknown[0]!r}: 'ClassName'}}), or leave them out with --exclude-classes "
            f"{_cli_list(unknown)} (exclude_labels=)")


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
                        f"names, e.g. {shown}. Remove the copies, pass --duplicates drop "
                        "(duplicates='drop') to keep one file of each (the earliest split's), "
                        "or --duplicates keep (duplicates='keep') to load them anyway (they are "
                        "then recorded in duplicates.csv beside the manifest, and kept in the "
                        "same split when the split is computed here)")
    return dup


def drop_duplicate_copies(frame: pd.DataFrame, source) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Keep one file of each byte-identical group: the one in the earliest split (train,
    then val, then test: no held-out image is also a training image), then by path.
    Returns (kept frame, dropped rows); copies that disagree on the label are an error."""
    groups = frame[frame["content_hash"].duplicated(keep=False)]
    labels = groups.groupby("content_hash")["label"].nunique()
    if (labels > 1).any():
        bad = groups[groups["content_hash"] == labels[labels > 1].index[0]]
        raise DataError("byte-identical images with different labels: " + "; ".join(
            f"{p} ({l})" for p, l in zip(bad["path"], bad["label"])) + ". Fix the labels or "
            "remove one of the files")
    order = frame["split"].map(SPLIT_ORDER).fillna(-1)
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
    """Read ``source``, map labels, split at patient level, save; or load the saved one.

    ``duplicates`` applies to byte-identical files and to near-duplicates (`near_duplicates`)
    across the source's own splits alike: "drop" the later split's copy, "keep" it, or
    "error"; all are listed in duplicates.csv / near_duplicates.csv beside the manifest."""
    if duplicates not in DUPLICATE_POLICIES:
        raise ValueError(f"duplicates must be one of {DUPLICATE_POLICIES}, got {duplicates!r}")
    source = Path(os.path.abspath(source))
    layout = layout or readers.detect_layout(source)
    raw, notes = _read(source, layout, classes, views)
    options = {"label_map": label_map, "classes": classes, "exclude_labels": sorted(exclude_labels),
               "seed": seed, "val_fraction": val_fraction, "test_fraction": test_fraction,
               "duplicates": duplicates, "views": list(views)}
    # The near-duplicate method is part of the key: a changed method rebuilds the manifest.
    key = _listing_key(raw, layout, source, {**options, "near_duplicates": nd.METHOD})
    cache_root = Path(cache_dir or default_cache_dir())
    directory = cache_root / "manifests" / key[:20]
    if (directory / "manifest.json").is_file():
        meta = json.loads((directory / "manifest.json").read_text())
        frame = pd.read_parquet(directory / "manifest.parquet")
        return Manifest(frame, tuple(meta["classes"]), meta, directory)
    thumbs = _thumbnails(raw, layout, source, cache_root)
    return _build(raw, notes, source, layout, options, directory, thumbs)


def _read(source: Path, layout: str, classes, views) -> tuple[pd.DataFrame, dict]:
    if layout not in readers.READERS:
        raise ValueError(f"unknown layout {layout!r}; use {', '.join(readers.READERS)}")
    return readers.READERS[layout](source, classes, views)


def _build(raw: pd.DataFrame, notes: dict, source: Path, layout: str, options: dict,
           directory: Path, thumbs: tuple[np.ndarray, np.ndarray]) -> Manifest:
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
    pairs = _near_pairs(frame, thumbs)
    frame["group"] = _groups(frame, pairs)
    patients = frame["patient_id"]
    if frame["split"].isna().all():
        # Copies and near-copies must never straddle a split computed here: split by group.
        frame["patient_id"] = frame["group"]
    frame, how = split_frame(frame, seed=options["seed"], val_fraction=options["val_fraction"],
                             test_fraction=options["test_fraction"])
    frame["patient_id"] = patients
    near = _near_table(frame, pairs)
    split_rows = frame
    frame, near = _near_policy(frame, near, layout, options["duplicates"])
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
            "duplicate_content_across_splits": _cross_split(frame, dup),
            "near_duplicates": _near_meta(near, thumbs, frame), **notes}
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
        kept = split_rows[split_rows["content_hash"].isin(dup["content_hash"])]
        action = np.where(kept["path"].isin(frame["path"]), "kept", "dropped as near-duplicate")
        copies = pd.concat([kept.assign(action=action), dropped.assign(action="dropped")])
        write_atomic(directory / "duplicates.csv", copies[["content_hash", "path", "label",
                                                           "split", "action"]].to_csv(index=False).encode())
        meta["duplicate_copies_dropped"] = len(dropped)
    if len(near):
        write_atomic(directory / "near_duplicates.csv",
                     near[NEAR_COLUMNS].to_csv(index=False).encode())
        print(_near_message(near, directory / "near_duplicates.csv"))  # once, like the copies'
    # The JSON is written last: its presence marks a complete manifest.
    write_atomic(directory / "manifest.json", json.dumps(meta, indent=1, default=str).encode())
    return Manifest(frame, classes, meta, directory)


def _thumbnails(raw: pd.DataFrame, layout: str, source: Path,
                cache_root: Path) -> tuple[np.ndarray, np.ndarray]:
    """Near-duplicate thumbnails of every listed row (aligned with ``raw``) and their
    readable mask, cached apart from the manifest: they depend on the files only, so
    another seed, policy or label map does not read the images again."""
    key = _listing_key(raw, layout, source, {"thumbnails": nd.METHOD})
    file = cache_root / "thumbnails" / f"{key[:20]}.npz"
    if file.is_file():
        with np.load(file) as data:
            return data["thumbs"], data["ok"]
    thumbs, ok = nd.thumbnails(raw["path"].tolist())
    buf = io.BytesIO()
    np.savez(buf, thumbs=thumbs, ok=ok)
    file.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(file, buf.getvalue())
    return thumbs, ok


def _near_pairs(frame: pd.DataFrame, thumbs: tuple[np.ndarray, np.ndarray]) -> pd.DataFrame:
    """Near-duplicate pairs of ``frame``'s rows: index labels a < b and their correlation.
    Byte-identical pairs are left to the content-hash check (and its duplicates.csv)."""
    pos = frame.index.to_numpy()  # readers return a RangeIndex: labels are raw positions
    features = nd.standardise(thumbs[0][pos])
    features[~thumbs[1][pos]] = 0.0  # unreadable images (skip_bad reports them) match nothing
    i, j, corr = nd.near_pairs(features)
    hashes = frame["content_hash"].to_numpy()
    other = hashes[i] != hashes[j]
    return pd.DataFrame({"a": frame.index[i[other]], "b": frame.index[j[other]],
                         "correlation": corr[other]})


def _groups(frame: pd.DataFrame, pairs: pd.DataFrame) -> pd.Series:
    """The unit no split may cut: rows joined by patient, by identical content or by a
    near-duplicate pair; named by the patient_id of the group's first row."""
    n = len(frame)
    rows = np.arange(n)
    edges = [(rows, pd.Series(rows).groupby(frame[col].to_numpy()).transform("first").to_numpy())
             for col in ("patient_id", "content_hash")]
    edges.append((frame.index.get_indexer(pairs["a"]), frame.index.get_indexer(pairs["b"])))
    i, j = (np.concatenate(e) for e in zip(*edges))
    comp = nd.clusters(n, i, j)
    _, first = np.unique(comp, return_index=True)
    return pd.Series(frame["patient_id"].to_numpy()[first][comp], index=frame.index)


def _near_table(frame: pd.DataFrame, pairs: pd.DataFrame) -> pd.DataFrame:
    """One row per near-duplicate pair: ``path`` is the later split's image (val/test: the
    evaluation side), ``match_*`` the earlier one; ``row`` is the index label of ``path``."""
    split = frame["split"].map(SPLIT_ORDER)
    swap = (split.loc[pairs["a"]].to_numpy() > split.loc[pairs["b"]].to_numpy())
    later = np.where(swap, pairs["a"], pairs["b"])
    earlier = np.where(swap, pairs["b"], pairs["a"])
    late, early = frame.loc[later], frame.loc[earlier]
    return pd.DataFrame({"row": later, "path": late["path"].to_numpy(),
                         "split": late["split"].to_numpy(), "label": late["label"].to_numpy(),
                         "match_path": early["path"].to_numpy(),
                         "match_split": early["split"].to_numpy(),
                         "match_label": early["label"].to_numpy(),
                         "correlation": pairs["correlation"].round(5).to_numpy(),
                         "action": "same split"})


def _near_policy(frame: pd.DataFrame, near: pd.DataFrame, layout: str,
                 policy: str) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Apply ``duplicates`` to near-duplicates across splits: drop / keep (recorded) /
    error (npz: recorded, as its entries cannot be removed like files)."""
    cross = (near["split"] != near["match_split"]).to_numpy()
    if not cross.any():
        return frame, near
    if policy == "error" and layout != "npz":
        first = near[cross].iloc[0]
        raise DataError(
            f"{near.loc[cross, 'row'].nunique()} image(s) in a later split are near-duplicates "
            f"({nd.SHORT}) of an image in an earlier split, e.g. {first['path']} ({first['split']}) "
            f"~ {first['match_path']} ({first['match_split']}), correlation "
            f"{first['correlation']:.4f}: evaluating on them measures memory. Remove the copies, "
            "pass --duplicates drop (duplicates='drop') to drop the later-split copies (the "
            "training image is kept), or --duplicates keep (duplicates='keep') to load them "
            "anyway (recorded in near_duplicates.csv beside the manifest)")
    near = near.copy()
    if policy == "drop":
        # The leak is an evaluation image that is (nearly) a training image: dropping the
        # later split's copy (val, test) removes it and leaves the training data intact.
        near.loc[cross, "action"] = "dropped"
        return frame.drop(index=near.loc[cross, "row"].unique()), near
    near.loc[cross, "action"] = "kept"
    return frame, near


def _near_meta(near: pd.DataFrame, thumbs: tuple[np.ndarray, np.ndarray],
               frame: pd.DataFrame) -> dict:
    cross = near[near["split"] != near["match_split"]]
    return {"method": nd.METHOD, "pairs": len(near),
            "images_across_splits": cross.groupby("split")["path"].nunique().to_dict(),
            "dropped": int(cross.loc[cross["action"] == "dropped", "path"].nunique()),
            "unreadable_not_checked": int((~thumbs[1]).sum())}


def _near_message(near: pd.DataFrame, where: Path) -> str:
    """One console line: how many near-duplicates, where, and what was done."""
    cross = near[near["split"] != near["match_split"]]
    if len(cross):
        per = ", ".join(f"{s} {n}" for s, n in cross.groupby("split")["path"].nunique().items())
        done = "dropped" if (cross["action"] == "dropped").all() else "kept (duplicates='keep')"
        return (f"near-duplicates: {cross['path'].nunique()} images across splits ({per}; "
                f"{nd.SHORT}) {done}; list: {where}")
    images = pd.concat([near["path"], near["match_path"]]).nunique()
    return (f"near-duplicates: {images} images in {len(near)} pairs ({nd.SHORT}), none across "
            f"splits (each group is kept in one split); list: {where}")


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
                            "class needs images in every split (add images, or leave it out "
                            f"with --exclude-classes {_cli_list(missing)}: exclude_labels=)")


def _digest(frame: pd.DataFrame, classes: tuple[str, ...]) -> str:
    h = hashlib.sha256("\0".join(classes).encode())
    h.update(pd.util.hash_pandas_object(frame.astype(str), index=False).values.tobytes())
    return h.hexdigest()
