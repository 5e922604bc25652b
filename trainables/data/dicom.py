"""DICOM chest X-rays through pydicom, an optional extra (`pip install -e ".[dicom]"`).

A DICOM file stores raw detector values: the modality LUT (rescale slope/intercept) gives
the stored physical values, the VOI LUT or window (centre/width) says which of them a
radiologist looks at, and MONOCHROME1 means high values are *dark*.  All three are applied
before the image is scaled to 8 bits, so a DICOM X-ray looks like its PNG export.
"""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np
from PIL import Image

from .errors import DataError

SUFFIXES = frozenset({".dcm", ".dicom"})
EXTRA = 'pip install -e ".[dicom]"  (or: pip install pydicom)'


def available() -> bool:
    try:
        import pydicom  # noqa: F401
    except ImportError:
        return False
    return True


def require(files: Sequence[Path]) -> None:
    """DataError naming the DICOM files and the extra when pydicom is missing."""
    if files and not available():
        shown = ", ".join(str(f) for f in list(files)[:3])
        more = f" and {len(files) - 3} more" if len(files) > 3 else ""
        raise DataError(f"{len(files)} DICOM file(s) ({shown}{more}) need pydicom to be read; "
                        f"install it with {EXTRA}, or remove them from the data folder")


def read_dicom(path: str | Path) -> Image.Image:
    """An 8-bit grey PIL image of a DICOM file, windowed and MONOCHROME1 inverted."""
    require([Path(path)])
    import pydicom

    try:
        ds = pydicom.dcmread(path)
        pixels = ds.pixel_array
    except Exception as exc:  # pydicom raises many types for broken files
        raise DataError(f"{path}: unreadable DICOM ({type(exc).__name__}: {exc}); replace the "
                        "file, or pass skip_bad=True to skip (and record) it") from exc
    values = _windowed(ds, pixels)
    if getattr(ds, "PhotometricInterpretation", "MONOCHROME2") == "MONOCHROME1":
        values = values.max() + values.min() - values  # high values are dark
    lo, hi = float(values.min()), float(values.max())
    scaled = (values - lo) / (hi - lo) * 255 if hi > lo else np.zeros_like(values)
    return Image.fromarray(scaled.round().astype(np.uint8), "L")


def _windowed(ds, pixels: np.ndarray) -> np.ndarray:
    try:  # pydicom >= 3
        from pydicom.pixels import apply_modality_lut, apply_voi_lut
    except ImportError:  # pydicom 2.x
        from pydicom.pixel_data_handlers.util import apply_modality_lut, apply_voi_lut
    values = apply_modality_lut(pixels, ds).astype(np.float64)
    if "WindowCenter" in ds or "VOILUTSequence" in ds:
        values = apply_voi_lut(values, ds).astype(np.float64)
    if values.ndim == 3 and values.shape[-1] != 3:  # a multi-frame file: its first frame
        values = values[0]
    return values
