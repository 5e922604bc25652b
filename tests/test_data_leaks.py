"""No leaks (issue 21, item 4): near-duplicates across splits, patient-grouped selection."""
from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from test_data_formats import covidx_lines, real_pngs, write_covidx, write_ieee8023
from trainables.data import DataError, load_image_set, load_manifest
from trainables.data import near_duplicates as nd
from trainables.data.selection import (frame_groups, holdout_mask, load_selection_sets,
                                       set_groups, stratified_folds)


# ----------------------------------------------------------------------------- the maths
def test_correlation_analytic_cases():
    rng = np.random.default_rng(0)
    a = rng.integers(0, 256, (32, 32)).astype(float)
    assert nd.correlation(a, a) == pytest.approx(1.0)
    assert nd.correlation(a, 255 - a) == pytest.approx(-1.0)  # the negative: not a copy
    assert nd.correlation(a, 0.5 * a + 30) == pytest.approx(1.0)  # re-windowed: a copy
    assert nd.correlation(a, np.full((32, 32), 7.0)) == 0.0  # a blank image matches nothing
    b = rng.integers(0, 256, (32, 32)).astype(float)
    assert abs(nd.correlation(a, b)) < 0.1  # independent noise
    # Pearson: covariance over the product of the standard deviations.
    expected = np.corrcoef(a.ravel(), (a + b).ravel())[0, 1]
    assert nd.correlation(a, a + b) == pytest.approx(expected, abs=1e-6)


def test_standardise_rows_have_zero_mean_and_unit_norm():
    x = nd.standardise(np.arange(2 * 9, dtype=float).reshape(2, 3, 3) ** 2)
    np.testing.assert_allclose(x.mean(axis=1), 0, atol=1e-6)
    np.testing.assert_allclose(np.linalg.norm(x, axis=1), 1, atol=1e-6)
    assert not nd.standardise(np.ones((1, 4, 4))).any()


def test_near_pairs_finds_exactly_the_planted_copies_in_any_block_size():
    rng = np.random.default_rng(1)
    base = rng.normal(size=(7, 16, 16))
    images = np.concatenate([base, -base[:1], base[[2]] + 0.01 * rng.normal(size=(1, 16, 16)),
                             3 * base[[5]] + 1])  # rows 7: negative, 8: ~2, 9: ~5
    features = nd.standardise(images)
    for block in (2, 3, nd.BLOCK):
        i, j, c = nd.near_pairs(features, block=block)
        assert list(zip(i.tolist(), j.tolist())) == [(2, 8), (5, 9)]
        assert (c >= nd.THRESHOLD).all() and (c <= 1).all()


def test_clusters_are_connected_components_numbered_by_first_item():
    np.testing.assert_array_equal(nd.clusters(4, np.array([], int), np.array([], int)),
                                  [0, 1, 2, 3])
    np.testing.assert_array_equal(nd.clusters(6, np.array([3, 1, 4]), np.array([5, 3, 0])),
                                  [0, 1, 2, 1, 0, 1])


# ----------------------------------------------------------------------------- manifests
def reencoded(src: Path, dst: Path) -> Path:
    """``src`` shrunk to 100 px, blown up again and saved as JPEG: other bytes, same picture."""
    img = Image.open(src).convert("L").resize((100, 100)).resize((128, 128))
    img.save(dst, quality=80)
    return dst


def split_tree(root: Path, radiography_dir: Path, per: dict[str, int]) -> dict[str, list[Path]]:
    """root/<split>/<COVID|Normal>/ filled with distinct real images; returns them per split."""
    images = iter(real_pngs(radiography_dir, 2 * sum(per.values())))
    placed: dict[str, list[Path]] = {}
    for split, n in per.items():
        for k in range(2 * n):
            src = next(images)
            folder = root / split / src.parent.name
            folder.mkdir(parents=True, exist_ok=True)
            placed.setdefault(split, []).append(Path(shutil.copy(src, folder / src.name)))
    return placed


