"""The search command rejects bad configuration before any trial (or Ray) starts."""
import subprocess
import sys

import pytest

from orchestrator import config
from orchestrator.cli import search
from orchestrator.run import cluster
from trainables.ray_glue import trial_resources


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
                 "--objective", "--storage", "--mlflow-uri", "--name", "--resume", "--smoke",
                 "--exclude-classes", "--label-map", "--classes"):
        assert flag in out


def test_the_eval_metrics_help_names_every_evaluation():
    """The help lists the names by hand (the registry's package imports torch, which would
    make --help take seconds): this keeps the two the same."""
    import re

    from trainables.metrics.registry import EVALUATIONS

    (action,) = [a for a in search.build_parser()._actions if a.dest == "eval_metrics"]
    listed = re.search(r"\(([a-z_,]+)\)", action.help).group(1).split(",")
    assert listed == list(EVALUATIONS)


def test_every_option_is_a_search_config_field():
    """config_from_namespace passes the parsed options to SearchConfig by name."""
    import dataclasses

    dests = {a.dest for a in search.build_parser()._actions if a.dest != "help"}
    assert dests <= {f.name for f in dataclasses.fields(config.SearchConfig)}


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


def test_an_unknown_evaluation_is_refused_before_ray(capsys, tmp_path):
    """Before, `--eval-metrics fid,foo` started Ray and every trial failed on it."""
    import ray

    rc, err = run_main(["acgan", "--smoke", "--eval-metrics", "fid,foo"], capsys, tmp_path)
    assert rc == 2 and "--eval-metrics: unknown 'foo'; choose from fid,kid," in err
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
    cfg = config.SearchConfig(experiment="acgan", preset="s0", workers_per_trial=2,
                              gpus_per_worker=1)
    with pytest.raises(config.ConfigError, match="needs 2 GPUs .* cluster has 1"):
        cluster.place(cfg, {"CPU": 16, "GPU": 1})


def test_placement_derives_concurrency_from_gpus():
    cfg = config.SearchConfig(experiment="acgan", preset="s0", workers_per_trial=2)
    placed = cluster.place(cfg, {"CPU": 32, "GPU": 8})
    assert placed.execution == "train" and placed.use_gpu
    assert placed.max_concurrent == 4


def test_cpu_only_uses_the_function_path():
    cfg = config.SearchConfig(experiment="acgan", preset="s0")
    placed = cluster.place(cfg, {"CPU": 2})
    assert placed.execution == "function" and not placed.use_gpu
    assert placed.max_concurrent == 2


def test_smoke_asha_runs_one_trial_at_a_time_unless_told():
    """ASHA's stops depend on the order trials reach a rung: the smoke check serialises
    trials so its stops are reproducible; an explicit --max-concurrent or another
    scheduler keeps the derived concurrency."""
    smoke = config.SearchConfig(experiment="acgan", preset="s0", smoke=True)
    assert cluster.place(smoke, {"CPU": 2}).max_concurrent == 1
    told = config.SearchConfig(experiment="acgan", preset="s0", smoke=True, max_concurrent=2)
    assert cluster.place(told, {"CPU": 2}).max_concurrent == 2
    fifo = config.SearchConfig(experiment="acgan", preset="s0", smoke=True, scheduler="none")
    assert cluster.place(fifo, {"CPU": 2}).max_concurrent == 2


def test_objectives_are_validated():
    with pytest.raises(ValueError, match="unknown objective 'fidd'"):
        config.SearchConfig(experiment="acgan", preset="s0", objective="fidd").objectives()


def test_unknown_preset_is_rejected():
    with pytest.raises(SystemExit) as exc:
        search.config_from_args(["acgan", "--preset", "s9"])
    assert exc.value.code == 2


def test_autoscaling_cluster_waits_for_gpu_nodes():
    """`ray up cluster.yaml` starts with no GPU node: with --gpu-wait the driver asks the
    autoscaler for one trial's GPUs instead of failing, and lets Tune queue the rest."""
    asked = []

    def wait(per_worker, workers, timeout):
        asked.append((per_worker, workers, timeout))
        return 1.0  # one g5 node came up

    cfg = config.SearchConfig(experiment="acgan", preset="s0", gpus_per_worker=1, gpu_wait=900)
    placed = cluster.place(cfg, {"CPU": 0}, wait=wait)
    assert asked == [(1, 1, 900)] and placed.use_gpu and placed.max_concurrent is None
    with pytest.raises(config.ConfigError, match="add --gpu-wait"):
        cluster.place(config.SearchConfig(experiment="acgan", preset="s0", gpus_per_worker=1),
                      {"CPU": 0}, wait=wait)
    with pytest.raises(config.ConfigError, match="after waiting 900 s"):
        cluster.place(cfg, {"CPU": 0}, wait=lambda *a: 0.0)


