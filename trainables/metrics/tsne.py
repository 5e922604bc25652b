"""2-D t-SNE of real versus synthetic feature vectors, saved as a PNG (S0, stage 4)."""
from __future__ import annotations

from pathlib import Path

import numpy as np
from matplotlib.figure import Figure
from sklearn.manifold import TSNE

from trainables.figures import save as save_figure


def tsne_embedding(real: np.ndarray, fake: np.ndarray, *, seed: int = 0) -> np.ndarray:
    """(N_real + N_fake, 2) t-SNE coordinates of the stacked features (real first)."""
    x = np.concatenate([real, fake]).astype(np.float64)
    if len(x) < 5:
        raise ValueError(f"t-SNE needs at least 5 points, got {len(x)}")
    perplexity = float(min(30.0, (len(x) - 1) / 3))  # must stay below N
    return TSNE(n_components=2, perplexity=perplexity, init="pca",
                random_state=seed).fit_transform(x)


def tsne_plot(real: np.ndarray, fake: np.ndarray, out_png: Path | str, *, seed: int = 0,
              title: str = "t-SNE of Inception features") -> Path:
    """Scatter real (blue) and synthetic (orange) features in 2-D; returns the PNG path."""
    emb = tsne_embedding(real, fake, seed=seed)
    n = len(real)
    fig = Figure(figsize=(5, 5))
    ax = fig.subplots()
    ax.scatter(*emb[:n].T, s=8, label=f"real (N={n})")
    ax.scatter(*emb[n:].T, s=8, label=f"synthetic (N={len(fake)})")
    ax.legend()
    ax.set_title(title, fontsize=9)
    return save_figure(fig, out_png)
