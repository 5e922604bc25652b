"""End-to-end searches on real data (slow): smoke search, kill-and-resume, multi-node, DDP."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest

from conftest import SEARCH_CACHE_ENV
from orchestrator.store.layout import metric_key


pytestmark = pytest.mark.slow
REPO_ROOT = Path(__file__).resolve().parents[1]


def mlflow_runs(uri: str, name: str):
    from mlflow.tracking import MlflowClient

    client = MlflowClient(uri)
    experiment = client.get_experiment_by_name(name)
    assert experiment is not None, f"no MLflow experiment {name}"
    runs = client.search_runs([experiment.experiment_id], max_results=1000)
    parents = [r for r in runs if r.data.tags.get("cxr.role") == "search"]
    children = [r for r in runs if r.data.tags.get("cxr.role") == "trial"]
    return client, parents, children


def search_cmd(tmp_path: Path, name: str, data: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "orchestrator.search", "acgan", "--smoke", "--data", str(data),
            "--name", name, "--duplicates", "keep", "--storage", str(tmp_path / "ray_results"),
            "--mlflow-uri", f"sqlite:///{tmp_path}/mlruns/mlflow.db", *extra]


def env_for(tmp_path: Path) -> dict:
    # The searches of one test session share a cache (conftest's SEARCH_CACHE_ENV): the real
    # images' Inception statistics and the decoded data are the same for all of them and cost
    # ~20 s a search on 2 cores; what the caches do is tested where they are the subject.
    cache = os.environ.get(SEARCH_CACHE_ENV) or str(tmp_path / "cache")
    env = dict(os.environ)
    env.update(CXR_CACHE_DIR=cache, PYTHONPATH=str(REPO_ROOT),
               RAY_AUTH_MODE="disabled", PYTHONUNBUFFERED="1")
    return env


def test_smoke_search_end_to_end(smoke_store):
    """The issue's 'done when': >= 4 trials, ASHA stops one, MLflow parent/children with
    per-epoch metrics and grids, a ranking table, a tagged best epoch, a registered model."""
    name, run = smoke_store.search, smoke_store.runs[smoke_store.search]
    assert run.elapsed < 600, f"smoke search took {run.elapsed:.0f} s"
    assert "best: trial" in run.stdout
    # the console (issue 14): a line per trial epoch showing the objective, no Ray status
    # tables, about one screen per minute of running
    epoch_lines = [line for line in run.stdout.splitlines()
                   if line.startswith("trial ") and "  epoch " in line]
    assert epoch_lines and all("  fid " in line for line in epoch_lines)
    assert "Trial status" not in run.stdout and "ETA" in run.stdout
    # third-party bookkeeping is silenced (issue 24): Tune's box and TensorBoard hint, Optuna's
    # and MLflow's INFO lines
    for noise in ("Configuration for experiment", "tensorboard --logdir", "A new study created",
                  "Creating initial MLflow database tables", "Wrote the latest version",
                  "ExperimentalWarning"):
        assert noise not in run.stdout + run.stderr, noise
    assert len(run.stdout.splitlines()) <= 40 * max(run.elapsed / 60, 1), run.stdout[-3000:]

    client, parents, children = mlflow_runs(smoke_store.uri, name)
    assert len(parents) == 1 and len(children) >= 4
    parent = parents[0]
    assert all(c.data.tags["mlflow.parentRunId"] == parent.info.run_id for c in children)
    epochs = {c.data.tags["cxr.trial_id"]: len(client.get_metric_history(c.info.run_id, metric_key("g_loss")))
              for c in children}
    assert max(epochs.values()) == 3
    assert min(epochs.values()) < 3, f"ASHA stopped no trial: {epochs}"
    assert all(c.data.tags.get("stop_reason") is None for c in children
               if epochs[c.data.tags["cxr.trial_id"]] < 3), "a short trial diverged instead"
    history = client.get_metric_history(children[0].info.run_id, metric_key("g_loss"))
    assert sorted(m.step for m in history) == list(range(len(history)))
    grids = [a.path for a in client.list_artifacts(children[0].info.run_id, "grids")]
    assert grids and all(g.endswith(".png") for g in grids)
    views = {a.path for a in client.list_artifacts(parent.info.run_id, "memorisation")}
    assert views == {"memorisation/most_copied.png"}, parent.data.tags.get("cxr.copy_view_skipped")
    ranking = {a.path for a in client.list_artifacts(parent.info.run_id, "ranking")}
    assert {"ranking/ranking.csv", "ranking/ranking.parquet"} <= ranking
    best_trial = parent.data.tags["cxr.best_trial_id"]
    best_epoch = int(parent.data.tags["cxr.best_epoch"])
    assert best_trial in epochs and 0 <= best_epoch < epochs[best_trial]
    # why the selection beat the lowest-FID epoch (or that it is that epoch): on the parent
    versus = parent.data.tags["cxr.best_versus_lowest"]
    # the parent's params are complete enough to re-rank and rerun (issue 24)
    params = parent.data.params
    assert float(params["min_diversity"]) > 0 and params["keep_epochs"] == "5"
    assert params["eval.metrics"] == "fid,kid,cas,visual,memorisation", params
    assert params["storage"].endswith("ray_results") and params["eval.n_fake"] == "48"
    assert versus == "the same epoch" or versus.startswith("the lowest fid ("), versus
    version = client.get_model_version_by_alias("cxr-acgan-generator", "champion")
    assert version.tags["search"] == name and int(version.tags["epoch"]) == best_epoch
    # the champion is never a grey or collapsed epoch (constant_frac was 1.0 before)
    from orchestrator.store.reader import load_epoch_table

    table = load_epoch_table(name, smoke_store.uri).set_index(["trial_id", "epoch"])
    champion = table.loc[(best_trial, best_epoch)]
    assert champion["constant_frac"] < 0.5 and champion["diversity_ratio"] >= 0.25, champion
    # ... nor one that copies its training images (issue 23): measured every epoch, the gate
    # passed, the figures on the model version
    assert table["memorised_share"].notna().all() and champion["memorised_share"] <= 0.05
    assert float(version.tags["memorised_share"]) == pytest.approx(champion["memorised_share"],
                                                                   abs=1e-3)
    # ... and its epoch's numbers and grid on the version page itself (issue 24)
    assert float(version.tags["fid"]) == pytest.approx(champion["fid"], rel=1e-3)
    assert f"grids/epoch_{best_epoch:04d}.png" in version.description
    # MLflow as its users expect it (issue 14): grids as an image series with epochs as
    # steps, the source commit, the search's summary metrics, links in the description
    best_run = client.get_run(parent.data.tags["cxr.best_run_id"])
    images = [a.path for a in client.list_artifacts(best_run.info.run_id, "images")]
    assert any(p.startswith("images/grid") for p in images), images
    assert parent.data.tags["mlflow.source.git.commit"]
    assert {"trials_finished", "trials_diverged", "best_fid"} <= set(parent.data.metrics)
    # one story (issue 24): the console, the parent's tags and best_* metrics and the registry
    # name the same (trial, epoch), epochs numbered from 0 everywhere
    assert f"best: trial {best_trial}, epoch {best_epoch}  (" in run.stdout
    assert parent.data.metrics["best_fid"] == pytest.approx(champion["fid"], rel=1e-6)
    assert "trials:" in run.stdout and "next:\n  python -m orchestrator.report " in run.stdout
    assert any(line.startswith(f"trial {best_trial}  epoch {best_epoch} (") for line in epoch_lines)
    note = parent.data.tags["mlflow.note.content"]
    assert f"#/experiments/{parent.info.experiment_id}/runs/{best_run.info.run_id}?" in note
    assert f"/runs/{best_run.info.run_id}/artifacts/grids/epoch_{best_epoch:04d}.png" in note
    assert "#/models/cxr-acgan-generator/versions/" in note
    # ... the data as an MLflow dataset on the search and on each trial, curves in groups,
    # the experiment a model-training one (the UI's runs view, not GenAI traces)
    for logged in (parent, best_run):
        (data,) = logged.inputs.dataset_inputs
        assert data.dataset.digest == parent.data.tags["cxr.data_fingerprint"][:36]
    assert {"eval/fid", "train/g_loss", "search/keep_score", "eval/memorised_share",
            "eval/precision", "eval/coverage"} <= set(best_run.data.metrics)
    assert "fid_protocol.dims" in best_run.data.params and "epoch" not in best_run.data.metrics
    kind = client.get_experiment(parent.info.experiment_id).tags["mlflow.experimentKind"]
    assert kind == "custom_model_development"
    spaces = {a.path for a in client.list_artifacts(parent.info.run_id, "search_space")}
    assert spaces == {"search_space/acgan.py", "search_space/gan.py"}
    import optuna  # the study optuna-dashboard opens, beside the Tune results

    study = optuna.load_study(study_name=name, storage=f"sqlite:///{smoke_store.root}/"
                                                      f"ray_results/{name}-optuna.db")
    assert len(study.trials) == len(children)
    # optuna-dashboard names the objective and links each trial to its Tune/MLflow id
    assert study.metric_names == ["best_fid"]
    assert {t.user_attrs.get("tune_trial_id") for t in study.trials} == {
        c.data.tags["cxr.trial_id"] for c in children}
    assert {t.user_attrs.get("mlflow_run_id") for t in study.trials} == {
        c.info.run_id for c in children}
    # ... and the study carries the ranking's verdicts: the selected trial, epoch and run, and
    # per Optuna trial its MLflow run and its best selectable epoch or why it was excluded
    assert study.user_attrs["cxr.selected"].startswith(
        f"tune trial {best_trial}, epoch {best_epoch} · MLflow run {best_run.info.run_id}")
    run_of = {c.data.tags["cxr.trial_id"]: c.info.run_id for c in children}
    for t in study.trials:
        line = study.user_attrs[f"cxr.trial.{t.number}"]
        assert line.startswith(f"tune trial {t.user_attrs['tune_trial_id']} · MLflow run "
                               f"{run_of[t.user_attrs['tune_trial_id']]} · ")
        assert " · best selectable epoch " in line or " · excluded: " in line
    report = {a.path for a in client.list_artifacts(parent.info.run_id, "report")}
    assert "report/report.md" in report
    protocol = client.get_run(children[0].info.run_id).data.params
    assert protocol["fid_protocol.extractor"] and protocol["fid_protocol.n_fake"]
    # the report the user reads names the epoch the ranking chose
    md = Path(client.download_artifacts(parent.info.run_id, "report/report.md",
                                        str(smoke_store.root / "report-check")))
    assert f"trial `{best_trial}`, epoch {best_epoch}" in md.read_text()
    # every trial's grids over training in one image, the selected trial's in the report
    for child in children:
        sheets = [a.path for a in client.list_artifacts(child.info.run_id, "contact_sheet")]
        assert sheets == ["contact_sheet/contact_sheet.png"], child.data.tags
        curves = [a.path for a in client.list_artifacts(child.info.run_id, "curves")]
        assert curves == ["curves/training.png"], child.data.tags
    assert "(logged as contact_sheet/contact_sheet.png)" in md.read_text()
    # covid19-image-dataset has no test split: its val is the study's test set, so the GAN
    # search (training, epoch evaluation, ranking, t-SNE) must never have read it
    from trainables.data import read_split_access_file

    assert {s for _, s in read_split_access_file(run.splits_read)} == {"train"}


def test_classifier_study_uses_the_searched_generator(smoke_store):
    """Issue 6: the study runs end to end with the GAN the search registered in this
    session, and produces the strategy table with confidence intervals."""
    run = smoke_store.runs[smoke_store.study]
    assert "GAN strategies use models:/cxr-acgan-generator@champion" in run.stdout
    assert "| strategy | seeds | accuracy (95 % CI) | macro F1 (95 % CI) | macro AUROC (95 % CI) " \
        "| val macro F1 |" in run.stdout
    assert "| strategy | class | sensitivity (95 % CI) | specificity (95 % CI) |" in run.stdout
    client, _, _ = mlflow_runs(smoke_store.uri, smoke_store.search)
    experiment = client.get_experiment_by_name(smoke_store.study)
    runs = client.search_runs([experiment.experiment_id], max_results=100)
    parent = [r for r in runs if r.data.tags.get("cxr.role") == "study"][0]
    strategies = {r.data.tags["strategy"] for r in runs if r.data.tags.get("cxr.role") == "study_run"}
    assert strategies == {"none", "class_weights", "undersample", "oversample", "positional",
                          "gan", "gan_positional", "gan_balanced"}
    artifacts = {a.path for a in client.list_artifacts(parent.info.run_id, "study")}
    assert {"study/table.md", "study/table.csv", "study/composition.csv"} <= artifacts
    # the strategy tag is chosen on validation (never on test)
    assert parent.data.tags["cxr.best_strategy"] in strategies
    assert "study/none/macro_auroc" in parent.data.metrics
    table = client.download_artifacts(parent.info.run_id, "study/table.csv", str(smoke_store.root))
    import pandas as pd

    df = pd.read_csv(table)
    assert (df["macro_f1_ci_low"] <= df["macro_f1"]).all() and (df["macro_f1"] <= df["macro_f1_ci_high"]).all()
    # the held-out split ("val" here) is read once, after every model's selection is over
    from trainables.data import read_split_access_file

    reads = [s for _, s in read_split_access_file(run.splits_read)]
    assert reads.count("val") == 1 and reads[-1] == "val" and set(reads) == {"train", "val"}


def test_multi_node_trials_spread_with_checkpoints_in_shared_storage(tmp_path, covid3_dir,
                                                                     monkeypatch):
    import ray
    from ray.cluster_utils import Cluster

    from orchestrator import pipeline
    from orchestrator.cli import search

    monkeypatch.setenv("CXR_CACHE_DIR", env_for(tmp_path)["CXR_CACHE_DIR"])  # the shared cache
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 0})
    workers = [cluster.add_node(num_cpus=1) for _ in range(2)]
    cluster.wait_for_nodes()
    try:
        ray.init(address=cluster.address)
        storage = tmp_path / "shared_storage"
        cfg = search.config_from_args([
            "acgan", "--smoke", "--data", str(covid3_dir), "--name", "multinode", "--duplicates", "keep",
            "--num-samples", "2", "--max-epochs", "1", "--scheduler", "none",
            # where trials run is tested, not what they measure: no Inception network
            "--eval-metrics", "visual", "--objective", "g_loss",
            "--storage", str(storage), "--mlflow-uri", f"sqlite:///{tmp_path}/mlflow.db"])
        summary = pipeline.run_search(cfg)
        assert summary["trials"] == 2
        nodes = set()
        for result_file in (storage / "multinode").glob("*/result.json"):
            rows = [json.loads(l) for l in result_file.read_text().splitlines() if l.strip()]
            nodes.update(r["node_id"] for r in rows)
        assert nodes <= {w.node_id for w in workers} and len(nodes) == 2
        checkpoints = list((storage / "multinode").glob("*/checkpoint_*/generator.pt"))
        assert len(checkpoints) == 2
    finally:
        ray.shutdown()
        cluster.shutdown()


def test_two_worker_torch_trainer_trial(tmp_path, covid3_dir, monkeypatch):
    """The Ray Train path: one trial = a 2-worker CPU TorchTrainer (DDP over gloo)."""
    import ray

    from orchestrator import pipeline
    from orchestrator.cli import search

    monkeypatch.setenv("CXR_CACHE_DIR", env_for(tmp_path)["CXR_CACHE_DIR"])  # the shared cache
    ray.init(num_cpus=2, include_dashboard=False)
    try:
        storage = tmp_path / "ray_results"
        cfg = search.config_from_args([
            "cgan", "--smoke", "--data", str(covid3_dir), "--name", "ddp",
            "--num-samples", "1", "--max-epochs", "2", "--scheduler", "none",
            "--execution", "train", "--workers-per-trial", "2",
            "--eval-metrics", "visual", "--objective", "g_loss",  # DDP is the subject
            "--storage", str(storage), "--mlflow-uri", f"sqlite:///{tmp_path}/mlflow.db"])
        summary = pipeline.run_search(cfg)
        assert summary["trials"] == 1
        assert list(storage.glob("ddp-train-*/checkpoint_*/generator.pt"))
        client, _, children = mlflow_runs(f"sqlite:///{tmp_path}/mlflow.db", "ddp")
        checkpoints = [v for k, v in children[0].data.tags.items() if k.startswith("ckpt.epoch_")]
        assert len(checkpoints) == 2 and all(c.startswith(str(storage)) for c in checkpoints)
        # two grey smoke epochs are never a champion: then the search says why (issue 12)
        assert summary["best"] is not None or "unusable" in summary["why_none"]
        # two processes really trained it (DDP over gloo), not one
        assert float(children[0].data.params["world_size"]) == 2
    finally:
        ray.shutdown()


def test_generate_exports_the_registered_generator(smoke_store, tmp_path, monkeypatch):
    """Issue 6: `python -m orchestrator.generate --model <registered name>` writes PNGs per
    class and a manifest, from the generator the search registered."""
    import pandas as pd

    from orchestrator.cli import generate

    monkeypatch.setenv("CXR_CACHE_DIR", str(smoke_store.root / "cache"))
    out = tmp_path / "synthetic"
    assert generate.main(["--model", "cxr-acgan-generator", "--mlflow-uri", smoke_store.uri,
                          "--per-class", "2", "--out", str(out)]) == 0
    manifest = pd.read_csv(out / "manifest.csv")
    assert len(manifest) == 2 * 3 and manifest["class"].nunique() == 3
    assert all((out / p).exists() or Path(p).exists() for p in manifest["path"])
    assert generate.main(["--model", "no-such-model", "--mlflow-uri", smoke_store.uri,
                          "--per-class", "2", "--out", str(tmp_path / "x")]) == 2


def test_failing_trials_are_retried_then_recorded_while_the_search_goes_on(tmp_path, covid3_dir):
    """60 real training images: trials whose searched batch size (64, 128) exceeds them raise
    in every attempt (FailureConfig retries them), are recorded as failed, the others finish."""
    import shutil

    data = tmp_path / "tiny"
    for split, n in (("train", 20), ("val", 3)):
        for cls in ("Covid", "Normal", "Viral Pneumonia"):
            target = data / split / cls
            target.mkdir(parents=True)
            files = sorted((covid3_dir / split / cls).iterdir())[:n]
            for f in files:
                shutil.copy(f, target / f.name)
    name = "e2e-failures"
    proc = subprocess.run(
        search_cmd(tmp_path, name, data, "--num-samples", "6", "--max-epochs", "1",
                   "--scheduler", "none", "--eval-metrics", "visual", "--objective", "g_loss"),
        cwd=tmp_path, env=env_for(tmp_path), capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    assert "failed trials:" in proc.stdout
    assert "fewer than batch_size" in proc.stdout + proc.stderr
    client, parents, children = mlflow_runs(f"sqlite:///{tmp_path}/mlruns/mlflow.db", name)
    status = Counter(c.info.status for c in children)
    assert status["FAILED"] >= 1 and status["FINISHED"] >= 1, status
    assert len(children) == 6, "a retried trial must keep its one MLflow run"


def test_classifier_tune_search(tmp_path, covid3_dir):
    """`search classifier --tune`: the classifier trainable under Tune + Optuna, ranked on
    the validation objective, recorded like the GAN searches."""
    name = "e2e-classifier-tune"
    cmd = search_cmd(tmp_path, name, covid3_dir, "--num-samples", "2", "--max-epochs", "1")
    cmd[cmd.index("acgan")] = "classifier"
    proc = subprocess.run([*cmd, "--tune"], cwd=tmp_path, env=env_for(tmp_path),
                          capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    assert "policy weighted" in proc.stdout and "val_macro_f1=" in proc.stdout
    client, parents, children = mlflow_runs(f"sqlite:///{tmp_path}/mlruns/mlflow.db", name)
    assert len(parents) == 1 and len(children) == 2
    for child in children:
        assert client.get_metric_history(child.info.run_id, metric_key("val_macro_f1"))
        assert child.data.params.get("evaluate_test", "False") == "False"  # never the test split
    assert parents[0].data.tags["cxr.best_trial_id"] in {c.data.tags["cxr.trial_id"] for c in children}


def test_pbt_ranking_follows_checkpoint_lineage(tmp_path, covid3_dir):
    """PBT (random starts, no Optuna): exploited trials continue other trials' weights; the
    ranking table says from which (trial, epoch) each epoch descends.  PBT exploits on the G
    loss: what is tested is the lineage, not the selection (CAS every epoch cost ~150 s)."""
    import pandas as pd

    name = "e2e-pbt"
    proc = subprocess.run(
        search_cmd(tmp_path, name, covid3_dir, "--scheduler", "pbt", "--num-samples", "4",
                   "--max-epochs", "4", "--eval-metrics", "visual", "--objective", "g_loss"),
        cwd=tmp_path, env=env_for(tmp_path), capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    client, parents, children = mlflow_runs(f"sqlite:///{tmp_path}/mlruns/mlflow.db", name)
    lineage_tags = [k for c in children for k in c.data.tags if k.startswith("lineage.epoch_")]
    assert lineage_tags, "PBT exploited no trial"
    path = client.download_artifacts(parents[0].info.run_id, "ranking/ranking.parquet", str(tmp_path))
    ranked = pd.read_parquet(path)
    assert ranked["lineage"].str.contains(" <- ").sum() >= len(lineage_tags)
