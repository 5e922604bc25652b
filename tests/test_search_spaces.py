"""Search spaces as data: define-by-run branches, presets first, seeded samplers, the Optuna
study that optuna-dashboard opens, and the multi-objective searcher."""
from __future__ import annotations

import optuna
import pytest

from orchestrator import registry
from orchestrator.cli import search
from orchestrator.run import tuner
from orchestrator.run.settings import trial_settings
from search_spaces import gan as gan_space
from trainables.gan import GANConfig, preset

optuna.logging.set_verbosity(optuna.logging.WARNING)


def sample(n: int, sampler, max_epochs: int = 40, enqueue=()) -> list[dict]:
    study = optuna.create_study(sampler=sampler)
    for point in enqueue:
        study.enqueue_trial(point)
    out = []
    for _ in range(n):
        trial = study.ask()
        gan_space.space(trial, max_epochs=max_epochs)
        study.tell(trial, float(len(out)))
        out.append(dict(trial.params))
    return out


def test_branches_suggest_only_their_own_parameters():
    seen = set()
    for p in sample(300, optuna.samplers.RandomSampler(seed=1)):
        if p["optimizer"] == "adam":
            assert "beta1" in p and "momentum" not in p and "nesterov" not in p
        else:
            assert {"momentum", "nesterov"} <= set(p) and "beta1" not in p
        if p["update_ratio"] == "d_per_g":
            assert "d_steps_per_g" in p and "g_steps_per_d" not in p
        else:
            assert p["g_steps_per_d"] in gan_space.K_CHOICES and "d_steps_per_g" not in p
        own = {"none": set(), "cosine_warm_restarts": {"t_0"}, "step": {"step_size", "gamma"},
               "exponential": {"gamma"}}[p["scheduler"]]
        assert own <= set(p) and not ({"t_0", "step_size", "gamma"} - own) & set(p)
        if p["scheduler"] == "exponential":
            assert 0.9 <= p["gamma"] <= 0.999
        cfg = GANConfig.from_dict(gan_space.to_config(p))  # every point is a valid config
        assert cfg.d_steps_per_g == 1 or cfg.g_steps_per_d == 1  # one direction at a time
        seen.add((p["optimizer"], p["update_ratio"], p["scheduler"]))
    assert len(seen) == 2 * 2 * 4  # every combination of branches was reached


@pytest.mark.parametrize("name", ["s0", "s1", "s2", "s3", "s4"])
def test_each_preset_is_the_first_point_and_maps_back_to_itself(name):
    values = preset(name)
    points = gan_space.first_points(values, max_epochs=values.get("epochs", 100))
    first = sample(2, optuna.samplers.TPESampler(seed=0), max_epochs=values.get("epochs", 100),
                   enqueue=points)[0]
    assert first == points[0]
    cfg = GANConfig.from_dict({**values, **gan_space.to_config(first)})
    for key in ("lr_g", "lr_d", "optimizer", "scheduler", "d_steps_per_g"):
        assert getattr(cfg, key) == GANConfig.from_dict(values).__getattribute__(key), key
    if values.get("g_steps_per_d", 1) > 1:  # S2's slow discriminator
        assert cfg.g_steps_per_d == gan_space._nearest(gan_space.K_CHOICES, values["g_steps_per_d"])


def test_tpe_is_seeded():
    a = sample(12, optuna.samplers.TPESampler(seed=7, n_startup_trials=4))
    b = sample(12, optuna.samplers.TPESampler(seed=7, n_startup_trials=4))
    c = sample(12, optuna.samplers.TPESampler(seed=8, n_startup_trials=4))
    assert a == b and a != c


def test_searcher_keeps_a_study_optuna_dashboard_can_open(tmp_path):
    cfg = search.SearchConfig(experiment="acgan", preset="s0", name="dash", smoke=True,
                              storage=str(tmp_path))
    settings = trial_settings(cfg, str(tmp_path))
    searcher, param_space = tuner.searcher(cfg, registry.experiment_space("acgan"), settings,
                                             cfg.objectives(), str(tmp_path))
    assert param_space is None
    searcher.set_search_properties(metric=None, mode=None, config={})
    suggestion = searcher.suggest("t1")
    assert suggestion["lr_g"] == preset("s0")["lr_g"]  # the preset goes first
    db = tmp_path / "dash-optuna.db"
    assert db.is_file()
    study = optuna.load_study(study_name="dash", storage=f"sqlite:///{db}")
    assert len(study.trials) == 1 and study.trials[0].params["lr_g"] == suggestion["lr_g"]


