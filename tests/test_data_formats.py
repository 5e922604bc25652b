"""COVIDx, ieee8023 and nested-folder layouts, on small fixtures of real images."""
from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import pandas as pd

from trainables.data import load_image_set, load_manifest
from trainables.data.readers import detect_layout


def real_pngs(radiography_dir: Path, n: int) -> list[Path]:
    """``n`` distinct real images (128x128 PNGs), alternating COVID and Normal."""
    covid = sorted((radiography_dir / "COVID").glob("*.png"))[:n]
    normal = sorted((radiography_dir / "Normal").glob("*.png"))[:n]
    return [p for pair in zip(covid, normal) for p in pair][:n]


def write_covidx(root: Path, images: list[Path], lines: dict[str, list[tuple[str, str, str]]],
                 ) -> None:
    """COVIDx layout: <split>.txt of 'patient file class source' + <split>/ image folders."""
    it = iter(images)
    for split, entries in lines.items():
        (root / split).mkdir(parents=True)
        with open(root / f"{split}.txt", "w") as fh:
            for pid, name, label in entries:
                shutil.copy(next(it), root / split / name)
                fh.write(f"{pid} {name} {label} cohen\n")


def covidx_lines(n_patients: int, labels: list[str], prefix: str, per_patient: int = 2):
    return [(f"{prefix}{i}", f"{prefix}{i}-{k}.png", labels[i % len(labels)])
            for i in range(n_patients) for k in range(per_patient)]


def test_covidx_three_class_patient_level(radiography_dir, tmp_path):
    labels = ["COVID-19", "normal", "pneumonia"]
    lines = {"train": covidx_lines(18, labels, "P"), "test": covidx_lines(6, labels, "T", 1)}
    write_covidx(tmp_path / "covidx", real_pngs(radiography_dir, 42), lines)
    assert detect_layout(tmp_path / "covidx") == "covidx"
    cache = tmp_path / "cache"
    sets = {s: load_image_set(tmp_path / "covidx", s, resolution=16, cache_dir=cache)
            for s in ("train", "val", "test")}
    assert sets["train"].classes == ("COVID-19", "Normal", "Pneumonia")
    assert len(sets["test"]) == 6 and sets["test"].class_counts() == {
        "COVID-19": 2, "Normal": 2, "Pneumonia": 2}
    # val is carved out of train at patient level: 36 train images -> train + val.
    assert len(sets["train"]) + len(sets["val"]) == 36
    assert set(sets["val"].class_counts().values()) == {2}  # 1 patient x 2 images per class
    patients = {s: {Path(p).name.split("-")[0] for p in v.paths} for s, v in sets.items()}
    assert not patients["train"] & patients["val"]
    frame = pd.read_parquet(Path(sets["train"].manifest_dir) / "manifest.parquet")
    assert (frame.groupby("patient_id")["split"].nunique() == 1).all()
    assert set(frame["source"]) == {"cohen"}
    meta = json.loads((Path(sets["train"].manifest_dir) / "manifest.json").read_text())
    assert meta["patient_ids"] == "from the source" and "carved" in meta["split_method"]
    # The train.txt path names the same data set (its test.txt sibling is read too).
    via_txt = load_image_set(tmp_path / "covidx" / "train.txt", "test", resolution=16,
                             cache_dir=cache)
    assert sorted(via_txt.paths) == sorted(sets["test"].paths)


def test_covidx_two_class_variant(radiography_dir, tmp_path):
    lines = {"train": covidx_lines(6, ["positive", "negative"], "P", 1),
             "val": covidx_lines(2, ["positive", "negative"], "V", 1),
             "test": covidx_lines(2, ["positive", "negative"], "T", 1)}
    write_covidx(tmp_path / "cx", real_pngs(radiography_dir, 10), lines)
    s = load_image_set(tmp_path / "cx", "val", resolution=8, cache_dir=tmp_path / "c")
    assert s.classes == ("COVID-19", "Non-COVID-19")
    assert s.class_counts() == {"COVID-19": 1, "Non-COVID-19": 1}


IEEE_COLUMNS = ["patientid", "offset", "sex", "age", "finding", "RT_PCR_positive", "survival",
                "intubated", "intubation_present", "went_icu", "in_icu", "needed_supplemental_O2",
                "extubated", "temperature", "pO2_saturation", "leukocyte_count",
                "neutrophil_count", "lymphocyte_count", "view", "modality", "date", "location",
                "folder", "filename", "doi", "url", "license", "clinical_notes", "other_notes",
                "Unnamed: 29"]


