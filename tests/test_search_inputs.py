"""A search fails fast and clearly on bad input (before Ray or MLflow start, within 10 s,
the message naming the thing and the fix), and its pieces that keep a long search alive:
the scores every result carries, what Optuna is told, resume's checks, the collapse gate."""
from __future__ import annotations

import math
import os
import shutil
import time
from pathlib import Path

import optuna
import pandas as pd
import pytest

from orchestrator import finalize, pipeline, ranking
from orchestrator.cli import search
from orchestrator.config import ConfigError, SearchConfig
from orchestrator.run.tuner import BestEpochOptunaSearch, asha_grace_period
from orchestrator.store.writer import MlflowSearchCallback
from trainables.trial import KEEP_SCORE, SearchScores


def _fails_fast(argv: list[str], capsys) -> str:
    start = time.monotonic()
    assert search.main(argv) == 2
    assert time.monotonic() - start < 10
    return capsys.readouterr().err


def _common(tmp_path: Path, **paths) -> list[str]:
    storage = paths.get("storage", str(tmp_path / "ray_results"))
    uri = paths.get("uri", f"sqlite:///{tmp_path}/mlruns/mlflow.db")
    return ["acgan", "--smoke", "--storage", storage, "--mlflow-uri", uri, "--name", "bad"]


def test_unwritable_storage_fails_before_anything_starts(tmp_path, capsys):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    err = _fails_fast(_common(tmp_path, storage=str(blocker / "results")), capsys)
    assert "--storage" in err and str(blocker / "results") in err and "folder you can write" in err
    assert not (tmp_path / "mlruns").exists()  # MLflow was never asked


def test_sqlite_folder_that_cannot_be_created(tmp_path, capsys):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    err = _fails_fast(_common(tmp_path, uri=f"sqlite:///{blocker}/db/mlflow.db"), capsys)
    assert "--mlflow-uri" in err and "cannot write" in err and "sqlite:///" in err


def test_sqlite_in_a_read_only_folder(tmp_path, capsys):
    """/proc refuses new files even to root (tests may run as root, where chmod is moot)."""
    err = _fails_fast(_common(tmp_path, uri="sqlite:////proc/mlflow.db"), capsys)
    assert "--mlflow-uri" in err and "/proc" in err


def test_a_single_class_data_set_is_refused(tmp_path, covid3_dir, capsys, monkeypatch):
    monkeypatch.setenv("CXR_CACHE_DIR", str(tmp_path / "cache"))
    for split, n in (("train", 12), ("val", 4)):
        target = tmp_path / "one" / split / "Covid"
        target.mkdir(parents=True)
        for f in sorted((covid3_dir / split / "Covid").iterdir())[:n]:
            shutil.copy(f, target / f.name)
    err = _fails_fast([*_common(tmp_path), "--data", str(tmp_path / "one")], capsys)
    assert "1 class (COVID-19)" in err and "at least two" in err
    assert not (tmp_path / "mlruns" / "mlflow.db").exists()


def test_numbers_in_exponent_notation_are_numbers(tmp_path):
    from orchestrator.run.settings import trial_settings

    cfg = search.config_from_args([*_common(tmp_path), "--set", "lr_g=1e-4",
                                   "--set", "lr_d=1e30"])
    base = trial_settings(cfg, str(tmp_path)).base
    assert base["lr_g"] == 1e-4 and base["lr_d"] == 1e30


# ------------------------------------------------------------------------------ scores
def test_every_report_carries_the_search_scores_and_a_resumed_trial_keeps_its_best(tmp_path):
    scores = SearchScores((("fid", "min"), ("cas_acc", "max")))
    first = scores.annotate({"epoch": 0, "g_loss": 1.0})  # no evaluation this epoch
    assert math.isnan(first["best_fid"]) and math.isnan(first[KEEP_SCORE])
    scores.annotate({"epoch": 1, "fid": 3.0, "cas_acc": 0.5})
    worse = scores.annotate({"epoch": 2, "fid": 4.0, "cas_acc": 0.9})
    # the best epoch by the first objective, both values from that epoch (not a mix)
    assert (worse["best_fid"], worse["best_cas_acc"], worse[KEEP_SCORE]) == (3.0, 0.5, 4.0)
    scores.save(tmp_path)
    resumed = SearchScores.resume((("fid", "min"), ("cas_acc", "max")), tmp_path)
    assert resumed.annotate({"epoch": 3, "g_loss": 2.0})["best_fid"] == 3.0


def _space(trial) -> None:
    trial.suggest_float("x", 0, 1)


