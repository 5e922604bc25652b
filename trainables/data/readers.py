"""Readers: one function per on-disk layout, each returning raw manifest rows.

A reader returns ``(frame, notes)``: ``frame`` has the columns ``path``, ``patient_id``
(``None`` where the source has none), ``raw_label``, ``source`` and ``split`` (``None`` where
the source has no split), ``notes`` is a dict of facts for the manifest metadata (what was
left out and why). Readers never map class names and never assign splits; `manifest.py` does.
"""
from __future__ import annotations

import csv
import os
from collections import Counter
from pathlib import Path

import numpy as np
import pandas as pd

from . import dicom
from .errors import DataError

IMAGE_SUFFIXES = frozenset({".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff"}) | dicom.SUFFIXES
# What operating systems leave in folders: never a class, never an image.
JUNK_DIRS = frozenset({"__macosx", "$recycle.bin", "system volume information", "@eadir"})
JUNK_FILES = frozenset({"thumbs.db", "desktop.ini"})
SPLIT_ALIASES = {"train": "train", "training": "train", "val": "val", "valid": "val",
                 "validation": "val", "dev": "val", "test": "test", "testing": "test"}
# Folders holding segmentation masks beside the images (COVID-19 Radiography Database
# v4 ships `<Class>/images` and `<Class>/masks`): masks are not chest X-rays.
MASK_DIRS = frozenset({"mask", "masks", "lung masks", "lung_masks"})
# ieee8023 views that are frontal chest radiographs. "AP Supine" and "AP Erect" are kept:
# they are frontal X-rays (mostly ICU patients, many of them COVID-19) and dropping them
# would bias the COVID-19 class towards milder cases. Lateral ("L") and CT views are dropped.
FRONTAL_VIEWS = ("PA", "AP", "AP Supine", "AP Erect")
COLUMNS = ["path", "patient_id", "raw_label", "source", "split"]
NPZ_KEYS = ("train_images", "train_labels", "val_images", "val_labels",
            "test_images", "test_labels")


def detect_layout(path: Path) -> str:
    """Name the layout of ``path``: "npz", "covidx", "ieee8023" or "folder"."""
    if not path.exists():
        raise DataError(f"{path}: no such file or directory; pass a folder of class folders, "
                        "a COVIDx folder or train.txt, an ieee8023 metadata.csv, a MedMNIST "
                        ".npz, or 'default'")
    if path.is_file():
        suffix = path.suffix.lower()
        if suffix == ".npz":
            return "npz"
        if suffix == ".csv":
            return "ieee8023"
        if suffix == ".txt":
            return "covidx"
        raise DataError(f"{path}: cannot tell the layout of a '{suffix}' file; pass layout=")
    if (path / "metadata.csv").is_file():
        return "ieee8023"
    if _covidx_txts(path):
        return "covidx"
    return "folder"


def _split_of_name(name: str) -> str | None:
    return SPLIT_ALIASES.get(name.strip().lower())


def _frame(rows: list[dict]) -> pd.DataFrame:
    return pd.DataFrame(rows, columns=COLUMNS)


# ----------------------------------------------------------------------------- folders
def read_folder(root: Path) -> tuple[pd.DataFrame, dict]:
    """Folder per class, optionally under split folders, images at any depth below a class.

    ``root/{train,val,test}/<Class>/**`` or ``root/<Class>/**``; a chain of single folders
    (``Covid19-dataset/``) is descended first. Non-image files are counted, not read.
    """
    root = _descend_single_dirs(root)
    subdirs = _subdirs(root)
    split_dirs = [p for p in subdirs if _split_of_name(p.name)]
    if split_dirs and len(split_dirs) != len(subdirs):
        others = [p.name for p in subdirs if p not in split_dirs]
        raise DataError(f"{root}: mixes split folders ({[p.name for p in split_dirs]}) with "
                        f"other folders ({others}); use either split/class/ or class/ folders")
    groups = [(p, _split_of_name(p.name)) for p in split_dirs] or [(root, None)]
    rows: list[dict] = []
    ignored: Counter = Counter()
    for base, split in groups:
        class_dirs = _subdirs(base)
        if not class_dirs:
            raise DataError(f"{base}: no class folders; expected {base}/<ClassName>/<images>")
        for class_dir in class_dirs:
            files = _image_files(class_dir, ignored)
            if not files:
                raise DataError(f"{class_dir}: empty class folder (no PNG/JPEG/DICOM images); "
                                "remove the folder or put its images in it (the folders are "
                                "read before --exclude-classes applies, so it cannot skip one)")
            rows += [{"path": str(f), "patient_id": None, "raw_label": class_dir.name,
                      "source": root.name, "split": split} for f in files]
    dicom.require([Path(r["path"]) for r in rows if Path(r["path"]).suffix.lower()
                   in dicom.SUFFIXES])
    notes = {"ignored_non_image_files": dict(ignored)} if ignored else {}
    return _frame(rows), notes