def test_pbt_runs_one_process_trials_even_on_gpus():
    cfg = config.SearchConfig(experiment="acgan", preset="s0", scheduler="pbt", searcher="random")
    placed = cluster.place(cfg, {"CPU": 8, "GPU": 2})
    assert placed.execution == "function" and placed.use_gpu
    assert trial_resources(placed) == {"CPU": 1.0, "GPU": 1.0}
    with pytest.raises(config.ConfigError, match="pbt needs one worker per trial"):
        cluster.place(config.SearchConfig(experiment="acgan", preset="s0", scheduler="pbt",
                                          workers_per_trial=2), {"CPU": 8, "GPU": 2})


def test_local_storage_is_refused_on_a_multi_machine_cluster():
    one_host = [{"Alive": True, "NodeManagerAddress": "127.0.0.1"}] * 3
    cluster.check_shared_storage("/tmp/ray_results", one_host)  # one machine: fine
    two_hosts = [{"Alive": True, "NodeManagerAddress": "10.0.0.1"},
                 {"Alive": True, "NodeManagerAddress": "10.0.0.2"}]
    cluster.check_shared_storage("s3://bucket/cxr", two_hosts)
    with pytest.raises(config.ConfigError, match="spans 2 machines"):
        cluster.check_shared_storage("/home/ubuntu/ray_results", two_hosts)


def test_classifier_study_takes_no_pretrained_and_set(tmp_path):
    from orchestrator.study.config import config_from_args, study_settings

    cfg = config_from_args(["--smoke", "--no-pretrained", "--set", "model=vgg16", "--set",
                            "dropout=0.3", "--set", "seeds=0,1"])
    budget, base = study_settings(cfg)
    assert budget["model"] == "vgg16" and budget["seeds"] == (0, 1)
    assert base["pretrained"] is False and base["dropout"] == 0.3
    bad = config_from_args(["--smoke", "--set", "dropuot=0.3"])
    with pytest.raises(config.ConfigError, match="unknown ClassifierConfig key"):
        study_settings(bad)
    with pytest.raises(ValueError, match="classifier experiment only"):
        search.config_from_args(["acgan", "--smoke", "--no-pretrained"])


def test_set_values_in_exponent_notation_are_numbers():
    """YAML 1.1 reads `1e-4` (no dot) as text; `--set lr_g=1e-4` crashed deep in a trial."""
    from orchestrator.config import parse_overrides

    got = parse_overrides(["lr_g=1e-4", "lr_d=1.0e+30", "momentum=0", "diffaugment=color,cutout",
                           "amp=false"])
    assert got == {"lr_g": 1e-4, "lr_d": 1e30, "momentum": 0, "diffaugment": "color,cutout",
                   "amp": False}
    assert isinstance(got["lr_g"], float)


def test_the_inception_score_has_one_name():
    """`is` is what the evaluator reports and what --objective takes; the old second name
    (`inception_score`) passed validation and was never reported."""
    from trainables.metrics.evaluator import METRICS as EVAL_METRICS

    assert "is" in EVAL_METRICS
    assert search.config_from_args(["acgan", "--smoke", "--objective", "is"]).objectives() == \
        [("is", "max")]
    with pytest.raises(ValueError, match="unknown objective 'inception_score'"):
        config.SearchConfig(experiment="acgan", preset="s0",
                            objective="inception_score").objectives()


def test_the_study_command_is_built_from_its_config():
    """Issue 21: one option per StudyConfig field, so the two cannot drift; `search
    classifier` (without --tune) is the same command under its old name."""
    import dataclasses

    from orchestrator.study.config import StudyConfig, build_parser, config_from_args

    dests = {a.dest for a in build_parser()._actions if a.dest != "help"}
    assert dests == {f.name for f in dataclasses.fields(StudyConfig)}
    cfg = config_from_args(["--data", "D", "--minority", "COVID-19=0.2", "--set", "seeds=0,1",
                            "--max-epochs", "3", "--force"])
    assert (cfg.data, cfg.minority, cfg.overrides, cfg.max_epochs, cfg.force) == \
        ("D", "COVID-19=0.2", ("seeds=0,1",), 3, True)
    with pytest.raises(ValueError, match="not both"):
        config_from_args(["--generator", "x", "--gan-search", "y"])


def test_search_classifier_is_the_study(capsys):
    assert search.main(["classifier", "--minority", "COVID-19=7"]) == 2
    assert "--minority 'COVID-19=7'" in capsys.readouterr().err
    with pytest.raises(SystemExit):  # argparse: the search has no study options
        search.main(["classifier", "--tune", "--minority", "COVID-19=0.2"])
    assert "unrecognized arguments: --minority" in capsys.readouterr().err
