"""The report command and the plots against a small, well-formed MLflow search store.

`build_fake_search` logs, through MlflowClient, exactly the layout `orchestrator/store/writer.py`
and `orchestrator/finalize.py` write (2 trials x 3 epochs, a ranking artefact, grid PNGs);
`tests/test_notebooks.py` reuses it.
"""
from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from orchestrator import plots, view
from orchestrator.cli import report as report_cli
from orchestrator.store import reader
from orchestrator.study import store as study_store

SEARCH = "fake-acgan-search"
# trial -> per-epoch (g_loss, d_loss, fid, kid, cas_acc)
METRICS = {
    "t_a": [(2.0, 1.0, 300.0, 0.30, 0.40), (1.5, 0.9, 200.0, 0.20, 0.50),
            (1.2, 0.8, 150.0, 0.15, 0.45)],
    "t_b": [(2.2, 1.1, 280.0, 0.28, 0.42), (1.4, 0.7, 180.0, 0.18, 0.62),
            (1.1, 0.6, 170.0, 0.17, 0.55)],
}
PARAMS = {"t_a": {"lr_g": "0.0002", "lr_d": "0.0001", "beta1": "0.5", "batch_size": "32",
                  "scheduler": "none"},
          "t_b": {"lr_g": "0.001", "lr_d": "0.0004", "beta1": "0.9", "batch_size": "64",
                  "scheduler": "cosine"}}
# The ranking picks t_b@1 (best CAS), NOT the lowest FID (t_a@2): the report must follow it.
BEST = ("t_b", 1)


def _grid_png(path: Path, shade: int, rows: int = 2) -> Path:
    from PIL import Image

    image = np.full((rows * 32, 4 * 32), shade, dtype=np.uint8)
    image[::8] = 255 - shade  # some structure, so the PNG is not flat
    Image.fromarray(image).save(path)
    return path


def build_fake_search(root: Path, data: str, *, with_best_tags: bool = True,
                      protocol: bool = False, study: bool = False) -> tuple[str, str]:
    """A sqlite MLflow store under root holding one fake search; returns (uri, search name)."""
    from mlflow.entities import Metric
    from mlflow.tracking import MlflowClient

    root.mkdir(parents=True, exist_ok=True)
    uri = f"sqlite:///{root / 'mlflow.db'}"
    client = MlflowClient(uri)
    exp = client.create_experiment(SEARCH, artifact_location=(root / "artifacts").as_uri())
    parent = client.create_run(exp, run_name=SEARCH, tags={
        "cxr.role": "search", "cxr.experiment": "acgan", "cxr.preset": "s0"}).info.run_id
    for key, value in {"experiment": "acgan", "preset": "s0", "data": data, "policy": "staged",
                       "objective": "fid", "base.resolution": "32", "base.channels": "1"}.items():
        client.log_param(parent, key, value)
    if protocol:
        client.log_param(parent, "fid_protocol.extractor", "tf-inception-2015-12-05")
        client.log_param(parent, "fid_protocol.n_fake", "200")
    tmp = root / "staging"
    tmp.mkdir(exist_ok=True)
    run_ids = {}
    for trial, rows in METRICS.items():
        run = client.create_run(exp, run_name=f"trial-{trial}", tags={
            "cxr.role": "trial", "cxr.trial_id": trial, "mlflow.parentRunId": parent})
        run_ids[trial] = run_id = run.info.run_id
        for key, value in PARAMS[trial].items():
            client.log_param(run_id, key, value)
        now = int(time.time() * 1000)
        for epoch, (g, d, fid, kid, cas) in enumerate(rows):
            values = {"g_loss": g, "d_loss": d, "fid": fid, "kid": kid, "kid_ci_low": kid - 0.05,
                      "kid_ci_high": kid + 0.05, "cas_acc": cas, "cas_acc_ci_low": cas - 0.1,
                      "cas_acc_ci_high": cas + 0.1, "d_fake_acc": 0.3}
            client.log_batch(run_id, metrics=[Metric(k, v, now + epoch, epoch)
                                              for k, v in values.items()])
            grid = _grid_png(tmp / f"epoch_{epoch:04d}.png", 40 + 60 * epoch)
            client.log_artifact(run_id, str(grid), artifact_path="grids")
            client.set_tag(run_id, f"ckpt.epoch_{epoch:04d}",
                           str(root / "ckpt" / trial / str(epoch)))
        client.set_terminated(run_id, "FINISHED")
    ranking = pd.DataFrame([
        {"trial_id": t, "epoch": e, "fid": r[2], "cas_acc": r[4]}
        for t, rows in METRICS.items() for e, r in enumerate(rows)])
    order = {("t_b", 1): 1, ("t_a", 1): 2, ("t_b", 2): 3, ("t_a", 2): 4}
    ranking["rank"] = [order.get((t, e), np.nan) for t, e in zip(ranking.trial_id, ranking.epoch)]
    ranking["reason"] = ["best cas_acc among the FID shortlist" if (t, e) == BEST else
                         ("not rankable: warm-up epoch" if e == 0 else "shortlisted")
                         for t, e in zip(ranking.trial_id, ranking.epoch)]
    ranking = ranking.sort_values("rank", na_position="last")
    (tmp / "ranking.csv").write_text(ranking.to_csv(index=False))
    ranking.to_parquet(tmp / "ranking.parquet")
    for name in ("ranking.csv", "ranking.parquet"):
        client.log_artifact(parent, str(tmp / name), artifact_path="ranking")
    if with_best_tags:  # a finished search also has the champion's copy view
        client.log_artifact(parent, str(_grid_png(tmp / "most_copied.png", 120)),
                            artifact_path="memorisation")
        client.set_tag(parent, "cxr.best_trial_id", BEST[0])
        client.set_tag(parent, "cxr.best_epoch", str(BEST[1]))
        client.set_tag(parent, "cxr.best_run_id", run_ids[BEST[0]])
        client.set_tag(parent, "cxr.best_versus_lowest",
                       "the lowest fid (2.1) was trial t_a, epoch 2: collapsed")
    client.set_terminated(parent, "FINISHED")
    if study:
        _fake_study(client, root, tmp)
    return uri, SEARCH


