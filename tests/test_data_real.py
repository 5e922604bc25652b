"""The data layer on the real data sets in ../shared/data (counts, cache, splits)."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

import trainables.data.cache as cache_mod
from trainables.data import (DataError, PreprocessConfig, clear_split_access_log,
                             load_image_set, read_split_access_file, split_access_log)


@pytest.fixture(scope="module")
def cache(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("cxr-cache")


def test_covid3_counts_and_types(covid3_dir, cache):
    train = load_image_set(covid3_dir, "train", resolution=32, cache_dir=cache,
                           duplicates="keep")
    val = load_image_set(covid3_dir, "val", resolution=32, cache_dir=cache, duplicates="keep")
    assert train.classes == val.classes == ("COVID-19", "Normal", "Viral Pneumonia")
    assert train.class_counts() == {"COVID-19": 111, "Normal": 70, "Viral Pneumonia": 70}
    assert val.class_counts() == {"COVID-19": 26, "Normal": 20, "Viral Pneumonia": 20}
    assert isinstance(train.images, np.memmap) and not train.images.flags.writeable
    assert train.images.dtype == np.uint8 and train.images.shape == (251, 32, 32, 1)
    assert train.labels.dtype == np.int64 and len(train.paths) == 251
    assert all(Path(p).is_file() for p in train.paths)
    # Labels follow the folder each file came from.
    for path, label in zip(train.paths, train.labels):
        folder = Path(path).parent.name
        assert train.classes[label] == {"Covid": "COVID-19"}.get(folder, folder)
    assert train.images.std() > 10  # real pictures, not a blank array
    with pytest.raises(DataError, match="no 'test' split"):
        load_image_set(covid3_dir, "test", resolution=32, cache_dir=cache, duplicates="keep")


def test_covid3_duplicates_are_found_and_recorded(covid3_dir, cache):
    # The published set has byte-identical copies, six of them across train and val.
    with pytest.raises(DataError, match="byte-identical.*duplicates='keep'"):
        load_image_set(covid3_dir, "train", resolution=32, cache_dir=cache)
    s = load_image_set(covid3_dir, "train", resolution=32, cache_dir=cache, duplicates="keep")
    meta = json.loads((Path(s.manifest_dir) / "manifest.json").read_text())
    assert meta["duplicate_content_across_splits"] == 6
    dups = pd.read_csv(Path(s.manifest_dir) / "duplicates.csv")
    assert len(dups) == 20 and dups["content_hash"].nunique() == 10


def test_covid3_dropping_copies_keeps_the_training_one(covid3_dir, cache, capsys):
    sets = {s: load_image_set(covid3_dir, s, resolution=32, cache_dir=cache, duplicates="drop")
            for s in ("train", "val")}
    out = capsys.readouterr().out
    assert "dropped 10 byte-identical copies" in out
    # ... and one val image that is a re-encoded copy of a training image (near-duplicate:
    # val/Covid/0112.jpg ~ train/Covid/090.jpeg, correlation 0.994 at 32 px)
    assert "near-duplicates: 1 images across splits (val 1;" in out
    assert len(sets["train"]) + len(sets["val"]) == 317 - 10 - 1
    dups = pd.read_csv(Path(sets["train"].manifest_dir) / "duplicates.csv")
    assert (dups["action"] == "dropped").sum() == 10 and (dups["action"] == "kept").sum() == 9
    assert (dups["action"] == "dropped as near-duplicate").sum() == 1  # the val copy above
    # each of the 6 train/val groups lost its val copy: no test image is also trained on
    cross = dups.groupby("content_hash")["split"].nunique() > 1
    lost = dups[dups["content_hash"].isin(cross[cross].index) & (dups["action"] == "dropped")]
    assert len(lost) == 6 and set(lost["split"]) == {"val"}
    assert not set(lost["path"]) & set(sets["val"].paths)


def test_radiography_seeded_patient_level_split(radiography_dir, cache):
    sets = {s: load_image_set(radiography_dir, s, resolution=16, cache_dir=cache,
                              duplicates="keep") for s in ("train", "val", "test")}
    total = {c: sum(s.class_counts()[c] for s in sets.values()) for c in ("COVID-19", "Normal")}
    assert total == {"COVID-19": 1500, "Normal": 1500}
    assert sets["train"].classes == sets["test"].classes == ("COVID-19", "Normal")
    paths = [set(s.paths) for s in sets.values()]
    assert not (paths[0] & paths[1] or paths[0] & paths[2] or paths[1] & paths[2])
    for s in sets.values():  # stratified 70/15/15, within the rounding of grouped copies
        frac = len(s) / 3000
        assert abs(frac - {"train": .7, "val": .15, "test": .15}[s.split]) < 0.01
    manifest_dir = Path(sets["train"].manifest_dir)
    frame = pd.read_parquet(manifest_dir / "manifest.parquet")
    assert set(frame.columns) >= {"path", "patient_id", "label", "source", "split"}
    # Byte-identical copies never straddle splits computed here.
    assert (frame.groupby("content_hash")["split"].nunique() == 1).all()
    meta = json.loads((manifest_dir / "manifest.json").read_text())
    assert "each image is its own patient" in meta["patient_ids"]
    # Same seed -> the saved split is reused; another seed -> another split.
    again = load_image_set(radiography_dir, "test", resolution=16, cache_dir=cache,
                           duplicates="keep")
    assert again.paths == sets["test"].paths
    other = load_image_set(radiography_dir, "test", resolution=16, cache_dir=cache,
                           duplicates="keep", seed=1)
    assert set(other.paths) != set(sets["test"].paths)


def test_pneumoniamnist_npz_counts_and_pixels(pneumoniamnist_npz, cache):
    counts = {"train": (388, 3494), "val": (135, 389), "test": (234, 390)}
    with np.load(pneumoniamnist_npz) as data:
        for split, (normal, pneu) in counts.items():
            s = load_image_set(pneumoniamnist_npz, split, resolution=28, cache_dir=cache)
            assert s.classes == ("Normal", "Pneumonia")
            assert s.class_counts() == {"Normal": normal, "Pneumonia": pneu}
            assert s.paths[17] == f"{pneumoniamnist_npz}#{split}/17"
            # At the native size the cache holds the npz pixels unchanged, labels too.
            np.testing.assert_array_equal(s.images[..., 0], data[f"{split}_images"])
            np.testing.assert_array_equal(s.labels, data[f"{split}_labels"].ravel())


def test_fingerprint_channels_and_preprocess(pneumoniamnist_npz, cache):
    base = load_image_set(pneumoniamnist_npz, "val", resolution=28, cache_dir=cache)
    rgb = load_image_set(pneumoniamnist_npz, "val", resolution=32, channels=3, cache_dir=cache)
    cropped = load_image_set(pneumoniamnist_npz, "val", resolution=28, cache_dir=cache,
                             preprocess=PreprocessConfig(crop_top=0.08))
    assert rgb.images.shape == (524, 32, 32, 3)
    assert np.array_equal(rgb.images[..., 0], rgb.images[..., 2])  # grey replicated
    assert len({base.fingerprint, rgb.fingerprint, cropped.fingerprint}) == 3
    assert not np.array_equal(base.images, cropped.images)
    same = load_image_set(pneumoniamnist_npz, "val", resolution=28, cache_dir=cache)
    assert same.fingerprint == base.fingerprint


def test_cache_is_reused_without_decoding(covid3_dir, cache, monkeypatch):
    first = load_image_set(covid3_dir, "val", resolution=24, cache_dir=cache, duplicates="keep")

    def no_decoding(*args, **kwargs):
        raise AssertionError("the cache should have been memory-mapped, not rebuilt")

    monkeypatch.setattr(cache_mod, "decode_rows", no_decoding)
    second = load_image_set(covid3_dir, "val", resolution=24, cache_dir=cache, duplicates="keep")
    assert second.fingerprint == first.fingerprint
    np.testing.assert_array_equal(second.images, first.images)
    assert Path(second.images.filename).parent == cache / "images"


def test_split_access_log_records_every_call(pneumoniamnist_npz, cache, tmp_path, monkeypatch):
    monkeypatch.setenv("CXR_SPLIT_ACCESS_LOG", str(tmp_path / "access.log"))
    clear_split_access_log()
    val = load_image_set(pneumoniamnist_npz, "val", resolution=28, cache_dir=cache)
    train = load_image_set(pneumoniamnist_npz, "train", resolution=28, cache_dir=cache)
    assert split_access_log() == [(val.fingerprint, "val"), (train.fingerprint, "train")]
    assert all(split != "test" for _, split in split_access_log())
    assert read_split_access_file() == split_access_log()  # the cross-process record
