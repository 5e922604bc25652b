"""Does a generator copy its training images? Nearest-neighbour distances on feature rows.

FID and CAS reward a generator that reproduces its training set: a copy is perfectly
realistic and perfectly classifiable. These metrics look at each fake's nearest training
image instead (issue 23).

- `memorised_share`: share of fakes closer to a training image than almost any real image
  the generator never saw. The threshold is the q-quantile of held-out real images'
  nearest-training distances, so "as close as an unseen X-ray of the same distribution gets"
  is the reference of "not a copy", in whatever feature space the rows come from.
- `prdc`: precision / recall / density / coverage of Naeem et al. 2020 ("Reliable Fidelity
  and Diversity Metrics for Generative Models"), as in their reference implementation
  (clovaai/generative-evaluation-prdc): k-NN radii real-to-real with k+1 neighbours
  counting the point itself, strict "<" comparisons.
- `pixel_features`: small grey standardised thumbnails (as `trainables.data.near_duplicates`
  uses for leaks), so the same distances work in pixel space without a network.

Everything here is pure numpy on (N, D) feature matrices, rows = images; distances are
computed block by block, so no N x M matrix is held at once for large sets.
"""
from __future__ import annotations

import math

import numpy as np
from PIL import Image

from trainables.data.near_duplicates import SIDE, standardise

BLOCK = 1024  # query rows per block: 1024 x M float64 distances at a time
DEFAULT_Q = 0.05
DEFAULT_K = 5


def _as_rows(x: np.ndarray, name: str) -> np.ndarray:
    x = np.asarray(x, dtype=np.float64)
    if x.ndim != 2:
        raise ValueError(f"{name} must be a 2-d (images, features) matrix, got shape {x.shape}")
    return x


def _block_distances(a: np.ndarray, b: np.ndarray, b_sq: np.ndarray) -> np.ndarray:
    """Euclidean distances of rows of ``a`` to rows of ``b`` (``b_sq``: b's squared norms)."""
    sq = (a * a).sum(axis=1)[:, None] + b_sq[None, :] - 2.0 * (a @ b.T)
    return np.sqrt(np.maximum(sq, 0.0))  # the expansion can dip below 0 by rounding


def _blocks(query: np.ndarray, reference: np.ndarray, block: int):
    """(first row, distances of query[first:first+block] to every reference row)."""
    ref_sq = (reference * reference).sum(axis=1)
    for r0 in range(0, len(query), block):
        yield r0, _block_distances(query[r0:r0 + block], reference, ref_sq)


def nearest_distances(query: np.ndarray, reference: np.ndarray, *, exclude_self: bool = False,
                      block: int = BLOCK) -> tuple[np.ndarray, np.ndarray]:
    """(distance, index) of each query row's nearest reference row (Euclidean).

    exclude_self: query and reference are the same set (row i of both is one image), and an
    image is not its own neighbour. Ties go to the lowest reference index."""
    query, reference = _as_rows(query, "query"), _as_rows(reference, "reference")
    if len(reference) == 0 or len(reference) < (2 if exclude_self else 1):
        raise ValueError(f"reference has {len(reference)} rows: too few for a nearest neighbour")
    if exclude_self and len(query) != len(reference):
        raise ValueError("exclude_self=True needs query and reference to be the same set")
    dist = np.empty(len(query))
    index = np.empty(len(query), dtype=np.int64)
    for r0, d in _blocks(query, reference, block):
        if exclude_self:
            rows = np.arange(len(d))
            d[rows, rows + r0] = np.inf
        index[r0:r0 + len(d)] = d.argmin(axis=1)
        dist[r0:r0 + len(d)] = d[np.arange(len(d)), index[r0:r0 + len(d)]]
    return dist, index


def min_heldout(q: float) -> int:
    """Held-out images needed for a q-quantile that is not just the smallest distance."""
    if not 0.0 < q < 1.0:
        raise ValueError(f"q must be in (0, 1), got {q}")
    return math.ceil(1.0 / q - 1e-9)  # 1e-9: 1/0.05 is 20.000000000000004 in floats


def memorised_share(fake_feats: np.ndarray, train_feats: np.ndarray, heldout_feats: np.ndarray,
                    q: float = DEFAULT_Q, *, block: int = BLOCK) -> dict:
    """Share of fakes whose nearest training image is closer than the q-quantile of held-out
    real images' nearest-training distances.

    Returns memorised_share, threshold, q, n (fakes), distances and nearest (per fake: the
    distance to and index of its nearest training row). A generator that samples its
    distribution without copying scores about q; one that copies scores about 1."""
    need = min_heldout(q)
    heldout_feats = _as_rows(heldout_feats, "heldout_feats")
    if len(heldout_feats) < need:
        raise ValueError(f"held-out set has {len(heldout_feats)} images; the {q:g}-quantile of "
                         f"their nearest-training distances needs at least {need}")
    fake_feats = _as_rows(fake_feats, "fake_feats")
    if len(fake_feats) == 0:
        raise ValueError("no synthetic images (fake_feats has 0 rows)")
    held_dist, _ = nearest_distances(heldout_feats, train_feats, block=block)
    threshold = float(np.quantile(held_dist, q))
    dist, nearest = nearest_distances(fake_feats, train_feats, block=block)
    return {"memorised_share": float(np.mean(dist < threshold)), "threshold": threshold,
            "q": float(q), "n": len(fake_feats), "distances": dist, "nearest": nearest}