def _fake_study(client, root: Path, tmp: Path) -> None:
    exp = client.create_experiment("fake-study", artifact_location=(root / "study_art").as_uri())
    run = client.create_run(exp, run_name="fake-study", tags={"cxr.role": "study"}).info.run_id
    table = pd.DataFrame({"strategy": ["baseline", "gan_oversample"], "f1": [0.80, 0.84],
                          "f1_ci_low": [0.75, 0.79], "f1_ci_high": [0.85, 0.89]})
    (tmp / "table.csv").write_text(table.to_csv(index=False))
    client.log_artifact(run, str(tmp / "table.csv"), artifact_path="study")
    client.log_artifact(run, str(_grid_png(tmp / "baseline.png", 90)), artifact_path="confusion")
    client.set_terminated(run, "FINISHED")


@pytest.fixture(autouse=True)
def _data_cache(tmp_path_factory, monkeypatch):
    # One decoded-image cache for the whole session, outside the user's ~/.cache.
    monkeypatch.setenv("CXR_CACHE_DIR", str(tmp_path_factory.getbasetemp() / "cxr-cache"))


@pytest.fixture(scope="module")
def store(tmp_path_factory, pneumoniamnist_npz):
    """A finished search with best tags, plus a study (read-only: shared by the module)."""
    return build_fake_search(tmp_path_factory.mktemp("store"), str(pneumoniamnist_npz),
                             study=True)


@pytest.fixture(scope="module")
def bare_store(tmp_path_factory):
    """No cxr.best_* tags, an FID protocol, a data source that does not exist, no study."""
    root = tmp_path_factory.mktemp("bare")
    return build_fake_search(root, str(root / "no_such_data"), with_best_tags=False,
                             protocol=True)


