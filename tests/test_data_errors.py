"""Every bad-input case raises DataError naming the file (and line) and the fix."""
from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from trainables.data import DataError, load_image_set, load_manifest
from trainables.data.preprocess import PreprocessConfig


def class_dirs(root: Path, radiography_dir: Path, per_class: int = 4) -> Path:
    """A small folder-per-class set of distinct real images: root/{COVID,Normal}/*.png."""
    for cls in ("COVID", "Normal"):
        (root / cls).mkdir(parents=True)
        for f in sorted((radiography_dir / cls).glob("*.png"))[:per_class]:
            shutil.copy(f, root / cls / f.name)
    return root


def load(root: Path, tmp_path: Path, split: str = "train", **kw):
    return load_image_set(root, split, resolution=8, cache_dir=tmp_path / "cache",
                          val_fraction=0.25, test_fraction=0.25, **kw)


def test_truncated_image_raises_then_skip_bad_records_it(radiography_dir, tmp_path, capsys):
    root = class_dirs(tmp_path / "d", radiography_dir, per_class=8)
    bad = sorted((root / "COVID").iterdir())[0]
    bad.write_bytes(bad.read_bytes()[:200])  # truncated PNG
    manifest = load_manifest(root, cache_dir=tmp_path / "cache", val_fraction=0.25,
                             test_fraction=0.25)
    split = manifest.frame.set_index("path").loc[str(bad), "split"]
    with pytest.raises(DataError, match=f"{bad}: unreadable or truncated.*skip_bad=True"):
        load(root, tmp_path, split)
    s = load(root, tmp_path, split, skip_bad=True)
    assert s.skipped == (str(bad),) and str(bad) not in s.paths
    n_split = int((manifest.frame["split"] == split).sum())
    assert len(s) == len(s.labels) == s.images.shape[0] == n_split - 1
    assert "skipped 1 unreadable image" in capsys.readouterr().out
    skipped = pd.read_csv(Path(s.manifest_dir) / "skipped.csv")
    assert skipped["path"].tolist() == [str(bad)] and "truncated" in skipped["reason"][0]
    # The cache remembers the skip: without skip_bad it still refuses.
    with pytest.raises(DataError, match="unreadable"):
        load(root, tmp_path, split)


def test_non_image_bytes_raise(radiography_dir, tmp_path):
    root = class_dirs(tmp_path / "d", radiography_dir)
    fake = root / "Normal" / "zz-fake.png"
    fake.write_text("this is not a png")
    manifest = load_manifest(root, cache_dir=tmp_path / "cache", val_fraction=0.25,
                             test_fraction=0.25)
    split = manifest.frame.set_index("path").loc[str(fake), "split"]
    with pytest.raises(DataError, match=f"{fake}: unreadable"):
        load(root, tmp_path, split)


def test_unknown_class_name(radiography_dir, tmp_path):
    root = class_dirs(tmp_path / "d", radiography_dir)
    (root / "COVID").rename(root / "Tuberculosis")
    with pytest.raises(DataError,
                       match=r"unknown class name\(s\) \['Tuberculosis'\].*label_map=") as err:
        load(root, tmp_path)
    # the command line's flags, with values that work as written in a shell
    for flag in ("--classes Normal,Tuberculosis", "--label-map Tuberculosis=ClassName",
                 "--exclude-classes Tuberculosis"):
        assert flag in str(err.value)
    s = load(root, tmp_path, classes=("Tuberculosis", "Normal"))
    assert s.classes == ("Normal", "Tuberculosis")


def test_empty_class_folder(radiography_dir, tmp_path):
    root = class_dirs(tmp_path / "d", radiography_dir)
    (root / "Viral Pneumonia").mkdir()
    with pytest.raises(DataError, match="Viral Pneumonia: empty class folder.*remove the folder"):
        load(root, tmp_path)
    # the folders are read before the exclusion: the message must not offer it as the fix
    with pytest.raises(DataError, match="cannot skip one"):
        load(root, tmp_path, exclude_labels=["Viral Pneumonia"])


def test_class_without_images_in_a_split(radiography_dir, tmp_path):
    root = tmp_path / "d"
    class_dirs(root / "train", radiography_dir)
    (root / "val" / "Normal").mkdir(parents=True)
    shutil.move(sorted((root / "train" / "Normal").iterdir())[0], root / "val" / "Normal" / "x.png")
    with pytest.raises(DataError, match=r"\['COVID-19'\] have no images in the 'val' split"):
        load(root, tmp_path)


def test_npz_with_wrong_keys(tmp_path):
    bad = tmp_path / "pneumoniamnist.npz"
    np.savez(bad, images=np.zeros((2, 28, 28), np.uint8), labels=np.zeros((2, 1), np.uint8))
    with pytest.raises(DataError, match=f"{bad}: npz is missing keys.*train_images"):
        load(bad, tmp_path)


def test_npz_labels_images_mismatch(tmp_path):
    bad = tmp_path / "pneumoniamnist.npz"
    arrays = {f"{s}_images": np.zeros((3, 28, 28), np.uint8) for s in ("train", "val", "test")}
    arrays |= {f"{s}_labels": np.zeros((3, 1), np.uint8) for s in ("train", "val", "test")}
    arrays["val_labels"] = np.zeros((2, 1), np.uint8)
    np.savez(bad, **arrays)
    with pytest.raises(DataError, match="val_images has 3 images but val_labels 2"):
        load(bad, tmp_path)