def _is_junk(name: str) -> bool:
    return name.startswith(".") or name.lower() in JUNK_DIRS | JUNK_FILES


def _subdirs(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_dir() and not _is_junk(p.name))


def _descend_single_dirs(root: Path) -> Path:
    while True:
        entries = [p for p in root.iterdir() if not _is_junk(p.name)]
        dirs = [p for p in entries if p.is_dir()]
        has_images = any(p.suffix.lower() in IMAGE_SUFFIXES for p in entries if p.is_file())
        if len(dirs) == 1 and not has_images and _split_of_name(dirs[0].name) is None:
            # Only descend when the single folder is a wrapper, not the only class folder.
            inner = _subdirs(dirs[0])
            if inner:
                root = dirs[0]
                continue
        return root


def _image_files(class_dir: Path, ignored: Counter) -> list[Path]:
    found = []
    for dirpath, dirnames, filenames in os.walk(class_dir):
        dirnames[:] = sorted(d for d in dirnames
                             if not _is_junk(d) and d.lower() not in MASK_DIRS)
        for name in sorted(filenames):
            if _is_junk(name):
                continue
            suffix = Path(name).suffix.lower()
            if suffix in IMAGE_SUFFIXES:
                found.append(Path(dirpath) / name)
            else:
                ignored[suffix or name] += 1
    return found


# ----------------------------------------------------------------------------- COVIDx
def _covidx_txts(folder: Path) -> dict[str, Path]:
    """{split: txt} for `train*.txt`/`val*.txt`/`test*.txt` in ``folder``."""
    found: dict[str, Path] = {}
    for txt in sorted(folder.glob("*.txt")):
        for prefix in ("train", "val", "test"):
            if txt.stem.lower().startswith(prefix):
                if prefix in found:
                    raise DataError(f"{folder}: two COVIDx {prefix} lists ({found[prefix].name}, "
                                    f"{txt.name}); pass the one you mean as the source")
                found[prefix] = txt
    return found


def read_covidx(path: Path) -> tuple[pd.DataFrame, dict]:
    """COVIDx `train.txt`/`val.txt`/`test.txt`: ``patient_id file class [data_source]`` lines.

    Given one txt, its siblings of the same naming (``test_X.txt`` beside ``train_X.txt``)
    are read too, so that patients can be checked across splits. Images live in the
    ``train/``, ``val/``, ``test/`` folders beside the txt files.
    """
    if path.is_file():
        stem = path.stem.lower()
        prefix = next((p for p in ("train", "val", "test") if stem.startswith(p)), None)
        if prefix is None:
            raise DataError(f"{path}: a COVIDx list must be named train*.txt, val*.txt or "
                            "test*.txt")
        rest = stem[len(prefix):]
        txts = {s: t for s, t in _covidx_txts(path.parent).items()
                if t.stem.lower()[len(s):] == rest}
    else:
        txts = _covidx_txts(path)
    if not txts:
        raise DataError(f"{path}: no COVIDx train.txt/test.txt found")
    rows: list[dict] = []
    for split, txt in txts.items():
        image_dir = txt.parent / split
        with open(txt, encoding="utf-8") as fh:
            for lineno, line in enumerate(fh, 1):
                if not line.strip():
                    continue
                tokens = line.split()
                if len(tokens) < 3:
                    raise DataError(f"{txt}:{lineno}: expected 'patient_id filename class "
                                    f"data_source', got {line.strip()!r}")
                if len(tokens) == 3:
                    pid, name, label, source = *tokens, "covidx"
                else:
                    pid, label, source = tokens[0], tokens[-2], tokens[-1]
                    name = " ".join(tokens[1:-2])
                file = image_dir / name
                if not file.is_file():
                    raise DataError(f"{txt}:{lineno}: image {file} is missing; COVIDx images "
                                    f"must be in {image_dir}/ beside {txt.name}")
                rows.append({"path": str(file), "patient_id": pid, "raw_label": label,
                             "source": source, "split": split})
    return _frame(rows), {"covidx_lists": {s: str(t) for s, t in txts.items()}}


