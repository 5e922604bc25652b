"""Deterministic preprocessing, applied once when the decoded-image cache is built.

Order: crop the top (burned-in text) -> central crop -> improved adaptive gamma correction
(IAGC) -> resize to ``resolution`` x ``resolution`` -> channels. All of it is part of the
cache key through `PreprocessConfig.key()`.
"""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import numpy as np
from PIL import Image

from . import dicom
from .errors import DataError


@dataclass(frozen=True)
class PreprocessConfig:
    """Deterministic preprocessing (S0's options); the defaults do nothing but resize.

    crop_top: fraction of the height removed from the top (S0 uses 0.08 for burned-in text).
    central_crop: fraction of height and width kept around the centre (1.0 = all).
    iagc: improved adaptive gamma correction (Cao et al. 2018).
    """

    crop_top: float = 0.0
    central_crop: float = 1.0
    iagc: bool = False

    def __post_init__(self) -> None:
        if not 0.0 <= self.crop_top < 1.0:
            raise ValueError(f"crop_top must be in [0, 1), got {self.crop_top}")
        if not 0.0 < self.central_crop <= 1.0:
            raise ValueError(f"central_crop must be in (0, 1], got {self.central_crop}")

    @classmethod
    def from_dict(cls, values: dict) -> "PreprocessConfig":
        """Build from a dict, rejecting unknown keys."""
        unknown = set(values) - {f.name for f in fields(cls)}
        if unknown:
            raise ValueError(f"unknown PreprocessConfig keys {sorted(unknown)}; "
                             f"known: {[f.name for f in fields(cls)]}")
        return cls(**values)

    def key(self) -> str:
        """Stable text form, used in cache keys."""
        return json.dumps(asdict(self), sort_keys=True)


def decode_image(path: str | Path) -> Image.Image:
    """Open and fully decode an image file; a truncated or unreadable file raises DataError."""
    if Path(path).suffix.lower() in dicom.SUFFIXES:
        return dicom.read_dicom(path)
    try:
        with Image.open(path) as img:
            img.load()  # forces the full decode, so truncated files fail here
            return img.copy()
    except FileNotFoundError as exc:
        raise DataError(f"{path}: image file is missing") from exc
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as exc:
        raise DataError(f"{path}: unreadable or truncated image ({exc}); replace the file, "
                        "or pass skip_bad=True to skip (and record) unreadable images") from exc


def to_mode(img: Image.Image, channels: int) -> Image.Image:
    """Grayscale ("L") for 1 channel, "RGB" for 3 (16-bit and palette images included)."""
    if channels not in (1, 3):
        raise ValueError(f"channels must be 1 or 3, got {channels}")
    if img.mode in ("I;16", "I;16B", "I;16L", "I"):
        # 16-bit X-rays: rescale the full range to 8 bits instead of clipping.
        arr = np.asarray(img, dtype=np.float64)
        lo, hi = arr.min(), arr.max()
        arr = (arr - lo) / (hi - lo) * 255 if hi > lo else np.zeros_like(arr)
        img = Image.fromarray(arr.round().astype(np.uint8), "L")
    return img.convert("L" if channels == 1 else "RGB")


def crop(img: Image.Image, cfg: PreprocessConfig) -> Image.Image:
    """Apply the top crop, then the central crop."""
    w, h = img.size
    top = int(round(h * cfg.crop_top))
    img = img.crop((0, top, w, h)) if top else img
    if cfg.central_crop < 1.0:
        w, h = img.size
        cw, ch = max(1, round(w * cfg.central_crop)), max(1, round(h * cfg.central_crop))
        left, upper = (w - cw) // 2, (h - ch) // 2
        img = img.crop((left, upper, left + cw, upper + ch))
    return img


def _agcwd_lut(gray: np.ndarray, alpha: float, truncated: bool) -> np.ndarray:
    """Lookup table of adaptive gamma correction with weighting distribution (Cao et al.)."""
    hist = np.bincount(gray.ravel(), minlength=256).astype(np.float64)
    pdf = hist / hist.sum()
    spread = pdf.max() - pdf.min()
    weighted = pdf.max() * ((pdf - pdf.min()) / spread) ** alpha if spread > 0 else pdf
    cdf = np.cumsum(weighted / weighted.sum())
    gamma = 1.0 - cdf
    if truncated:
        gamma = np.maximum(0.5, gamma)  # truncated CDF: never brighten by more than sqrt
    levels = np.arange(256) / 255.0
    return np.round(255.0 * levels ** gamma).astype(np.uint8)


def iagc(gray: np.ndarray, *, expected_mean: float = 112.0, threshold: float = 0.3) -> np.ndarray:
    """Improved adaptive gamma correction of a uint8 luminance image (Cao et al. 2018).

    Bright images (mean > 1.3 x 112) are enhanced through their negative; dim ones
    (mean < 0.7 x 112) by gamma modulated with a truncated weighted CDF; others are returned.
    """
    t = (gray.mean() - expected_mean) / expected_mean
    if t > threshold:
        negative = 255 - gray
        return 255 - _agcwd_lut(negative, alpha=0.25, truncated=False)[negative]
    if t < -threshold:
        return _agcwd_lut(gray, alpha=0.75, truncated=True)[gray]
    return gray


def apply_iagc(img: Image.Image) -> Image.Image:
    """IAGC on the luminance channel (Y of YCbCr for colour images)."""
    if img.mode == "L":
        return Image.fromarray(iagc(np.asarray(img)), "L")
    y, cb, cr = img.convert("YCbCr").split()
    y = Image.fromarray(iagc(np.asarray(y)), "L")
    return Image.merge("YCbCr", (y, cb, cr)).convert("RGB")


def preprocess(img: Image.Image, *, resolution: int, channels: int,
               cfg: PreprocessConfig) -> np.ndarray:
    """Decoded image -> uint8 array (resolution, resolution, channels)."""
    img = crop(to_mode(img, channels), cfg)
    if cfg.iagc:
        img = apply_iagc(img)
    if img.size != (resolution, resolution):
        # Plain square resize (PIL's bilinear filter antialiases when shrinking); use
        # central_crop first if the aspect ratio matters.
        img = img.resize((resolution, resolution), Image.Resampling.BILINEAR)
    arr = np.asarray(img, dtype=np.uint8)
    return arr[..., None] if arr.ndim == 2 else arr
