"""DICOM through the optional pydicom extra, and the folders operating systems leave behind
(issue 25 item 6)."""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

from tests.test_data_errors import class_dirs, load
from trainables.data import DataError
from trainables.data.preprocess import decode_image

pydicom = pytest.importorskip("pydicom")


def write_dicom(path: Path, pixels: np.ndarray, *, photometric: str = "MONOCHROME2",
                window: tuple[float, float] | None = None, slope: float = 1.0,
                intercept: float = 0.0) -> Path:
    """A minimal uncompressed DICOM X-ray (16-bit unsigned) as a scanner would write it."""
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.1.1"  # digital X-ray
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID = meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID
    ds.Modality, ds.PatientID = "DX", "P1"
    ds.Rows, ds.Columns = pixels.shape
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, photometric
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 0
    ds.RescaleSlope, ds.RescaleIntercept = slope, intercept
    if window:
        ds.WindowCenter, ds.WindowWidth = window
    ds.PixelData = pixels.astype(np.uint16).tobytes()
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(path, enforce_file_format=True)
    return path


def _ramp(side: int = 16) -> np.ndarray:
    return np.tile(np.linspace(0, 4000, side), (side, 1))


def test_monochrome1_is_inverted_and_the_window_applied(tmp_path):
    plain = np.asarray(decode_image(write_dicom(tmp_path / "m2.dcm", _ramp())))
    inverted = np.asarray(decode_image(write_dicom(tmp_path / "m1.dcm", _ramp(),
                                                   photometric="MONOCHROME1")))
    assert plain.dtype == np.uint8 and plain.shape == (16, 16)
    assert plain[0, 0] == 0 and plain[0, -1] == 255  # the full range, left dark
    np.testing.assert_array_equal(inverted, 255 - plain)  # MONOCHROME1: high values dark
    windowed = np.asarray(decode_image(write_dicom(tmp_path / "w.dcm", _ramp(),
                                                   window=(2000, 1000))))
    # values below 1500 and above 2500 are clipped: a band of black and of white columns
    assert (windowed[0, :5] == 0).all() and (windowed[0, -5:] == 255).all()


def test_a_dicom_class_folder_loads_beside_png_classes(radiography_dir, tmp_path):
    root = class_dirs(tmp_path / "d", radiography_dir)
    rng = np.random.default_rng(0)
    for i in range(4):  # distinct images: near-copies would share one split
        write_dicom(root / "Pneumonia" / f"p{i}.dcm", rng.integers(0, 4000, (16, 16)))
    images = load(root, tmp_path, split="train")
    assert "Pneumonia" in images.classes


def test_without_pydicom_the_dicom_files_and_the_extra_are_named(radiography_dir, tmp_path,
                                                                 monkeypatch):
    root = class_dirs(tmp_path / "d", radiography_dir)
    write_dicom(root / "COVID" / "stray.dcm", _ramp())
    monkeypatch.setitem(sys.modules, "pydicom", None)  # import pydicom -> ImportError
    with pytest.raises(DataError, match=r"1 DICOM file\(s\) \(.*stray\.dcm\).*\[dicom\]"):
        load(root, tmp_path)


def test_os_junk_folders_and_files_are_ignored(radiography_dir, tmp_path):
    root = class_dirs(tmp_path / "d", radiography_dir)
    (root / "__MACOSX" / "COVID").mkdir(parents=True)
    (root / "__MACOSX" / "COVID" / "._x.png").write_bytes(b"\0\5\0\7")
    (root / "Normal" / "Thumbs.db").write_bytes(b"junk")
    images = load(root, tmp_path)
    assert set(images.classes) == {"COVID-19", "Normal"}