def _is_png(path: Path) -> bool:
    return (path.is_file() and path.stat().st_size > 2000
            and path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n")


# ------------------------------------------------------------------------------ end to end
def test_report_command_writes_figures_and_names_the_ranked_best(store, tmp_path, capsys):
    """The CLI end to end: every figure, and the best (trial, epoch) of the ranking."""
    uri, name = store
    out = tmp_path / "report"
    assert report_cli.main([name, "--out", str(out), "--mlflow-uri", uri]) == 0
    assert str(out / "report.md") in capsys.readouterr().out
    for fig in ("loss_curves.png", "metric_curves.png", "hparams_vs_objective.png",
                "pareto_front.png", "top_grids.png"):
        assert _is_png(out / fig), fig
    md = (out / "report.md").read_text()
    assert "**Best: trial `t_b`, epoch 1**" in md  # from the ranking, not the lowest FID
    assert "- not the same epoch as the lowest fid (2.1) was trial t_a, epoch 2: collapsed" in md
    assert "best cas_acc among the FID shortlist" in md
    # the selected epoch's metrics with their CIs
    assert "| cas_acc | 0.62 | [0.52, 0.72] |" in md
    assert "| kid | 0.18 | [0.13, 0.23] |" in md
    assert "## FID protocol\n\nnot recorded" in md
    assert "no tsne/*.png artefact" in md
    assert (out / "memorisation_0.png").read_bytes()[:4] == b"\x89PNG"
    assert "](memorisation_0.png)" in md
    assert "(logged as memorisation/most_copied.png)" in md
    assert "### Winning hyper-parameters" in md
    for fig in ("loss_curves.png", "top_grids.png", "pareto_front.png"):
        assert f"]({fig})" in md
    assert "real images beside the grids" not in md  # the real grid was drawn


def test_latest_and_ranking_fallback_without_best_tags(bare_store):
    uri, _ = bare_store
    record = reader.load_search("latest", uri)
    assert record.name == SEARCH and sorted(record.trials) == ["t_a", "t_b"]
    ranking = reader.load_ranking(record)
    assert reader.selected_epoch(record, ranking) == BEST  # rank 1 of the ranking artefact
    assert reader.fid_protocol(record) == {"fid_protocol.extractor": "tf-inception-2015-12-05",
                                           "fid_protocol.n_fake": "200"}
    table = reader.load_epoch_table(record)
    assert len(table) == 6
    assert table.loc[(table.trial_id == "t_a") & (table.epoch == 2), "fid"].item() == 150.0
    assert view.pareto_axes(record, table) == [("fid", "min"), ("cas_acc", "max")]


def test_unknown_search_and_missing_store_are_clear_errors(store, tmp_path, capsys):
    uri, _ = store
    assert report_cli.main(["no-such-search", "--mlflow-uri", uri, "--out", str(tmp_path / "r")]) == 2
    err = capsys.readouterr().err
    assert "no search named 'no-such-search'" in err and SEARCH in err
    missing = f"sqlite:///{tmp_path / 'nowhere' / 'mlflow.db'}"
    assert report_cli.main(["latest", "--mlflow-uri", missing, "--out", str(tmp_path / "r2")]) == 2
    assert "no MLflow store at" in capsys.readouterr().err
    assert not (tmp_path / "nowhere").exists()  # no empty store created by accident
    assert not (tmp_path / "r").exists() and not (tmp_path / "r2").exists()


def test_unloadable_real_data_is_reported_not_hidden(bare_store, tmp_path):
    uri, name = bare_store
    md = view.write_report(name, uri, tmp_path / "out").read_text()
    assert "real images beside the grids" in md and "no_such_data" in md
    assert _is_png(tmp_path / "out" / "top_grids.png")  # the generated grids are still shown
    assert "**Best: trial `t_b`, epoch 1**" in md
    assert "- `fid_protocol.extractor`: tf-inception-2015-12-05" in md
    assert sorted(p.name for p in (tmp_path / "out").iterdir() if p.is_dir()) == []


def test_study_loader(store, bare_store, tmp_path):
    study = study_store.load_study("latest", store[0], tmp_path / "dl")
    assert list(study.table["strategy"]) == ["baseline", "gan_oversample"]
    assert len(study.confusion) == 1 and study.confusion[0].is_file()
    assert any("gradcam" in m for m in study.missing)
    assert any("table.md" in m for m in study.missing)
    empty = study_store.load_study("latest", bare_store[0], tmp_path / "dl2", missing_ok=True)
    assert empty.run_id is None and "no study run" in empty.missing[0]
    with pytest.raises(reader.StoreError, match="no study run"):
        study_store.load_study("latest", bare_store[0], tmp_path / "dl3")


# ------------------------------------------------------------------------------ pure functions
def test_pareto_mask_analytic():
    values = np.array([[1.0, 0.5],   # best fid
                       [2.0, 0.9],   # best cas
                       [2.0, 0.5],   # dominated by both
                       [1.5, 0.7],   # trade-off: on the front
                       [np.nan, 1.0],  # NaN: never on the front
                       [1.0, 0.5]])  # tie with row 0: neither dominates the other
    mask = plots.pareto_mask(values, ["min", "max"])
    assert mask.tolist() == [True, True, False, True, False, True]
    assert plots.pareto_mask(values[:4], ["max", "max"]).tolist() == [False, True, False, False]
    with pytest.raises(ValueError, match="directions"):
        plots.pareto_mask(values, ["min", "up"])


def test_best_per_trial_and_real_grid():
    table = pd.DataFrame({"trial_id": ["a", "a", "b"], "epoch": [0, 1, 0], "fid": [3.0, 1.0, 2.0]})
    assert plots.best_per_trial(table, "fid", "min").to_dict() == {"a": 1.0, "b": 2.0}
    assert plots.best_per_trial(table, "fid", "max").to_dict() == {"a": 3.0, "b": 2.0}
    images = np.stack([np.full((4, 4, 1), v, np.uint8) for v in (10, 20, 30)])
    mosaic = plots.real_class_grid(images, np.array([0, 1, 1]), 3, per_class=2)
    assert mosaic.shape == (12, 8, 1)
    assert mosaic[0, 0, 0] == 10 and mosaic[0, 4, 0] == 0  # class 0 has one image: one black cell
    assert sorted({mosaic[4, 0, 0], mosaic[4, 4, 0]}) == [20, 30]
    assert mosaic[8:].max() == 0  # class 2 has none: an all-black row, visible


def test_plots_reject_tables_without_the_metric():
    table = pd.DataFrame({"trial_id": ["a"], "epoch": [0], "fid": [1.0]})
    with pytest.raises(ValueError, match="none of"):
        plots.loss_curves(table)
    with pytest.raises(ValueError, match="cas_acc"):
        plots.pareto_front(table, ("fid", "min"), ("cas_acc", "max"))


def test_conditional_hyper_parameters_are_plotted():
    """Optuna's conditional branches leave a parameter missing in some trials (beta1 only
    with Adam): numbers stay numbers, categories get an "n/a" tick; neither may crash."""
    import numpy as np
    import pandas as pd

    from orchestrator.plots import _as_positions

    x, ticks = _as_positions(pd.Series(["0.5", None, "0.9"], dtype=object))
    assert ticks is None and x[0] == 0.5 and np.isnan(x[1]) and x[2] == 0.9
    x, ticks = _as_positions(pd.Series(["adam", np.nan, "sgd"]))
    assert ticks == ["adam", "n/a", "sgd"] and list(x) == [0.0, 1.0, 2.0]


def test_figures_tell_the_truth_about_excluded_epochs_and_constants():
    """Issue 24 item 5: an epoch no policy may select is greyed and labelled, never on the
    Pareto front; the parameter figure shows only what the trials varied; d_g_z1 and
    d_g_z2 share one panel; epoch axes tick at whole epochs."""
    import pandas as pd

    table = pd.DataFrame({"trial_id": ["a", "a", "b", "b"], "epoch": [0, 1, 0, 1],
                          "fid": [0.5, 2.0, 3.0, 2.5], "cas_acc": [0.9, 0.6, 0.5, 0.7],
                          "g_loss": [1.0, 0.9, 1.2, 1.1], "d_g_z1": [0.4, 0.3, 0.5, 0.4],
                          "d_g_z2": [0.3, 0.2, 0.4, 0.3],
                          "status": ["collapsed", "ranked", "ranked", "ranked"]})
    fig = plots.metric_curves(table, ["fid"], ("a", 1))
    labels = fig.axes[0].get_legend_handles_labels()[1]
    assert "excluded: collapsed" in labels
    assert all(float(t).is_integer() for t in fig.axes[0].get_xticks())
    front = plots.pareto_front(table, ("fid", "min"), ("cas_acc", "max"))
    texts = [t.get_text() for t in front.axes[0].texts]
    assert "a@0" not in texts and "excluded: collapsed" in front.axes[0].get_legend_handles_labels()[1]
    losses = plots.loss_curves(table)
    assert any("d_g_z1" in ax.get_title() and "d_g_z2" in ax.get_title() for ax in losses.axes)
    # the losses and D's scores of the fakes grey the excluded epoch too
    assert all("excluded: collapsed" in ax.get_legend_handles_labels()[1]
               for ax in losses.axes if ax.get_visible() and ax.has_data())
    # a trial's "best" is over the epochs a policy may select: a's 0.5 was a collapsed epoch
    assert plots.best_per_trial(table, "fid", "min").to_dict() == {"a": 2.0, "b": 2.5}
    shut_out = table.assign(status=["collapsed", "collapsed", "ranked", "ranked"])
    assert plots.best_per_trial(shut_out, "fid", "min").isna().to_dict() == {"a": True, "b": False}
    params = pd.DataFrame({"lr_g": ["1e-4", "2e-4"], "data": ["/x", "/x"], "sha": ["f", "f"]},
                          index=["a", "b"])
    assert plots.varied(params) == ["lr_g"]
    fig = plots.hparams_vs_objective(params, pd.Series({"a": 2.0, "b": 2.5}), "fid")
    assert [ax.get_xlabel() for ax in fig.axes if ax.get_visible()] == ["lr_g"]
    # a trial with no selectable epoch: a grey cross at its value, labelled as excluded
    fig = plots.hparams_vs_objective(params, pd.Series({"a": float("nan"), "b": 2.5}), "fid",
                                     excluded=pd.Series({"a": 0.5}))
    assert "trial excluded (no selectable epoch)" in fig.axes[0].get_legend_handles_labels()[1]


def test_contact_epochs_are_evenly_spaced_with_the_first_and_last():
    assert plots.contact_epochs(range(5)) == [0, 1, 2, 3, 4]
    picked = plots.contact_epochs(range(100), rows=8)
    assert len(picked) == 8 and picked[0] == 0 and picked[-1] == 99
    assert max(b - a for a, b in zip(picked, picked[1:])) - min(
        b - a for a, b in zip(picked, picked[1:])) <= 1


def test_each_trial_gets_a_contact_sheet_of_its_grids(tmp_path):
    """finalize draws every trial's sheet from the grids it logged (at most CONTACT_ROWS
    epochs); a trial without grids gets the reason as a tag instead of a broken image."""
    from mlflow.tracking import MlflowClient
    from PIL import Image

    from orchestrator.finalize import log_contact_sheets
    from orchestrator.store.layout import (PARENT, ROLE, TRIAL_ID, experiment_id, grid_artifact,
                                           trial_runs)
    from orchestrator.store.writer import start_parent_run

    client = MlflowClient(f"sqlite:///{tmp_path}/mlflow.db")
    parent = start_parent_run(client, "s", {}, {})
    runs = {}
    for trial, epochs in (("t1", 12), ("t2", 0)):
        runs[trial] = client.create_run(experiment_id(client, "s"), tags={
            ROLE: "trial", PARENT: parent, TRIAL_ID: trial}).info.run_id
        for epoch in range(epochs):
            png = tmp_path / trial / grid_artifact(epoch)
            png.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(np.full((40, 120, 3), 20 * epoch % 255, np.uint8)).save(png)
            client.log_artifact(runs[trial], str(png), artifact_path="grids")
    trials = trial_runs(client, experiment_id(client, "s"), parent)
    assert log_contact_sheets(client, trials, {"trial_id": "t1", "epoch": 5}) == 1
    sheet = Path(client.download_artifacts(runs["t1"], "contact_sheet/contact_sheet.png",
                                           str(tmp_path / "got")))
    width, height = Image.open(sheet).size
    assert height > 4 * width * 40 / 120  # eight rows of 40x120 grids, stacked
    assert width >= 120  # each grid at (at least) its own pixels, never shrunk
    assert "no sample grids" in client.get_run(runs["t2"]).data.tags["cxr.contact_sheet_skipped"]


def test_each_trial_gets_its_losses_and_both_scores_of_the_fakes_on_one_figure(tmp_path):
    """MLflow draws one metric per chart: finalize logs d_g_z1 and d_g_z2 (and the losses) of
    each trial as one figure; a trial that reported no epoch gets the reason as a tag."""
    from mlflow.tracking import MlflowClient
    from PIL import Image

    from orchestrator.finalize import log_training_curves
    from orchestrator.store.layout import PARENT, ROLE, TRIAL_ID, experiment_id, trial_runs
    from orchestrator.store.writer import start_parent_run

    client = MlflowClient(f"sqlite:///{tmp_path}/mlflow.db")
    parent = start_parent_run(client, "s", {}, {})
    runs = {trial: client.create_run(experiment_id(client, "s"), tags={
        ROLE: "trial", PARENT: parent, TRIAL_ID: trial}).info.run_id for trial in ("t1", "t2")}
    epochs = np.arange(6)
    table = pd.DataFrame({"trial_id": "t1", "epoch": epochs, "g_loss": 2.0 - 0.1 * epochs,
                          "d_loss": 0.5 + 0.05 * epochs, "d_g_z1": 0.2 + 0.01 * epochs,
                          "d_g_z2": 0.3 - 0.01 * epochs})
    assert log_training_curves(client, trial_runs(client, experiment_id(client, "s"), parent),
                               table) == 1
    png = Path(client.download_artifacts(runs["t1"], "curves/training.png", str(tmp_path / "got")))
    width, height = Image.open(png).size
    assert width > 2 * height  # three panels side by side: g_loss, d_loss, d_g_z1 + d_g_z2
    assert "no epoch" in client.get_run(runs["t2"]).data.tags["cxr.training_curves_skipped"]