def test_multi_objective_searcher_and_asha_on_the_first(tmp_path):
    cfg = search.SearchConfig(experiment="acgan", preset="s0", name="mo", smoke=True,
                              storage=str(tmp_path), objective="fid,cas_acc")
    assert cfg.objectives() == [("fid", "min"), ("cas_acc", "max")]
    settings = trial_settings(cfg, str(tmp_path))
    searcher, _ = tuner.searcher(cfg, registry.experiment_space("acgan"), settings,
                                   cfg.objectives(), str(tmp_path))
    searcher.set_search_properties(metric=None, mode=None, config={})
    searcher.suggest("t1")
    study = optuna.load_study(study_name="mo", storage=f"sqlite:///{tmp_path / 'mo-optuna.db'}")
    assert [d.name for d in study.directions] == ["MINIMIZE", "MAXIMIZE"]
    scheduler = tuner.scheduler(cfg, "fid", "min", 3, registry.experiment_space("acgan"),
                                  own_metric=True)
    assert scheduler._metric == "fid" and scheduler._mode == "min"


def test_the_study_carries_the_rankings_verdicts(tmp_path):
    """optuna-dashboard's "best trial" is only the best objective; the study's user attributes
    say which trial and epoch the ranking selected and why another trial was excluded."""
    from orchestrator.store import optuna_notes

    url = optuna_notes.study_url(str(tmp_path), "s")
    study = optuna.create_study(study_name="s", storage=url)
    for tune_id, value in (("a_1", 1.0), ("b_2", 3.0)):
        t = study.ask()
        t.set_user_attr("tune_trial_id", tune_id)
        study.tell(t, value)
    rows = [{"trial": "a_1", "status": "finished", "best_epoch": None,
             "reason": "no selectable epoch: collapsed", "fid": None},
            {"trial": "b_2", "status": "finished", "best_epoch": 2, "reason": "", "fid": 3.0}]
    noted = optuna_notes.annotate(url, "s", rows, {"a_1": "r1", "b_2": "r2"},
                                  {"trial_id": "b_2", "epoch": 2, "run_id": "r2",
                                   "versus_lowest": "the lowest fid (1) was trial a_1, epoch 0: "
                                                    "collapsed"}, "fid")
    attrs = optuna.load_study(study_name="s", storage=url).user_attrs
    assert noted == 2
    assert attrs["cxr.trial.0"] == ("tune trial a_1 · MLflow run r1 · finished · excluded: "
                                    "no selectable epoch: collapsed")
    assert attrs["cxr.trial.1"] == ("tune trial b_2 · MLflow run r2 · finished · best "
                                    "selectable epoch 2 (fid 3)")
    assert attrs["cxr.selected"].startswith("tune trial b_2, epoch 2 · MLflow run r2")
    assert attrs["cxr.selected"].endswith("; not the same epoch as the lowest fid (1) was "
                                          "trial a_1, epoch 0: collapsed")
    assert optuna_notes.annotate(optuna_notes.study_url(str(tmp_path), "none"), "none", rows,
                                 {}, None, "fid") == 0


def test_a_suggestion_the_killed_driver_never_ran_is_failed_with_the_reason(tmp_path):
    """A driver killed between Optuna's ask() and Tune's saved state leaves a RUNNING Optuna
    trial that no Tune trial owns (seen in CI's SIGKILL/resume test); once the search has
    ended it is FAILED with why, not shown running forever."""
    from orchestrator.store import optuna_notes

    url = optuna_notes.study_url(str(tmp_path), "s")
    study = optuna.create_study(study_name="s", storage=url)
    ran = study.ask()
    ran.set_user_attr("tune_trial_id", "a_1")
    study.tell(ran, 1.0)
    study.ask()  # the orphan
    rows = [{"trial": "a_1", "status": "finished", "best_epoch": 0, "reason": "", "fid": 1.0}]
    # a re-rank (`rank`) of a search that may still resume leaves it alone
    assert optuna_notes.annotate(url, "s", rows, {"a_1": "r1"}, None, "fid") == 1
    assert optuna.load_study(study_name="s", storage=url).trials[1].state.name == "RUNNING"
    assert optuna_notes.annotate(url, "s", rows, {"a_1": "r1"}, None, "fid",
                                 search_ended=True) == 1
    study = optuna.load_study(study_name="s", storage=url)
    assert [t.state.name for t in study.trials] == ["COMPLETE", "FAIL"]
    assert study.trials[1].user_attrs["cxr.excluded"].startswith("suggested, never run")
    assert study.user_attrs["cxr.trial.1"] == optuna_notes.NEVER_RAN