# ----------------------------------------------------------------------------- ieee8023
def read_ieee8023(path: Path, views: tuple[str, ...] = FRONTAL_VIEWS) -> tuple[pd.DataFrame, dict]:
    """ieee8023 covid-chestxray-dataset ``metadata.csv``; keeps X-ray rows in ``views``.

    Images are ``<csv dir>/<folder>/<filename>``. Left-out rows (other views, CT) are
    counted in the notes, never dropped silently. The source has no split.
    """
    csv_path = path / "metadata.csv" if path.is_dir() else path
    with open(csv_path, newline="", encoding="utf-8") as fh:
        reader = csv.DictReader(fh)
        needed = {"finding", "filename", "patientid", "view"}
        missing = needed - set(reader.fieldnames or ())
        if missing:
            raise DataError(f"{csv_path}: not an ieee8023 metadata.csv, columns {sorted(missing)} "
                            f"are missing (found {reader.fieldnames})")
        rows: list[dict] = []
        left_out: Counter = Counter()
        for lineno, rec in enumerate(reader, 2):
            modality = (rec.get("modality") or "X-ray").strip()
            view = (rec["view"] or "").strip()
            if modality.lower() != "x-ray":
                left_out[f"modality={modality}"] += 1
                continue
            if view not in views:
                left_out[f"view={view}"] += 1
                continue
            folder = (rec.get("folder") or "images").strip()
            file = csv_path.parent / folder / rec["filename"].strip()
            if not file.is_file():
                raise DataError(f"{csv_path}:{lineno}: image {file} is missing (filename "
                                f"{rec['filename']!r}, folder {rec.get('folder')!r})")
            rows.append({"path": str(file), "patient_id": rec["patientid"].strip(),
                         "raw_label": rec["finding"].strip(), "source": "ieee8023",
                         "split": None})
    return _frame(rows), {"ieee8023_left_out": dict(left_out), "ieee8023_views": list(views)}


# ----------------------------------------------------------------------------- MedMNIST npz
def read_npz(path: Path, class_names: dict[int, str] | None = None) -> tuple[pd.DataFrame, dict]:
    """MedMNIST npz (``train_images``, ``train_labels``, ``val_*``, ``test_*``).

    Rows point at ``file.npz#split/index``. Class names come from ``class_names`` or from
    the ``medmnist`` package's INFO for the file's flag (``pneumoniamnist_64`` -> pneumoniamnist).
    """
    with np.load(path) as data:
        missing = [k for k in NPZ_KEYS if k not in data.files]
        if missing:
            raise DataError(f"{path}: npz is missing keys {missing} (found {data.files}); a "
                            "MedMNIST npz has train_/val_/test_ images and labels")
        labels = {s: np.asarray(data[f"{s}_labels"]).reshape(-1) for s in ("train", "val", "test")}
        for s in labels:
            n_img = data[f"{s}_images"].shape[0]
            if n_img != labels[s].shape[0]:
                raise DataError(f"{path}: {s}_images has {n_img} images but {s}_labels "
                                f"{labels[s].shape[0]} labels")
    names = class_names or medmnist_class_names(path)
    rows = []
    for split, lab in labels.items():
        for i, y in enumerate(lab.tolist()):
            if int(y) not in names:
                raise DataError(f"{path}: {split}_labels[{i}] = {y} has no class name "
                                f"(known: {names}); name every label with --classes "
                                "NAME0,NAME1,... (classes=, label i -> the i-th name)")
            rows.append({"path": f"{path}#{split}/{i}", "patient_id": None,
                         "raw_label": names[int(y)], "source": path.stem, "split": split})
    return _frame(rows), {"npz_class_names": {str(k): v for k, v in names.items()}}


def medmnist_class_names(path: Path) -> dict[int, str]:
    """Class names of a MedMNIST npz from the `medmnist` package's INFO table."""
    flag = path.stem.lower().split("_")[0]
    try:
        from medmnist import INFO  # local import: heavy, and only needed for npz sources
    except ImportError as exc:
        raise DataError(f"{path}: cannot name its classes without the `medmnist` package; "
                        "install it or name the labels with --classes NAME0,NAME1,... "
                        "(classes=, label i -> the i-th name)") from exc
    if flag not in INFO:
        raise DataError(f"{path}: '{flag}' is not a MedMNIST data set name; name its labels "
                        "with --classes NAME0,NAME1,... (classes=, label i -> the i-th name)")
    return {int(k): v for k, v in INFO[flag]["label"].items()}


# Layout name -> reader(source, classes, views) -> (rows, notes).  `detect_layout` names one
# of these; `classes` names the integer labels of an .npz, `views` the ieee8023 views kept.
READERS = {
    "folder": lambda source, classes, views: read_folder(source),
    "covidx": lambda source, classes, views: read_covidx(source),
    "ieee8023": lambda source, classes, views: read_ieee8023(source, views=tuple(views)),
    "npz": lambda source, classes, views: read_npz(
        source, class_names=dict(enumerate(classes)) if classes else None),
}
