"""Figures written by trainables (Grad-CAM, confusion matrix, t-SNE, collapse panels) and by
the orchestrator's report: `matplotlib.figure.Figure` objects, never pyplot, so no process-wide
backend or figure registry is touched (trials run in Ray workers and notebooks alike)."""
from __future__ import annotations

import warnings
from pathlib import Path

from matplotlib.figure import Figure


def save(fig: Figure, path: str | Path, dpi: int = 100, tight: bool = True) -> Path:
    """Write `fig` as a PNG (parents created); returns the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with warnings.catch_warnings():
        # Many small panels (a wide hyper-parameter grid) make constrained layout give up on
        # its spacing; the figure is still complete, the warning is noise in the console.
        warnings.filterwarnings("ignore", "constrained_layout not applied", UserWarning)
        fig.savefig(path, dpi=dpi, bbox_inches="tight" if tight else None)
    return path