def write_ieee8023(root: Path, images: list[Path], records: list[dict]) -> Path:
    """ieee8023 layout: metadata.csv beside images/."""
    (root / "images").mkdir(parents=True)
    with open(root / "metadata.csv", "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=IEEE_COLUMNS)
        writer.writeheader()
        for rec, img in zip(records, images):
            shutil.copy(img, root / "images" / rec["filename"])
            writer.writerow({c: "" for c in IEEE_COLUMNS} | {"folder": "images"} | rec)
    return root / "metadata.csv"


def test_ieee8023_views_findings_and_patients(radiography_dir, tmp_path):
    findings = ["Pneumonia/Viral/COVID-19", "No Finding", "Pneumonia/Bacterial/Streptococcus",
                "Pneumonia/Viral/SARS"]
    views = ["PA", "AP", "AP Supine"]
    records = [{"patientid": str(p), "finding": findings[p % 4], "view": views[(p + k) % 3],
                "modality": "X-ray", "filename": f"{p}-{k}.png"}
               for p in range(16) for k in range(2)]
    records += [{"patientid": "90", "finding": findings[0], "view": "L", "modality": "X-ray",
                 "filename": "lateral.png"},
                {"patientid": "91", "finding": findings[0], "view": "Axial", "modality": "CT",
                 "filename": "ct.png"}]
    csv_path = write_ieee8023(tmp_path / "ieee", real_pngs(radiography_dir, len(records)), records)
    assert detect_layout(csv_path) == detect_layout(tmp_path / "ieee") == "ieee8023"
    manifest = load_manifest(csv_path, cache_dir=tmp_path / "c", val_fraction=0.25,
                             test_fraction=0.25)
    assert manifest.classes == ("Bacterial Pneumonia", "COVID-19", "Normal", "Viral Pneumonia")
    frame = manifest.frame
    assert len(frame) == 32  # lateral and CT rows left out ...
    assert manifest.meta["ieee8023_left_out"] == {"view=L": 1, "modality=CT": 1}  # ... recorded
    assert (frame.groupby("patient_id")["split"].nunique() == 1).all()
    for split in ("train", "val", "test"):  # stratified: every class in every split
        assert frame[frame["split"] == split]["label"].nunique() == 4
    s = load_image_set(csv_path, "test", resolution=16, cache_dir=tmp_path / "c",
                       val_fraction=0.25, test_fraction=0.25)
    assert len(s) == len(frame[frame["split"] == "test"]) == 8


def test_nested_folders_masks_and_exclusions(radiography_dir, tmp_path):
    # COVID-19_Radiography_Dataset/<Class>/{images,masks}/ inside a wrapper folder.
    root = tmp_path / "wrapper" / "COVID-19_Radiography_Dataset"
    imgs = iter(real_pngs(radiography_dir, 40))
    for cls in ("COVID", "Normal", "Lung_Opacity"):
        for sub in ("images", "masks"):
            (root / cls / sub).mkdir(parents=True)
            for i in range(6):
                shutil.copy(next(imgs), root / cls / sub / f"{cls}-{i}.png")
    (root / "COVID.metadata.xlsx").write_text("not an image")
    s = load_image_set(tmp_path / "wrapper", "train", resolution=8, cache_dir=tmp_path / "c",
                       exclude_labels=["Lung Opacity"], val_fraction=1 / 6, test_fraction=1 / 6)
    assert s.classes == ("COVID-19", "Normal")
    assert s.class_counts() == {"COVID-19": 4, "Normal": 4}
    assert {Path(p).parent.name for p in s.paths} == {"images"}
    merged = load_image_set(tmp_path / "wrapper", "val", resolution=8, cache_dir=tmp_path / "c",
                            label_map={"Lung_Opacity": "Abnormal", "COVID": "Abnormal"},
                            val_fraction=1 / 6, test_fraction=1 / 6)
    assert merged.classes == ("Abnormal", "Normal")
    assert merged.class_counts() == {"Abnormal": 2, "Normal": 1}


def test_folder_split_dirs_any_depth_mixed_formats(covid3_dir, tmp_path):
    root = tmp_path / "data" / "Covid19-dataset"
    for split in ("train", "test"):
        for cls, src in (("PNEUMONIA", "Viral Pneumonia"), ("NORMAL", "Normal")):
            files = sorted((covid3_dir / split.replace("test", "val") / src).iterdir())[:4]
            for i, f in enumerate(files):
                dest = root / split / cls / ("deep" if i % 2 else "") / f"{i}{f.suffix}"
                dest.parent.mkdir(parents=True, exist_ok=True)
                shutil.copy(f, dest)
    s = load_image_set(tmp_path / "data", "test", resolution=8, cache_dir=tmp_path / "c",
                       val_fraction=0.25)
    assert s.classes == ("Normal", "Pneumonia")
    assert s.class_counts() == {"Normal": 4, "Pneumonia": 4}
    val = load_image_set(tmp_path / "data", "val", resolution=8, cache_dir=tmp_path / "c",
                         val_fraction=0.25)
    assert val.class_counts() == {"Normal": 1, "Pneumonia": 1}