def _searcher(metric, mode):
    search_alg = BestEpochOptunaSearch(
        space=_space, metric=metric, mode=mode,
        sampler=optuna.samplers.RandomSampler(seed=0))
    search_alg.set_search_properties(metric=None, mode=None, config={})
    return search_alg


def test_optuna_is_told_the_best_epoch_or_pruned_never_a_made_up_value():
    alg = _searcher("best_fid", "min")
    callback = MlflowSearchCallback("sqlite:///unused.db", "s", "parent")
    callback.run_ids.update(diverged="run-d", fine="run-f", errored="run-e")  # as run_for does
    callback.setup()  # as Tune does when fit starts
    for trial_id in ("diverged", "fine", "errored"):
        alg.suggest(trial_id)
    alg.on_trial_result("diverged", {"best_fid": math.nan, "training_iteration": 1})
    alg.on_trial_complete("diverged", {"best_fid": math.nan})
    alg.on_trial_result("fine", {"best_fid": 3.0, "training_iteration": 1})
    alg.on_trial_complete("fine", {"best_fid": 2.5})
    alg.on_trial_complete("errored", {"best_fid": math.nan}, error=True)
    states = [(t.state.name, t.value) for t in alg._ot_study.trials]
    assert states == [("PRUNED", None), ("COMPLETE", 2.5), ("FAIL", None)]
    # issue 24: the dashboard names the objective and shows each trial's Tune id
    assert alg._ot_study.metric_names == ["best_fid"]
    assert [t.user_attrs["tune_trial_id"] for t in alg._ot_study.trials] == [
        "diverged", "fine", "errored"]
    assert [t.user_attrs["mlflow_run_id"] for t in alg._ot_study.trials] == [
        "run-d", "run-f", "run-e"]
    assert [t.user_attrs.get("cxr.excluded", "")[:16] for t in alg._ot_study.trials] == [
        "", "", "the trial failed"]


def test_a_partial_multi_objective_point_is_pruned():
    alg = _searcher(["best_fid", "best_cas_acc"], ["min", "max"])
    alg.suggest("a")
    alg.on_trial_complete("a", {"best_fid": 3.0, "best_cas_acc": math.nan})
    assert alg._ot_study.trials[0].state.name == "PRUNED"


def test_asha_grace_is_a_share_of_the_epochs():
    cfg = SearchConfig(experiment="acgan", preset="s0", asha_grace=0.25)
    assert [asha_grace_period(cfg, e) for e in (1, 3, 8, 388)] == [1, 1, 2, 97]
    with pytest.raises(ValueError, match="--asha-grace"):
        search.config_from_args(["acgan", "--smoke", "--asha-grace", "0"])


# ------------------------------------------------------------------------------ resume
def test_resume_finds_the_newest_search_not_a_file_or_a_train_folder(tmp_path):
    for name, mtime in (("acgan-s0-old", 100), ("acgan-s0-new", 200), ("mine", 300)):
        (tmp_path / name).mkdir()
        (tmp_path / name / "tuner.pkl").write_bytes(b"")
        os.utime(tmp_path / name / "tuner.pkl", (mtime, mtime))
    (tmp_path / "acgan-s0-new-optuna.db").write_bytes(b"")
    (tmp_path / "acgan-s0-new-train-t1").mkdir()  # a Ray Train run: no tuner.pkl
    assert pipeline.newest_search(str(tmp_path), "acgan") == "acgan-s0-new"
    assert pipeline.newest_search(str(tmp_path), "dcgan") == "mine"  # no dcgan-*: any search
    assert pipeline.newest_search(str(tmp_path / "none"), "acgan") is None


def test_resume_refuses_other_settings_or_data_unless_forced(tmp_path):
    from mlflow.tracking import MlflowClient

    client = MlflowClient(f"sqlite:///{tmp_path}/mlflow.db")
    experiment = client.create_experiment("s", artifact_location=str(tmp_path / "artifacts"))
    parent = client.create_run(experiment, tags={"cxr.role": "search",
                                                 "cxr.data_fingerprint": "abc"}).info.run_id
    client.log_param(parent, "num_samples", "20")
    cfg = SearchConfig(experiment="acgan", preset="s0", name="s", resume=True)
    pipeline._check_resume_matches(client, cfg, {"num_samples": 20}, "abc")  # same: fine
    with pytest.raises(ConfigError, match="num_samples: '20' then, '8' now.*--force"):
        pipeline._check_resume_matches(client, cfg, {"num_samples": 8}, "abc")
    with pytest.raises(ConfigError, match="data fingerprint: abc then, xyz now"):
        pipeline._check_resume_matches(client, cfg, {"num_samples": 20}, "xyz")
    forced = SearchConfig(experiment="acgan", preset="s0", name="s", resume=True, force=True)
    pipeline._check_resume_matches(client, forced, {"num_samples": 8}, "abc")
    assert "num_samples" in client.get_run(parent).data.tags["cxr.resumed_with_differences"]


