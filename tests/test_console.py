"""The search's console (orchestrator.console) and `rank` as a finished tool."""
from __future__ import annotations

import io
import pickle
from types import SimpleNamespace

import pandas as pd

from orchestrator.cli import rank
from orchestrator.console import ConsoleCallback


class _Clock:
    def __init__(self):
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def _trial(trial_id: str, **last):
    return SimpleNamespace(trial_id=trial_id, last_result=last, error_file=None)


def test_one_line_per_epoch_with_the_objective_and_a_progress_line_with_eta():
    out, clock = io.StringIO(), _Clock()
    console = ConsoleCallback("fid", "min", epochs=3, num_samples=2, out=out, clock=clock,
                              progress_every_s=0)
    a, b = _trial("a"), _trial("b")
    clock.now = 10
    console.on_trial_result(0, [], a, {"epoch": 0, "g_loss": 1.5, "d_fake_acc": 0.5,
                                       "best_fid": float("nan")})
    clock.now = 20
    console.on_trial_result(0, [], a, {"epoch": 1, "fid": 3.0, "best_fid": 3.0, "g_loss": 1.2,
                                       "d_fake_acc": 0.6})
    console.on_trial_complete(0, [], _trial("b", diverged=1.0, stop_reason="non-finite g_loss"))
    lines = out.getvalue().splitlines()
    assert lines[0] == "trial a  epoch 0 (1/3)  fid - (best -)  g_loss 1.5  d_fake_acc 0.5"
    assert lines[2] == "trial a  epoch 1 (2/3)  fid 3 (best 3)  g_loss 1.2  d_fake_acc 0.6"
    assert "trial b diverged: non-finite g_loss" in lines
    last = lines[-1]
    # 2 of a's epochs + b's whole budget (it ended) = 5 of 6.  The rate comes from the epochs
    # run since the first result (setup before it is not a rate): 1 epoch in 10 s.
    assert "ETA" not in lines[1]
    assert "5/6 epochs, 1/2 trials ended, 0m20s, ETA 0m10s" in last
    assert "best fid 3 (trial a, epoch 1)" in last
    del b


def test_a_trial_short_of_its_budget_was_stopped_by_the_scheduler():
    out = io.StringIO()
    console = ConsoleCallback("fid", "min", epochs=4, num_samples=1, out=out)
    console.on_trial_result(0, [], _trial("a"), {"epoch": 0, "fid": 3.0, "best_fid": 3.0})
    console.on_trial_complete(0, [], _trial("a", epoch=0))
    assert "trial a stopped by the scheduler after epoch 0 (1 of 4 epochs)" in out.getvalue()


def test_the_console_survives_tunes_pickling_on_resume():
    console = ConsoleCallback("fid", "min", epochs=3, num_samples=2, out=io.StringIO())
    console.on_trial_result(0, [], _trial("a"), {"epoch": 0, "fid": 3.0, "best_fid": 3.0})
    restored = pickle.loads(pickle.dumps(console))
    assert restored.first_at is None and "ETA" not in restored.progress()
    restored.on_trial_result(0, [], _trial("a"), {"epoch": 1, "fid": 2.0, "best_fid": 2.0})
    assert "ETA" not in restored.progress()  # the restored epochs are no rate of this process


# ------------------------------------------------------------------------------ rank
def test_rank_shows_integer_epochs_and_documents_every_option():
    table = pd.DataFrame({"rank": [1], "trial_id": ["a"], "epoch": [3.0], "status": ["ranked"],
                          "reason": ["r"]})
    assert rank.shown(table).splitlines()[1].split()[:3] == ["1", "a", "3"]
    parser = rank.build_parser()
    undocumented = [a.dest for a in parser._actions if not a.help]
    assert undocumented == []


def _stored_search(tmp_path):
    """A finished search in a sqlite store: two trials x two epochs with real generator.pt
    checkpoints, trial a epoch 1 selected and registered as champion."""
    from mlflow.entities import Metric
    from mlflow.tracking import MlflowClient

    from orchestrator.config import SearchConfig
    from orchestrator.store.layout import metric_key
    from orchestrator.store.models import register_generator
    from trainables.gan import GANConfig
    from trainables.gan.build import build_generator
    from trainables.gan.checkpoint import save_generator

    uri = f"sqlite:///{tmp_path}/mlflow.db"
    client = MlflowClient(uri)
    exp = client.create_experiment("s", artifact_location=str(tmp_path / "artifacts"))
    parent = client.create_run(exp, tags={"cxr.role": "search"}).info.run_id
    for key, value in {"experiment": "acgan", "preset": "s0", "smoke": "True",
                       "storage": str(tmp_path / "ray_results")}.items():
        client.log_param(parent, key, value)
    cfg = GANConfig(resolution=16, width=0.0625)
    runs = {}
    for trial, fids in (("a", (3.0, 2.0)), ("b", (2.5, 2.2))):
        run = client.create_run(exp, tags={"cxr.role": "trial", "cxr.trial_id": trial,
                                           "mlflow.parentRunId": parent}).info.run_id
        runs[trial] = run
        for epoch, fid in enumerate(fids):
            folder = tmp_path / trial / f"epoch_{epoch}"
            folder.mkdir(parents=True)
            save_generator(folder, build_generator(cfg, 2, ("A", "B")), cfg, ("A", "B"), (0, 1))
            client.set_tag(run, f"ckpt.epoch_{epoch:04d}", str(folder))
            values = {"fid": fid, "kid": fid / 100, "cas_acc": 0.6, "g_loss": 1.0,
                      "d_fake_acc": 0.5, "constant_frac": 0.0, "diversity_ratio": 0.6}
            # as the search's writer logs them: grouped keys (`eval/fid`, `train/g_loss`)
            client.log_batch(run, [Metric(metric_key(k), v, 0, epoch) for k, v in values.items()])
    for key, value in {"cxr.best_trial_id": "a", "cxr.best_epoch": "1"}.items():
        client.set_tag(parent, key, value)
    search = SearchConfig(experiment="acgan", preset="s0", name="s", mlflow_uri=uri)
    register_generator(search, runs["a"], str(tmp_path / "a" / "epoch_1"), 1)
    return client, uri, parent