def test_a_reencoded_training_image_in_val_is_listed_and_dropped(radiography_dir, tmp_path,
                                                                 capsys):
    placed = split_tree(tmp_path / "src", radiography_dir, {"train": 10, "val": 5, "test": 5})
    original = placed["train"][0]
    copy = reencoded(original, tmp_path / "src" / "val" / original.parent.name / "copy.jpg")
    manifest = load_manifest(tmp_path / "src", duplicates="drop", cache_dir=tmp_path / "c")
    assert str(copy) not in set(manifest.frame["path"])  # the evaluation-side copy is gone
    assert str(original) in set(manifest.frame["path"])  # the training image stays
    assert len(manifest.frame) == 40
    near = pd.read_csv(manifest.directory / "near_duplicates.csv")
    assert len(near) == 1  # the 40 distinct real images are not flagged
    row = near.iloc[0]
    assert (row["path"], row["split"], row["match_path"], row["match_split"], row["action"]) == (
        str(copy), "val", str(original), "train", "dropped")
    assert row["correlation"] >= nd.THRESHOLD
    assert "near-duplicates: 1 images across splits (val 1;" in capsys.readouterr().out
    assert manifest.meta["near_duplicates"]["dropped"] == 1

    kept = load_manifest(tmp_path / "src", duplicates="keep", cache_dir=tmp_path / "c")
    assert str(copy) in set(kept.frame["path"])
    assert pd.read_csv(kept.directory / "near_duplicates.csv")["action"].tolist() == ["kept"]
    with pytest.raises(DataError, match=r"near-duplicates.*copy\.jpg.*duplicates='drop'"):
        load_manifest(tmp_path / "src", duplicates="error", cache_dir=tmp_path / "c")


def test_a_split_computed_here_keeps_near_copies_together(radiography_dir, tmp_path):
    root = tmp_path / "flat"
    for src in real_pngs(radiography_dir, 20):
        (root / src.parent.name).mkdir(parents=True, exist_ok=True)
        shutil.copy(src, root / src.parent.name / src.name)
    for k, src in enumerate(sorted((root / "COVID").glob("*.png"))[:4]):
        reencoded(src, root / "COVID" / f"copy-{k}.jpg")
    manifest = load_manifest(root, cache_dir=tmp_path / "c", val_fraction=0.25,
                             test_fraction=0.25)  # duplicates="error": nothing across splits
    frame = manifest.frame.set_index("path")
    near = pd.read_csv(manifest.directory / "near_duplicates.csv")
    assert len(near) == 4 and set(near["action"]) == {"same split"}
    for _, row in near.iterrows():
        assert frame.loc[row["path"], "group"] == frame.loc[row["match_path"], "group"]
        assert frame.loc[row["path"], "split"] == frame.loc[row["match_path"], "split"]


def test_npz_near_copies_use_the_same_method(pneumoniamnist_npz, tmp_path):
    arrays = {}
    with np.load(pneumoniamnist_npz) as data:
        for s in ("train", "val", "test"):  # 10 images of each class per split
            y = data[f"{s}_labels"].ravel()
            rows = np.concatenate([np.flatnonzero(y == c)[:10] for c in (0, 1)])
            arrays |= {f"{s}_images": data[f"{s}_images"][rows], f"{s}_labels": data[f"{s}_labels"][rows]}
    planted = arrays["train_images"][3].astype(int) + np.random.default_rng(0).integers(-3, 4, (28, 28))
    arrays["test_images"][0] = np.clip(planted, 0, 255).astype(np.uint8)
    arrays["test_labels"][0] = arrays["train_labels"][3]
    np.savez(tmp_path / "pneumoniamnist.npz", **arrays)
    manifest = load_manifest(tmp_path / "pneumoniamnist.npz", duplicates="drop",
                             cache_dir=tmp_path / "c")
    near = pd.read_csv(manifest.directory / "near_duplicates.csv")
    dropped = near[near["action"] == "dropped"]
    assert f"{tmp_path / 'pneumoniamnist.npz'}#test/0" in set(dropped["path"])
    assert f"{tmp_path / 'pneumoniamnist.npz'}#train/3" in set(dropped["match_path"])
    assert f"{tmp_path / 'pneumoniamnist.npz'}#test/0" not in set(manifest.frame["path"])
    # npz entries cannot be removed like files: under "error" they are recorded, not raised.
    recorded = load_manifest(tmp_path / "pneumoniamnist.npz", cache_dir=tmp_path / "c")
    assert f"{tmp_path / 'pneumoniamnist.npz'}#test/0" in set(recorded.frame["path"])


