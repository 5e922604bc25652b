"""Near-duplicate images: Pearson correlation of small grey thumbnails.

Content hashes only catch byte-identical files. The same radiograph saved twice (resized,
re-encoded as JPEG, re-windowed) has other bytes but nearly the same picture, and when the
two copies sit in the training and the evaluation split the test score is inflated (issue
21: in covid19-radiography-subset, 6 of 448 test and 7 of 448 validation images had a
training image with correlation > 0.99 at 32 px, e.g. COVID-246 and COVID-1373).

Method: each image is read as grey and resized to SIDE x SIDE with an antialiasing filter
(PIL's bilinear filter widens its support when shrinking), then standardised (zero mean,
unit norm), so that the dot product of two feature rows is their Pearson correlation.
Pearson ignores brightness and contrast (a re-windowed copy still correlates 1), and the
low resolution ignores JPEG noise and resampling. On the real sets distinct X-rays reach
about 0.91 (median of each image's best match) and 0.95 (90th percentile); copies sit
above 0.99, so the threshold leaves a wide margin on both sides.

The maths (`standardise`, `correlation`, `near_pairs`, `clusters`) is pure numpy; only
`thumbnails` reads files.
"""
from __future__ import annotations

import os

import numpy as np
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components

SIDE = 32  # px: small enough to ignore re-encoding noise, large enough to tell X-rays apart
THRESHOLD = 0.99  # Pearson correlation at or above which two images are the same picture
METHOD = (f"Pearson correlation >= {THRESHOLD} of {SIDE}x{SIDE} grey thumbnails "
          "(antialiased resize, standardised)")
SHORT = f"corr >= {THRESHOLD} at {SIDE} px"
BLOCK = 2048  # rows x columns of one block of the correlation matrix (16 MiB of float32)


def standardise(images: np.ndarray) -> np.ndarray:
    """(N, ...) images -> (N, D) float32 rows of zero mean and unit norm.

    A constant image has no pattern to correlate: its row is all zeros, so it correlates 0
    with everything and is never called a near-duplicate (blank images are a data problem
    of their own, not a leak)."""
    x = np.asarray(images, dtype=np.float64).reshape(len(images), -1)
    x = x - x.mean(axis=1, keepdims=True)
    norm = np.linalg.norm(x, axis=1, keepdims=True)
    return np.divide(x, norm, out=np.zeros_like(x), where=norm > 1e-12).astype(np.float32)


def correlation(a: np.ndarray, b: np.ndarray) -> float:
    """Pearson correlation of two same-shape images (0 when either is constant)."""
    fa, fb = standardise(np.stack([np.asarray(a), np.asarray(b)]).astype(np.float64))
    return float(np.clip(fa.astype(np.float64) @ fb.astype(np.float64), -1.0, 1.0))


def near_pairs(features: np.ndarray, *, threshold: float = THRESHOLD, block: int = BLOCK,
               ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(i, j, corr) of every pair i < j whose rows of ``features`` (from `standardise`)
    correlate >= ``threshold``, sorted by (i, j).

    The correlation matrix is computed block by block (upper triangle only), so memory
    stays at one block whatever N is; the work is one matrix product, N^2 D / 2 flops."""
    n = len(features)
    found: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []
    for r0 in range(0, n, block):
        rows = features[r0:r0 + block]
        for c0 in range(r0, n, block):
            corr = rows @ features[c0:c0 + block].T
            i, j = np.nonzero(corr >= threshold)
            keep = (i + r0) < (j + c0)
            found.append((i[keep] + r0, j[keep] + c0, corr[i[keep], j[keep]]))
    if not found:
        return np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0, np.float32)
    i, j, c = (np.concatenate(parts) for parts in zip(*found))
    order = np.lexsort((j, i))
    return i[order].astype(np.int64), j[order].astype(np.int64), np.minimum(c[order], 1.0)


def clusters(n: int, i: np.ndarray, j: np.ndarray) -> np.ndarray:
    """Component id per item of the graph with edges (i, j); ids numbered in order of each
    component's first item, so a graph without edges gives 0..n-1."""
    graph = coo_matrix((np.ones(len(i), dtype=np.int8), (i, j)), shape=(n, n))
    _, comp = connected_components(graph, directed=False)
    _, first = np.unique(comp, return_index=True)
    rank = np.empty(len(first), dtype=np.int64)
    rank[np.argsort(first)] = np.arange(len(first))
    return rank[comp]


def thumbnails(paths: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """(N, SIDE, SIDE) uint8 grey thumbnails of ``paths`` (files or "file.npz#split/i") and
    a mask of the readable ones; unreadable images are left for ``skip_bad`` to report
    when the image cache is built, not raised here."""
    from .cache import decode_rows  # the image cache's decoder: same 16-bit and npz handling
    from .preprocess import PreprocessConfig

    out = np.zeros((len(paths), SIDE, SIDE, 1), dtype=np.uint8)
    bad = decode_rows(list(paths), resolution=SIDE, channels=1, cfg=PreprocessConfig(),
                      out=out, workers=max(1, min(8, os.cpu_count() or 1)))
    ok = np.ones(len(paths), dtype=bool)
    ok[[pos for pos, _ in bad]] = False
    return out[..., 0], ok