def test_byte_identical_files_under_two_names(radiography_dir, tmp_path):
    root = class_dirs(tmp_path / "d", radiography_dir)
    original = sorted((root / "Normal").iterdir())[0]
    shutil.copy(original, root / "COVID" / "renamed-copy.png")
    with pytest.raises(DataError, match="byte-identical.*renamed-copy.png"):
        load(root, tmp_path)


def write_covidx(root: Path, radiography_dir: Path, train: list[str], test: list[str]) -> Path:
    images = iter(sorted((radiography_dir / "COVID").glob("*.png")))
    for split, lines in (("train", train), ("test", test)):
        (root / split).mkdir(parents=True, exist_ok=True)
        (root / f"{split}.txt").write_text("".join(line + "\n" for line in lines))
        for line in lines:
            parts = line.split()
            if len(parts) >= 3 and not (root / split / parts[1]).exists():
                shutil.copy(next(images), root / split / parts[1])
    return root


def test_covidx_same_path_twice(radiography_dir, tmp_path):
    train = [f"p{i} a{i}.png {'normal' if i % 2 else 'COVID-19'} cohen" for i in range(8)]
    root = write_covidx(tmp_path / "cx", radiography_dir, train + [train[3]],
                        ["t1 b1.png normal cohen", "t2 b2.png COVID-19 cohen"])
    with pytest.raises(DataError, match="a3.png: listed twice"):
        load(root, tmp_path)


def test_covidx_patient_in_two_source_splits(radiography_dir, tmp_path):
    train = [f"p{i} a{i}.png {'normal' if i % 2 else 'COVID-19'} cohen" for i in range(8)]
    root = write_covidx(tmp_path / "cx", radiography_dir, train,
                        ["p5 b1.png normal cohen", "t2 b2.png COVID-19 cohen"])
    with pytest.raises(DataError, match=r"patient 'p5' is in two splits.*b1.png \(test\)"):
        load(root, tmp_path)


def test_covidx_missing_image_names_line(radiography_dir, tmp_path):
    root = write_covidx(tmp_path / "cx", radiography_dir, ["p1 a1.png normal cohen"],
                        ["t1 b1.png normal cohen"])
    with open(root / "train.txt", "a") as fh:
        fh.write("p2 missing.png COVID-19 cohen\n")
    with pytest.raises(DataError, match=r"train.txt:2: image .*missing.png is missing"):
        load(root, tmp_path)


def test_covidx_malformed_line(radiography_dir, tmp_path):
    root = write_covidx(tmp_path / "cx", radiography_dir, ["p1 a1.png normal cohen", "oops"],
                        ["t1 b1.png normal cohen"])
    with pytest.raises(DataError, match=r"train.txt:2: expected 'patient_id filename class"):
        load(root, tmp_path)


def test_ieee8023_csv_without_its_columns(tmp_path):
    csv_path = tmp_path / "metadata.csv"
    csv_path.write_text("patient,file,diagnosis\n1,a.png,covid\n")
    with pytest.raises(DataError, match=r"metadata.csv: not an ieee8023 metadata.csv.*finding"):
        load(csv_path, tmp_path)


def test_missing_source_and_bad_arguments(radiography_dir, tmp_path):
    with pytest.raises(DataError, match="no-such-dir: no such file or directory"):
        load(tmp_path / "no-such-dir", tmp_path)
    root = class_dirs(tmp_path / "d", radiography_dir)
    with pytest.raises(ValueError, match="split must be one of"):
        load(root, tmp_path, split="holdout")
    with pytest.raises(ValueError, match="duplicates must be one of"):
        load(root, tmp_path, duplicates="ignore")
    with pytest.raises(ValueError, match="unknown PreprocessConfig keys"):
        PreprocessConfig.from_dict({"crop_top": 0.08, "gamma": 2})
    with pytest.raises(ValueError, match="crop_top must be in"):
        PreprocessConfig(crop_top=1.5)


def test_ieee8023_missing_image_names_line(radiography_dir, tmp_path):
    from tests.test_data_formats import real_pngs, write_ieee8023

    records = [{"patientid": str(p), "finding": "No Finding" if p % 2 else "Pneumonia/Viral/COVID-19",
                "view": "PA", "modality": "X-ray", "filename": f"{p}.png"} for p in range(8)]
    csv_path = write_ieee8023(tmp_path / "ieee", real_pngs(radiography_dir, 8), records)
    (tmp_path / "ieee" / "images" / "5.png").unlink()
    with pytest.raises(DataError, match=r"metadata.csv:7: image \S*images/5.png is missing"):
        load(csv_path, tmp_path)


def test_npz_size_variant_loads_with_its_class_names(tmp_path):
    """`pneumoniamnist_64.npz` (medmnist's size=64 download) is a MedMNIST npz like the 28-px
    one: same keys, class names from the package's INFO table, images at their own size."""
    rng = np.random.default_rng(0)
    arrays = {}
    for split, n in (("train", 6), ("val", 4), ("test", 4)):
        arrays[f"{split}_images"] = rng.integers(0, 256, (n, 64, 64), dtype=np.uint8)
        arrays[f"{split}_labels"] = (np.arange(n) % 2).reshape(-1, 1).astype(np.uint8)
    path = tmp_path / "pneumoniamnist_64.npz"
    np.savez(path, **arrays)
    s = load_image_set(path, "val", resolution=64, cache_dir=tmp_path / "cache")
    assert tuple(c.lower() for c in s.classes) == ("normal", "pneumonia")
    assert s.images.shape == (4, 64, 64, 1)
    assert np.array_equal(np.asarray(s.images)[..., 0], arrays["val_images"])