def test_the_selection_holdout_keeps_near_copies_on_one_side(radiography_dir, tmp_path):
    # train/val only: the hold-out is drawn from train later, by `selection`.
    placed = split_tree(tmp_path / "src", radiography_dir, {"train": 15, "val": 3})
    copies = {}
    for k, original in enumerate(placed["train"][:12]):
        copies[original] = reencoded(original, original.parent / f"copy-{k}.jpg")
    fit, held = load_selection_sets(tmp_path / "src", resolution=8, cache_dir=tmp_path / "c")
    assert len(held) and len(fit)
    for original, copy in copies.items():
        assert (str(original) in held.paths) == (str(copy) in held.paths)
        assert (str(original) in fit.paths) == (str(copy) in fit.paths)


# ----------------------------------------------------------------------------- patients
def covidx_manifest(radiography_dir: Path, tmp_path: Path):
    labels = ["COVID-19", "normal"]
    lines = {"train": covidx_lines(20, labels, "P", per_patient=3),
             "test": covidx_lines(4, labels, "T", 1)}
    write_covidx(tmp_path / "covidx", real_pngs(radiography_dir, 64), lines)
    return load_manifest(tmp_path / "covidx", cache_dir=tmp_path / "c")


def ieee_manifest(radiography_dir: Path, tmp_path: Path):
    findings = ["Pneumonia/Viral/COVID-19", "No Finding"]
    records = [{"patientid": str(p), "finding": findings[p % 2], "view": "PA",
                "modality": "X-ray", "filename": f"{p}-{k}.png"}
               for p in range(16) for k in range(1 + p % 3)]
    csv_path = write_ieee8023(tmp_path / "ieee", real_pngs(radiography_dir, len(records)),
                              records)
    return load_manifest(csv_path, cache_dir=tmp_path / "c", val_fraction=0.25,
                         test_fraction=0.25)


@pytest.mark.parametrize("build", [covidx_manifest, ieee_manifest], ids=["covidx", "ieee8023"])
def test_holdout_and_folds_never_split_a_patient(build, radiography_dir, tmp_path):
    manifest = build(radiography_dir, tmp_path)
    frame = manifest.frame
    assert (frame_groups(frame) == frame["patient_id"].to_numpy()).all()  # no copies here
    labels = frame["label"].map(manifest.classes.index).to_numpy()
    groups = frame_groups(frame)
    held = holdout_mask(labels, groups=groups)
    assert 0 < held.sum() < len(held)
    assert (pd.Series(held).groupby(frame["patient_id"]).nunique() == 1).all()
    assert np.array_equal(held, holdout_mask(labels, groups=groups))  # fixed, not a draw
    fold = stratified_folds(labels, 3, seed=0, groups=groups)
    assert set(fold) == {0, 1, 2}
    assert (pd.Series(fold).groupby(frame["patient_id"]).nunique() == 1).all()
    for c in range(len(manifest.classes)):  # every class in every fold
        assert set(fold[labels == c]) == {0, 1, 2}
    assert np.array_equal(fold, stratified_folds(labels, 3, seed=0, groups=groups))


def test_set_groups_reads_the_patients_of_an_image_set(radiography_dir, tmp_path):
    covidx_manifest(radiography_dir, tmp_path)
    train = load_image_set(tmp_path / "covidx", "train", resolution=8, cache_dir=tmp_path / "c")
    assert list(set_groups(train)) == [Path(p).name.split("-")[0] for p in train.paths]


def test_one_image_per_group_is_the_image_level_draw():
    labels = np.repeat([0, 1, 2], [40, 25, 7])
    unique = np.array([f"img{i}" for i in range(len(labels))])
    assert np.array_equal(holdout_mask(labels, groups=unique), holdout_mask(labels))
    assert np.array_equal(stratified_folds(labels, 4, seed=3, groups=unique),
                          stratified_folds(labels, 4, seed=3))