def kth_neighbour_radii(feats: np.ndarray, k: int = DEFAULT_K, *, block: int = BLOCK,
                        ) -> np.ndarray:
    """Distance of each row to its k-th nearest other row: the (k+1)-th smallest distance
    counting the row itself at 0, as PRDC's reference `compute_nearest_neighbour_distances`."""
    feats = _as_rows(feats, "feats")
    if not 1 <= k < len(feats):
        raise ValueError(f"k={k} needs 1 <= k < number of rows ({len(feats)})")
    radii = np.empty(len(feats))
    for r0, d in _blocks(feats, feats, block):
        radii[r0:r0 + len(d)] = np.partition(d, k, axis=1)[:, k]
    return radii


def prdc(real_feats: np.ndarray, fake_feats: np.ndarray, k: int = DEFAULT_K, *,
         block: int = BLOCK) -> dict[str, float]:
    """Precision, recall, density and coverage (Naeem et al. 2020) of fakes against reals.

    precision: share of fakes inside some real's k-NN ball; recall: share of reals inside
    some fake's k-NN ball; density: mean over fakes of (real balls containing it) / k;
    coverage: share of reals whose ball contains at least one fake."""
    real, fake = _as_rows(real_feats, "real_feats"), _as_rows(fake_feats, "fake_feats")
    real_r = kth_neighbour_radii(real, k, block=block)
    fake_r = kth_neighbour_radii(fake, k, block=block)
    in_real_balls = np.zeros(len(fake), dtype=np.int64)  # per fake: real balls holding it
    recalled = np.zeros(len(real), dtype=bool)
    covered = np.zeros(len(real), dtype=bool)
    for r0, d in _blocks(real, fake, block):  # d: real rows x all fakes
        inside = d < real_r[r0:r0 + len(d), None]
        in_real_balls += inside.sum(axis=0)
        covered[r0:r0 + len(d)] = inside.any(axis=1)
        recalled[r0:r0 + len(d)] = (d < fake_r[None, :]).any(axis=1)
    return {"precision": float(np.mean(in_real_balls > 0)), "recall": float(np.mean(recalled)),
            "density": float(np.mean(in_real_balls) / k), "coverage": float(np.mean(covered))}


def pixel_features(images: np.ndarray, side: int = SIDE) -> np.ndarray:
    """uint8 images (N, H, W) or (N, H, W, C) -> (N, side*side) float32 rows: grey,
    resized to side x side (PIL bilinear, antialiased when shrinking), zero mean, unit norm.

    The Euclidean distance of two rows is sqrt(2 - 2 r), r their Pearson correlation, so
    brightness, contrast, re-encoding and resampling barely move a copy (see
    `trainables.data.near_duplicates`)."""
    images = np.asarray(images)
    if images.dtype != np.uint8 or images.ndim not in (3, 4):
        raise ValueError(f"pixel_features expects uint8 (N, H, W[, C]) images, got "
                         f"{images.dtype} {images.shape}")
    out = np.empty((len(images), side, side), dtype=np.uint8)
    for i, img in enumerate(images):
        pil = Image.fromarray(img[..., 0] if img.ndim == 3 and img.shape[-1] == 1 else img)
        out[i] = np.asarray(pil.convert("L").resize((side, side), Image.Resampling.BILINEAR))
    return standardise(out)


def most_copied_figure(fakes: np.ndarray, train: np.ndarray, pairs: list[dict], threshold: float):
    """Each pair as a row: the fake beside its nearest training image, with the distance."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(4.0, 2.1 * max(len(pairs), 1)), layout="constrained")
    axes = fig.subplots(max(len(pairs), 1), 2, squeeze=False)
    for row, (pair, fake) in enumerate(zip(pairs, fakes)):
        mark = "COPY" if pair["copy"] else "ok"
        for ax, img, title in ((axes[row, 0], fake, f"synthetic  d={pair['distance']:.3f} {mark}"),
                               (axes[row, 1], train[pair["training_index"]],
                                f"training #{pair['training_index']}")):
            ax.imshow(np.asarray(img)[..., 0], cmap="gray", vmin=0, vmax=255)
            ax.set_title(title, fontsize=7)
            ax.axis("off")
    fig.suptitle(f"most-copied pairs (copy: d < {threshold:.3f})", fontsize=8)
    return fig
