"""The search command rejects bad configuration before any trial (or Ray) starts."""
import subprocess
import sys

import pytest

from orchestrator import driver, search


def run_main(argv, capsys, tmp_path):
    argv = list(argv) + ["--mlflow-uri", f"sqlite:///{tmp_path}/mlflow.db",
                         "--storage", str(tmp_path / "ray_results")]
    rc = search.main(argv)
    return rc, capsys.readouterr().err


def test_help_explains_every_option():
    out = subprocess.run([sys.executable, "-m", "orchestrator.search", "--help"],
                         capture_output=True, text=True, check=True).stdout
    for flag in ("--preset", "--data", "--num-samples", "--max-epochs", "--max-concurrent",
                 "--workers-per-trial", "--gpus-per-worker", "--searcher", "--scheduler",
                 "--objective", "--storage", "--mlflow-uri", "--name", "--resume", "--smoke"):
        assert flag in out


def test_unknown_experiment_is_rejected():
    with pytest.raises(SystemExit) as exc:
        search.config_from_args(["wgan"])
    assert exc.value.code == 2


def test_preset_of_another_family_is_rejected(capsys, tmp_path):
    rc, err = run_main(["acgan", "--preset", "s1", "--smoke"], capsys, tmp_path)
    assert rc == 2 and "preset 's1' is a dcgan system" in err


@pytest.mark.parametrize("override, message", [
    ("no_such_knob=3", "unknown GANConfig key(s) ['no_such_knob']"),
    ("lr_g=-0.001", "learning rates must be > 0"),
])
def test_bad_trial_config_fails_before_ray(override, message, capsys, tmp_path):
    import ray

    rc, err = run_main(["acgan", "--smoke", "--set", override], capsys, tmp_path)
    assert rc == 2 and message in err
    assert not ray.is_initialized()


def test_negative_budget_is_rejected(capsys, tmp_path):
    rc, err = run_main(["acgan", "--num-samples", "0"], capsys, tmp_path)
    assert rc == 2 and "--num-samples must be >= 1" in err


def test_unreachable_mlflow_fails_fast(capsys, tmp_path):
    rc = search.main(["acgan", "--smoke", "--mlflow-uri", "http://127.0.0.1:9",
                      "--storage", str(tmp_path)])
    err = capsys.readouterr().err
    assert rc == 2 and "http://127.0.0.1:9" in err and "not reachable" in err


def test_more_gpus_than_the_cluster_has():
    cfg = search.SearchConfig(experiment="acgan", preset="s0", workers_per_trial=2,
                              gpus_per_worker=1)
    with pytest.raises(driver.ConfigError, match="needs 2 GPUs .* cluster has 1"):
        driver._place(cfg, {}, {"CPU": 16, "GPU": 1})


def test_placement_derives_concurrency_from_gpus():
    cfg = search.SearchConfig(experiment="acgan", preset="s0", workers_per_trial=2)
    placed = driver._place(cfg, {}, {"CPU": 32, "GPU": 8})
    assert placed["execution"] == "train" and placed["use_gpu"]
    assert placed["max_concurrent"] == 4


def test_cpu_only_uses_the_function_path():
    cfg = search.SearchConfig(experiment="acgan", preset="s0")
    placed = driver._place(cfg, {}, {"CPU": 2})
    assert placed["execution"] == "function" and not placed["use_gpu"]
    assert placed["max_concurrent"] == 2


def test_objectives_are_validated():
    with pytest.raises(ValueError, match="unknown objective 'fidd'"):
        search.SearchConfig(experiment="acgan", preset="s0", objective="fidd").objectives()
