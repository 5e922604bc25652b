"""Every benchmark script still runs and prints its ratio (tiny sizes: this checks the
command works, the numbers themselves come from running the scripts as their docstrings say)."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.slow


def run(script: str, *args: str, tmp_path: Path) -> str:
    env = dict(os.environ, PYTHONPATH=str(REPO), CXR_CACHE_DIR=str(tmp_path / "cache"),
               RAY_AUTH_MODE="disabled")
    proc = subprocess.run([sys.executable, f"benchmarks/{script}", *args], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc.stdout


def test_data_cache_prints_the_ratio(covid3_dir, tmp_path):
    out = run("data_cache.py", "--source", str(covid3_dir), "--resolution", "16", "--epochs", "1",
              tmp_path=tmp_path)
    assert "ratio cached/decoded:" in out


def test_frechet_speed_prints_the_speed_up(tmp_path):
    out = run("frechet_speed.py", "--sizes", "40", "--dims", "64", tmp_path=tmp_path)
    assert "speed-up" in out and "relative difference" in out


def test_gan_throughput_prints_images_per_second(tmp_path):
    out = run("gan_throughput.py", "--presets", "s1", "s2", "--batches", "1", "--batch-size", "2",
              tmp_path=tmp_path)
    assert out.count("images/s") == 2


def test_eval_cache_prints_the_ratio(covid3_dir, tmp_path):
    out = run("eval_cache.py", "--data", str(covid3_dir), "--n-real", "8", "--n-fake", "4",
              tmp_path=tmp_path)
    assert "second/first time ratio:" in out and "cache hits 1" in out


def test_tune_overhead_prints_both_comparisons(covid3_dir, tmp_path):
    out = run("tune_overhead.py", "--data", str(covid3_dir), "--trials", "1", "--epochs", "1",
              "--compare-searchers", "1", "--eval-metrics", "visual", "--objective", "g_loss",
              tmp_path=tmp_path)
    assert "Tune overhead ratio" in out and "ratio random/optuna" in out


def test_gan_learns_prints_the_table_and_writes_grids(covid3_dir, tmp_path):
    out = run("gan_learns.py", "--families", "dcgan", "--minutes", "0", "--data", str(covid3_dir),
              "--resolution", "32", "--width", "0.125", "--steps-per-epoch", "2", "--n-fake", "8",
              "--out", str(tmp_path / "out"), "--cache-dir", str(tmp_path / "stats"),
              tmp_path=tmp_path)
    assert "| dcgan (s1) | 1 |" in out and "real-vs-real floor" in out
    assert (tmp_path / "out" / "dcgan_first_grid.png").is_file()
    assert (tmp_path / "out" / "table.md").read_text().startswith("| family |")


def test_checkpoint_disk_prints_bytes_per_trial(covid3_dir, tmp_path):
    # part 2 (real one-trial searches) is left out here: the product's own disk bound over a
    # real search is tests/test_search_survives.py's
    out = run("checkpoint_disk.py", "--epochs", "2", "--keep", "1", "--data", str(covid3_dir),
              "--no-search", tmp_path=tmp_path)
    assert "state.pt files kept" in out and "s0 at seed size" in out


def small_radiography(radiography_dir: Path, folder: Path, per_class: int = 150) -> Path:
    """The first `per_class` images of each class of covid19-radiography-subset, linked: the
    same kind of data at a tenth of the size (the script's run, not its answer, is tested)."""
    for cls in ("COVID", "Normal"):
        (folder / cls).mkdir(parents=True)
        for image in sorted((radiography_dir / cls).iterdir())[:per_class]:
            (folder / cls / image.name).symlink_to(image)
    return folder


def test_augmentation_answer_quick_writes_the_paired_verdicts(radiography_dir, tmp_path):
    data = small_radiography(radiography_dir, tmp_path / "radiography-small")
    out = run("augmentation_answer.py", "--quick", "--data", str(data), "--out",
              str(tmp_path / "answer"), tmp_path=tmp_path)
    report = next((tmp_path / "answer").glob("*.md")).read_text()
    assert "macro F1" in report and ("beats" in report or "no evidence" in report
                                     or "worse" in report), out[-2000:]


def test_gpu_trial_writes_grids_and_per_epoch_timings(covid3_dir, tmp_path):
    import json
    import math

    out_dir = tmp_path / "gt"
    out = run("gpu_trial.py", "--data", str(covid3_dir), "--minutes", "0", "--set",
              "resolution=16", "--set", "channels=1", "--set", "width=0.25", "--set",
              "steps_per_epoch=2", "--set", "eval_every=1", "--metrics", "visual", "--out",
              str(out_dir), tmp_path=tmp_path)
    assert "training images/s" in out and "time in evaluation" in out
    assert "of the training time (1 evaluations; seconds each: generate " in out
    assert (out_dir / "first_grid.png").is_file() and (out_dir / "last_grid.png").is_file()
    (epoch,) = json.loads((out_dir / "epochs.json").read_text())  # 0 minutes: one epoch
    assert {"time_train_s", "time_eval_s", "time_write_s", "images_seen"} <= set(epoch)
    summary = json.loads((out_dir / "summary.json").read_text())
    assert abs(summary["train_share"] + summary["eval_share"] + summary["write_share"] - 1) < 1e-9
    assert set(summary["eval_parts_s"]) == {"generate", "visual"}
    assert summary["eval_per_train"] == summary["eval_s"] / summary["train_s"]
    # the period at which one such evaluation would be 10 % of the training time
    period = summary["eval_s"] * summary["images_seen"] / summary["train_s"] / 0.10
    assert summary["eval_every_images_for_target"] == math.ceil(period)
    assert f"evaluating every {math.ceil(period)} images would hold it at 10% here" in out


def test_search_throughput_prints_packing_and_shares(covid3_dir, tmp_path):
    out = run("search_throughput.py", "--data", str(covid3_dir), "--epochs", "1", "--packing",
              "1", "2", "--set", "resolution=16", "--set", "width=0.25", "--set",
              "steps_per_epoch=2", "--metrics", "visual", tmp_path=tmp_path)
    rows = [ln for ln in out.splitlines() if ln.startswith(("| before |", "| today |"))]
    assert len(rows) == 4, out
    assert "evaluation + checkpoint share at 1 trial(s):" in out
    assert "images/s vs one trial: 1 -> 1.00x, 2 -> " in out