def test_resume_of_a_search_from_before_the_default_schedule_is_not_silently_changed(tmp_path):
    # A search started before full searches evaluated every EVAL_EVERY_IMAGES images did not
    # record base.eval_every_images: its trials ran with GANConfig's default (0: off).
    from mlflow.tracking import MlflowClient

    client = MlflowClient(f"sqlite:///{tmp_path}/mlflow.db")
    experiment = client.create_experiment("old", artifact_location=str(tmp_path / "artifacts"))
    parent = client.create_run(experiment, tags={"cxr.role": "search",
                                                 "cxr.data_fingerprint": "abc"}).info.run_id
    client.log_param(parent, "base.epochs", "20")
    cfg = SearchConfig(experiment="acgan", preset="s0", name="old", resume=True)
    now = {"base.epochs": 20, "base.eval_every_images": 8192}
    with pytest.raises(ConfigError, match=r"base.eval_every_images: '0' then, '8192' now.*"
                                          r"--set eval_every_images=0"):
        pipeline._check_resume_matches(client, cfg, now, "abc")
    # resumed as the message says: the trials keep their schedule
    pipeline._check_resume_matches(client, cfg, {**now, "base.eval_every_images": 0}, "abc")
    # a key recorded then but left out now is the default now (0), not "unchanged"
    client.log_param(parent, "base.min_evals", "4")
    with pytest.raises(ConfigError, match=r"base.min_evals: '4' then, '0' now.*"
                                          r"--set min_evals=4"):
        pipeline._check_resume_matches(client, cfg, {**now, "base.eval_every_images": 0}, "abc")


# ------------------------------------------------------------------------------ selection
def _epochs(**columns) -> pd.DataFrame:
    base = {"trial_id": ["a", "a", "b"], "epoch": [0, 1, 0], "g_loss": [0.5, 0.9, 1.0],
            "d_fake_acc": [0.2, 0.4, 0.5], "cas_acc": [0.9, 0.6, 0.5], "fid": [1.0, 2.0, 3.0],
            "kid": [0.01, 0.02, 0.03]}
    return pd.DataFrame({**base, **columns})


@pytest.mark.parametrize("policy", list(ranking.POLICIES))
def test_a_collapsed_or_constant_epoch_is_never_selected(policy):
    """a@0 has the best scores but its samples are one flat image: no policy picks it."""
    table = _epochs(constant_frac=[1.0, 0.0, 0.0], diversity_ratio=[0.6, 0.6, 0.1])
    ranked = ranking.rank(table, policy)
    top = ranked[ranked["rank"] == 1].iloc[0]
    assert (top["trial_id"], top["epoch"]) == ("a", 1)
    status = dict(zip(zip(ranked["trial_id"], ranked["epoch"]), ranked["status"]))
    assert status[("a", 0)] == "collapsed" and status[("b", 0)] == "collapsed"
    assert "constant_frac=1.00" in ranked.set_index(["trial_id", "epoch"]).loc[("a", 0), "reason"]


def test_when_every_epoch_is_collapsed_nothing_is_ranked():
    ranked = ranking.rank(_epochs(constant_frac=[1.0, 1.0, 0.9]), "staged")
    assert ranked["rank"].isna().all() and set(ranked["status"]) == {"collapsed"}
    with pytest.raises(ValueError, match="no epoch could be ranked"):
        ranking.best(ranked)


def test_the_searchs_best_objective_leaves_out_epochs_no_policy_may_select():
    """The parent's best_fid is a value the champion can have: a@0's FID 1.0 belongs to a
    constant image, so the search's best is a@1's 2.0 (over every epoch it would read 1.0)."""
    logged = {}

    class Client:
        def log_metric(self, run_id, key, value):
            logged[key] = value

    ranked = ranking.rank(_epochs(constant_frac=[1.0, 0.0, 0.0]), "staged")
    best = ranking.best(ranked).to_dict()
    finalize.log_summary_metrics(Client(), "parent", ranked, {"diverged": [("b", "nan")]},
                                 ("fid", "min"), best)
    assert logged["lowest_fid"] == 2.0 and logged["trials_diverged"] == 1.0
    assert logged["best_fid"] == best["fid"]  # the selected epoch's, one "best" everywhere
    everything_collapsed = ranking.rank(_epochs(constant_frac=[1.0, 1.0, 1.0]), "staged")
    logged.clear()
    finalize.log_summary_metrics(Client(), "parent", everything_collapsed, {}, ("fid", "min"))
    assert "best_fid" not in logged and "lowest_fid" not in logged
    assert logged["trials_finished"] == 0.0


