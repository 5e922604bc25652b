"""How a trial's numbers land in MLflow (issue 14): curves grouped by prefix so the UI shows
sections (eval/ first, eval_ci/, search/, train/), per-trial constants as params, no `epoch` chart, and a
resumed search continuing the same run without replaying epochs."""
from __future__ import annotations

from types import SimpleNamespace

import pytest
from mlflow.tracking import MlflowClient

from orchestrator.store.layout import (LAST_EPOCH, METRIC_GROUPS, metric_key, metric_name)
from orchestrator.store.reader import load_epoch_table, load_search
from orchestrator.store.writer import MlflowSearchCallback, start_parent_run


@pytest.mark.parametrize("name, key", [
    ("fid", "eval/fid"), ("diversity_ratio", "eval/diversity_ratio"),
    ("val_macro_f1", "eval/val_macro_f1"), ("g_loss", "train/g_loss"),
    ("d_g_z1", "train/d_g_z1"), ("kid_ci_low", "eval_ci/kid_ci_low"), ("kid_se", "eval_ci/kid_se"),
    ("best_fid", "search/best_fid"), ("keep_score", "search/keep_score"),
    ("test_f1/COVID-19", "test/test_f1/COVID-19")])
def test_every_metric_has_a_group_and_the_name_comes_back(name, key):
    assert metric_key(name) == key
    assert key.split("/")[0] in METRIC_GROUPS
    assert metric_name(key) == name


def test_the_ui_opens_on_the_evaluation_and_old_bounds_still_read():
    """MLflow's run page sorts chart sections by name (checked in the UI): eval comes first."""
    groups = {metric_key(n).split("/")[0] for n in ("fid", "kid_ci_low", "g_loss", "best_fid",
                                                      "time_eval_s", "test_f1")}
    assert sorted(groups)[0] == "eval"
    assert metric_name("ci/kid_ci_low") == "kid_ci_low"  # stores written before the rename
    # a training counter is no evaluation: it does not head the eval section
    assert metric_key("images_seen") == "train/images_seen"
    assert metric_name("eval/images_seen") == "images_seen"  # stores written before


def test_keys_outside_the_groups_are_read_as_they_are():
    assert metric_name("gan_positional_vs_none/macro_f1_diff") == "gan_positional_vs_none/macro_f1_diff"
    assert metric_name("fid") == "fid"


def _result(epoch: int, fid: float, world_size: int = 1) -> dict:
    return {"epoch": epoch, "fid": fid, "kid_ci_low": 0.01, "g_loss": 1.5, "best_fid": fid,
            "keep_score": -fid, "fid_dims": 768, "fid_n_fake": 48, "cas_real_acc": 0.8,
            "world_size": world_size, "training_iteration": epoch + 1, "time_total_s": 3.0}


def test_a_trial_is_logged_in_groups_with_constants_as_params_and_resumes(tmp_path):
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    client = MlflowClient(uri)
    client.create_experiment("s", artifact_location=str(tmp_path / "artifacts"))
    parent = start_parent_run(client, "s", {"experiment": "acgan"}, {})
    trial = SimpleNamespace(trial_id="t1", config={"lr_g": 2e-4}, last_result={})
    callback = MlflowSearchCallback(uri, "s", parent, dataset=(str(tmp_path), "f" * 64))
    callback.on_trial_result(0, [], trial, _result(0, 3.0))
    callback.on_trial_result(1, [], trial, _result(1, 2.0, world_size=2))

    run = client.get_run(callback.run_for(trial))
    assert {"eval/fid", "eval_ci/kid_ci_low", "train/g_loss", "search/best_fid",
            "search/keep_score"} <= set(run.data.metrics)
    assert not {"epoch", "fid", "fid_dims", "world_size", "cas_real_acc",
                "training_iteration", "time_total_s"} & set(run.data.metrics)
    assert not any(k.startswith("eval/fid_dims") for k in run.data.metrics)
    params = run.data.params
    assert params["fid_protocol.dims"] == "768" and params["fid_protocol.cas_real_acc"] == "0.8"
    assert params["world_size"] == "1"  # params are immutable: the first value stands
    assert params["lr_g"] == "0.0002" and run.data.tags[LAST_EPOCH] == "1"
    assert run.data.tags["mlflow.source.name"] == "orchestrator.search"  # the UI's Source
    # the data as an MLflow dataset: where it is, and the fingerprint as its digest
    (logged,) = run.inputs.dataset_inputs
    assert logged.dataset.digest == "f" * 36 and logged.dataset.name == tmp_path.name
    assert str(tmp_path) in logged.dataset.source
    assert {t.key: t.value for t in logged.tags}["mlflow.data.context"] == "training"

    # A resumed search: a fresh callback replays epoch 1 (already logged) and goes on to 2.
    again = MlflowSearchCallback(uri, "s", parent)
    again.on_trial_result(1, [], trial, _result(1, 9.9))
    again.on_trial_result(2, [], trial, _result(2, 1.5))
    assert again.run_for(trial) == run.info.run_id
    history = client.get_metric_history(run.info.run_id, "eval/fid")
    assert sorted((m.step, m.value) for m in history) == [(0, 3.0), (1, 2.0), (2, 1.5)]

    # The rest of the product reads plain names.
    table = load_epoch_table(load_search("s", uri))
    assert list(table["fid"]) == [3.0, 2.0, 1.5] and "g_loss" in table and "eval/fid" not in table