def _optuna_study(tmp_path, trials=("a", "b")):
    """The search's Optuna study as the tuner leaves it: a trial per Tune trial id."""
    import optuna

    from orchestrator.store import optuna_notes

    url = optuna_notes.study_url(str(tmp_path / "ray_results"), "s")
    optuna_notes.study_path(str(tmp_path / "ray_results"), "s").parent.mkdir(parents=True)
    study = optuna.create_study(study_name="s", storage=url)
    for trial in trials:
        asked = study.ask()
        asked.set_user_attr("tune_trial_id", trial)
        study.tell(asked, 1.0)
    study.set_user_attr("cxr.selected", "tune trial a, epoch 1 · MLflow run ?")
    return url


def test_a_rerank_moves_the_selection_and_the_champion_unless_dry_run(tmp_path, capsys):
    import optuna

    client, uri, parent = _stored_search(tmp_path)
    url = _optuna_study(tmp_path)
    verdicts = tmp_path / "v.csv"
    verdicts.write_text("trial_id,epoch,verdict\na,1,reject\n")
    args = ["latest", "--mlflow-uri", uri, "--out", str(tmp_path / "out"), "--policy",
            "weighted", "--verdicts", str(verdicts)]
    assert rank.main([*args, "--dry-run"]) == 0
    assert "--dry-run: would select trial b, epoch 1 (now: trial a, epoch 1)" in capsys.readouterr().out
    assert client.get_run(parent).data.tags["cxr.best_trial_id"] == "a"
    assert rank.main(args) == 0
    assert "selected trial b, epoch 1 (was trial a, epoch 1)" in capsys.readouterr().out
    tags = client.get_run(parent).data.tags
    assert (tags["cxr.best_trial_id"], tags["cxr.best_epoch"]) == ("b", "1")
    # one "best" after the move too: the parent's best_fid is the new selection's, and every
    # screen says why the lowest FID (a@1, rejected by the verdicts) was not taken
    assert client.get_run(parent).data.metrics["best_fid"] == 2.2
    assert tags["cxr.best_versus_lowest"].startswith("the lowest fid (2) was trial a, epoch 1")
    assert "not the same epoch as the lowest fid (2)" in tags["mlflow.note.content"]
    champion = client.get_model_version_by_alias("cxr-acgan-generator", "champion")
    assert str(champion.version) == "2" and champion.tags["epoch"] == "1"
    assert champion.tags["source_run_id"] == tags["cxr.best_run_id"]
    # ... and Optuna's notes name the new selection (they named a@1 before)
    notes = optuna.load_study(study_name="s", storage=url).user_attrs
    assert notes["cxr.selected"].startswith("tune trial b, epoch 1 · MLflow run "
                                            f"{tags['cxr.best_run_id']}"), notes
    # a@1 was rejected, so trial a's best selectable epoch is now 0
    assert notes["cxr.trial.0"].endswith("best selectable epoch 0 (fid 3)"), notes
    assert notes["cxr.trial.1"].endswith("best selectable epoch 1 (fid 2.2)"), notes
    assert rank.main(args) == 0
    assert "the selection is unchanged" in capsys.readouterr().out


def test_the_champion_carries_the_selected_epochs_metrics(tmp_path):
    """MLflow attaches to a logged model the metrics logged at its step: the chosen epoch's,
    not epoch 0's (trial a: fid 3.0 at epoch 0, 2.0 at epoch 1, epoch 1 registered)."""
    client, uri, parent = _stored_search(tmp_path)
    champion = client.get_model_version_by_alias("cxr-acgan-generator", "champion")
    model_id = champion.source.removeprefix("models:/")  # the version's logged model
    metrics = {m.key: (m.value, m.step) for m in client.get_logged_model(model_id).metrics}
    assert metrics["eval/fid"] == (2.0, 1)


def test_a_rerank_applies_the_searchs_own_limits():
    """The parent's params are the search's settings: `rank` reads the diversity limit the
    search ranked with (not the budget's default) and where its Optuna study lives."""
    from types import SimpleNamespace

    from orchestrator.cli.rank import search_config

    def record(**params):
        return SimpleNamespace(params={"experiment": "acgan", "preset": "s0", "smoke": "True",
                                       **params}, tags={}, name="s",
                               tracking_uri="sqlite:///m.db")

    cfg = search_config(record(min_diversity="0.4", storage="/data/ray_results"), "staged")
    assert cfg.diversity_limit() == 0.4 and cfg.storage == "/data/ray_results"
    old = search_config(record(), "staged")  # a search from before these were params
    assert old.diversity_limit() == old.__class__(experiment="acgan", preset="s0",
                                                  smoke=True).diversity_limit()
