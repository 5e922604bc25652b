"""Issue 14's click counts, in a real browser: a smoke search, `mlflow ui` on its store, and
headless Chromium following the links from the experiment page.  Skipped where there is no
browser (CI: no Chromium, no Playwright); `python -m benchmarks.ui_clicks --smoke` is the same."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from benchmarks.ui_clicks import LIMITS, find_browser

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[1]


def test_best_epoch_grid_and_champion_are_two_clicks_from_the_experiment_page(tmp_path):
    pytest.importorskip("playwright", reason='pip install -e ".[ui]"')
    if find_browser(None) is None:
        pytest.skip("no Chromium on PATH (apt-get install chromium)")
    done = subprocess.run([sys.executable, "-m", "benchmarks.ui_clicks", "--smoke", "--out",
                           str(tmp_path)], cwd=ROOT, capture_output=True, text=True, timeout=1500)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    rows = [line for line in (tmp_path / "clicks.md").read_text().splitlines()
            if line.startswith("| ") and not line.startswith("| target")]
    assert len(rows) == len(LIMITS)
    for row in rows:
        name, clicks, limit, reached = (cell.strip() for cell in row.split("|")[1:5])
        assert reached == "yes" and int(clicks) <= int(limit) == LIMITS[name], row
    for shot in ("0_experiment_page", "1_search_run", "2_best_trial_run", "3_best_grid",
                 "4_champion"):
        assert (tmp_path / f"{shot}.png").stat().st_size > 10_000, shot