def test_the_summary_says_why_the_lowest_fid_epoch_was_not_selected_and_lists_trials():
    ranked = ranking.rank(_epochs(constant_frac=[1.0, 0.0, 0.0]), "staged")
    best = ranking.best(ranked).to_dict()
    line = finalize.versus_lowest(ranked, best, ("fid", "min"))
    assert line.startswith("the lowest fid (1) was trial a, epoch 0: ") and "constant" in line
    rows = finalize.trial_table(ranked, {"diverged": [("b", "nan")]}, ("fid", "min"))
    assert [r["trial"] for r in rows] == ["a", "b"]
    assert rows[0]["best_epoch"] == 1 and rows[1]["status"] == "diverged"
    text = finalize.format_summary({"search": "s", "trials": 2, "policy": "staged",
                                    "mlflow_uri": "sqlite:///m.db", "trial_table": rows,
                                    "best": None, "next": ["python -m orchestrator.report s"]})
    assert "trials:" in text and "next:\n  python -m orchestrator.report s" in text


def test_epochs_whose_generator_was_not_kept_or_whose_trial_was_killed_are_not_ranked():
    table = _epochs(kept=[False, True, True], run_status=["FINISHED", "FINISHED", "KILLED"])
    ranked = ranking.rank(table, "staged")
    status = dict(zip(zip(ranked["trial_id"], ranked["epoch"]), ranked["status"]))
    assert status == {("a", 1): "ranked", ("a", 0): "not_kept", ("b", 0): "killed"}


def test_asha_counts_images_under_an_image_budget():
    """Issue 22 item 2: with `max_images`, ASHA's rungs are image counts (a share of the
    budget), otherwise epochs."""
    from types import SimpleNamespace

    from orchestrator.run.tuner import scheduler

    cfg = SimpleNamespace(scheduler="asha", asha_grace=0.25)
    by_images = scheduler(cfg, "best_fid", "min", 10, None, max_images=100_000)
    assert (by_images._time_attr, by_images._max_t) == ("images_seen", 100_000)
    assert [rung for rung, _ in by_images._brackets[0]._rungs] == [100_000, 50_000, 25_000]
    assert scheduler(cfg, "best_fid", "min", 10, None)._time_attr == "training_iteration"


def test_the_champion_views_follow_the_searchs_metrics():
    """A search that measured no Inception metric loads no Inception network at its end: the
    t-SNE is skipped with the reason; the copy view follows 'memorisation'."""
    tags = {}

    class Client:
        def set_tag(self, run_id, key, value):
            tags[key] = value

    wanted = finalize._views_wanted(Client(), "parent", ("visual",))
    assert wanted == {"tsne": False, "memorisation": False}
    assert tags["cxr.tsne_skipped"].startswith("not drawn: the search measured visual")
    assert tags["cxr.tsne_skipped"].endswith("needs one of fid,kid,intra_fid,is,"
                                             "memorisation_inception")
    assert tags["cxr.copy_view_skipped"].endswith("needs memorisation")
    tags.clear()
    assert finalize._views_wanted(Client(), "parent", ("kid", "memorisation")) == {
        "tsne": True, "memorisation": True}
    assert tags == {}


def test_the_trial_table_names_the_rankings_pick_not_the_lowest_objective():
    """Before, the champion's trial row said "best epoch 1" (lowest FID) under a summary
    whose champion was epoch 0 (the staged policy's pick): one "best" per trial now."""
    ranked = ranking.rank(_epochs(fid=[2.0, 1.0, 3.0]), "staged")
    best = ranking.best(ranked).to_dict()
    rows = {r["trial"]: r for r in finalize.trial_table(ranked, {}, ("fid", "min"))}
    assert (best["trial_id"], best["epoch"]) == ("a", 0)
    assert rows["a"]["best_epoch"] == 0 and rows["a"]["fid"] == 2.0
    unranked = {r["trial"]: r for r in finalize.trial_table(_epochs(fid=[2.0, 1.0, 3.0]), {},
                                                             ("fid", "min"))}
    assert unranked["a"]["best_epoch"] == 1  # no ranking: the objective decides
