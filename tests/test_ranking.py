"""Ranking policies on hand-built tables, verdicts, and the re-rank CLI on a real MLflow store."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from orchestrator import ranking
from orchestrator.cli.rank import main
from orchestrator.store.reader import load_epoch_table


def _table():
    return pd.DataFrame({
        "trial_id": ["a", "a", "a", "b", "b", "b"], "epoch": [0, 1, 2, 0, 1, 2],
        "g_loss": [1.0, 0.5, 0.4, 0.9, 0.3, np.nan],
        "d_fake_acc": [0.5, 0.2, 0.1, 0.4, 0.1, 0.2],
        "cas_acc": [0.4, 0.6, 0.5, np.nan, 0.7, 0.8],
        "fid": [200.0, 150.0, 120.0, 210.0, 90.0, 100.0],
        "kid": [0.1, 0.05, 0.04, 0.1, 0.03, 0.02]})


def _order(ranked):
    r = ranked[ranked["status"] == "ranked"]
    return list(zip(r["trial_id"], r["epoch"]))


def test_staged_shortlists_then_cas_then_fid():
    r = ranking.staged(_table(), shortlist=3)
    # stage 1 (mean rank of g_loss, d_fake_acc): b1, a2, a1 shortlisted; then by CAS
    assert _order(r)[:3] == [("b", 1), ("a", 1), ("a", 2)]
    assert _order(r)[3:] == [("b", 0), ("a", 0)] and "not shortlisted" in r["reason"].iloc[3]
    missing = r[r["trial_id"].eq("b") & r["epoch"].eq(2)].iloc[0]
    assert missing["status"] == "not_evaluated" and pd.isna(missing["rank"])
    assert "g_loss not evaluated" in missing["reason"]
    assert list(r["rank"].dropna()) == [1, 2, 3, 4, 5]


def test_staged_cas_tie_broken_by_fid_and_missing_cas_goes_last():
    t = _table().assign(g_loss=0.5, d_fake_acc=0.1)
    t.loc[t.index[[1, 2]], "cas_acc"] = 0.6  # a1 and a2 tie on CAS; a2 has lower FID and KID
    r = ranking.staged(t, shortlist=6)
    o = _order(r)
    assert o[0] == ("b", 2) and o.index(("a", 2)) < o.index(("a", 1))
    assert o[-1] == ("b", 0) and "cas_acc not evaluated" in r[r["status"] == "ranked"]["reason"].iloc[-1]


def test_pareto_fronts_and_tie_break():
    r = ranking.pareto(_table(), objectives=("cas_acc", "fid"))
    first = r[r["pareto_front"] == 1]
    # b2 (best CAS) and b1 (best FID) are non-dominated; the tie-break is CAS
    assert set(zip(first["trial_id"], first["epoch"])) == {("b", 1), ("b", 2)}
    assert _order(r)[0] == ("b", 2)
    assert ranking.pareto_fronts(np.array([[1, 1], [2, 2], [0, 3]])).tolist() == [0, 1, 0]
    assert r[r["trial_id"].eq("b") & r["epoch"].eq(0)]["status"].item() == "not_evaluated"


def test_weighted_respects_weights():
    only_fid = ranking.weighted(_table(), weights={"fid": 1.0})
    assert _order(only_fid)[0] == ("b", 1)
    only_cas = ranking.weighted(_table(), weights={"cas_acc": 1.0})
    assert _order(only_cas)[0] == ("b", 2)
    assert "weighted rank score" in only_cas["reason"].iloc[0]
    with pytest.raises(ValueError, match="direction"):
        ranking.weighted(_table().assign(foo=1.0), weights={"foo": 1.0})


@pytest.mark.parametrize("policy", ranking.POLICIES)
def test_verdicts_are_honoured_by_every_policy(policy):
    t = _table().assign(g_loss=0.5, d_fake_acc=0.1)
    best = ranking.best(ranking.rank(t, policy))
    reject = pd.DataFrame({"trial_id": [best["trial_id"]], "epoch": [best["epoch"]],
                           "verdict": ["reject"]})
    r = ranking.rank(t, policy, reject)
    row = r[r["trial_id"].eq(best["trial_id"]) & r["epoch"].eq(best["epoch"])].iloc[0]
    assert row["status"] == "rejected" and pd.isna(row["rank"])
    assert (ranking.best(r)["trial_id"], ranking.best(r)["epoch"]) != (best["trial_id"], best["epoch"])


def test_approved_epoch_enters_the_shortlist_and_wins_ties():
    t = _table()
    approve = pd.DataFrame({"trial_id": ["a"], "epoch": [0], "verdict": ["approve"]})
    r = ranking.rank(t, "staged", approve, shortlist=1)
    shortlisted = r[r["reason"].str.startswith("shortlisted")]
    assert ("a", 0) in set(zip(shortlisted["trial_id"], shortlisted["epoch"]))
    tie = t.assign(fid=100.0, cas_acc=0.5)
    tie_appr = pd.DataFrame({"trial_id": ["a"], "epoch": [2], "verdict": ["approve"]})
    assert _order(ranking.rank(tie, "weighted", tie_appr, weights={"cas_acc": 1, "fid": 1}))[0] == ("a", 2)
    assert _order(ranking.rank(tie, "pareto", tie_appr))[0] == ("a", 2)


def test_bad_verdicts_and_missing_columns_are_errors(tmp_path):
    with pytest.raises(ValueError, match="unknown verdict"):
        ranking.apply_verdicts(_table(), pd.DataFrame({"trial_id": ["a"], "epoch": [0],
                                                       "verdict": ["maybe"]}))
    with pytest.raises(KeyError, match="cas_acc"):
        ranking.pareto(_table().drop(columns="cas_acc"))
    with pytest.raises(FileNotFoundError, match="trial_id,epoch,verdict"):
        ranking.load_verdicts_csv(tmp_path / "none.csv")


def _fake_search(uri, name):
    from mlflow.entities import Metric
    from mlflow.tracking import MlflowClient
    client = MlflowClient(uri)
    # artefacts beside the database, not in ./mlruns of wherever pytest runs
    exp = client.create_experiment(name, artifact_location=str(
        Path(uri.removeprefix("sqlite:///")).parent / "artifacts"))
    parent = client.create_run(exp, tags={"cxr.role": "search"}).info.run_id
    for _, g in _table().groupby("trial_id"):
        tid = g["trial_id"].iloc[0]
        run = client.create_run(exp, tags={"cxr.role": "trial", "cxr.trial_id": tid,
                                           "mlflow.parentRunId": parent}).info.run_id
        metrics = [Metric(k, float(v), 0, int(e)) for _, row in g.iterrows()
                   for k, v, e in [(c, row[c], row["epoch"]) for c in g.columns[2:]] if v == v]
        client.log_batch(run, metrics=metrics)
        if tid == "b":
            client.set_tag(run, "verdict.epoch_0001", "reject")


def test_cli_reranks_a_stored_search(tmp_path):
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    _fake_search(uri, "demo")
    table = load_epoch_table("demo", uri)
    assert len(table) == 6 and table.loc[table["trial_id"].eq("b") & table["epoch"].eq(1),
                                         "verdict"].item() == "reject"
    assert np.isnan(table.loc[table["trial_id"].eq("b") & table["epoch"].eq(2), "g_loss"].item())
    verdicts = tmp_path / "v.csv"
    verdicts.write_text("trial_id,epoch,verdict\nb,2,reject\n")
    for policy in ranking.POLICIES:
        assert main(["demo", "--policy", policy, "--mlflow-uri", uri, "--out", str(tmp_path / "o"),
                     "--verdicts", str(verdicts)]) == 0
        out = pd.read_parquet(tmp_path / "o" / f"ranking_{policy}.parquet")
        assert (tmp_path / "o" / f"ranking_{policy}.csv").is_file()
        rejected = set(zip(out.loc[out["status"] == "rejected", "trial_id"],
                           out.loc[out["status"] == "rejected", "epoch"]))
        assert rejected == {("b", 1), ("b", 2)} and out["reason"].notna().all()
    with pytest.raises(LookupError, match="no search named"):
        load_epoch_table("nope", uri)


def test_lineage_follows_pbt_checkpoints():
    """b restarted at epoch 2 from a's epoch-1 checkpoint, and c at epoch 3 from b's epoch 2:
    c's epoch 3 descends from a's epoch 1 through b."""
    import pandas as pd

    from orchestrator.ranking import add_lineage, rank

    rows = []
    for trial in ("a", "b", "c"):
        for epoch in range(4):
            rows.append({"trial_id": trial, "epoch": epoch, "g_loss": 1.0 + epoch,
                         "d_fake_acc": 0.5, "checkpoint": f"/s/{trial}/ck{epoch}"})
    table = pd.DataFrame(rows)
    table["resumed_from"] = None
    table.loc[(table.trial_id == "b") & (table.epoch == 2), "resumed_from"] = "/s/a/ck1"
    table.loc[(table.trial_id == "c") & (table.epoch == 3), "resumed_from"] = "/s/b/ck2"
    lineage = add_lineage(table).set_index(["trial_id", "epoch"])["lineage"]
    assert lineage[("a", 3)] == "a@3"
    assert lineage[("b", 1)] == "b@1"
    assert lineage[("b", 3)] == "b@3 <- a@1"
    assert lineage[("c", 3)] == "c@3 <- b@2 <- a@1"
    assert "lineage" in rank(table, "staged").columns
    assert "lineage" not in rank(table.drop(columns="resumed_from"), "staged").columns


def test_a_search_whose_epochs_lack_the_policys_metrics_still_finishes(tmp_path, capsys):
    """Every trial reported epochs but never a G loss (e.g. no G step ran): the search ends
    with 'no epoch could be ranked' and the reason, its trial records intact."""
    from types import SimpleNamespace

    from mlflow.tracking import MlflowClient

    from orchestrator.finalize import finalize_search
    from orchestrator.config import SearchConfig

    uri = f"sqlite:///{tmp_path}/mlflow.db"
    client = MlflowClient(uri)
    exp = client.create_experiment("no-g", artifact_location=str(tmp_path / "artifacts"))
    parent = client.create_run(exp, tags={"cxr.role": "search"}).info.run_id
    trial = client.create_run(exp, tags={"cxr.role": "trial", "cxr.trial_id": "t1",
                                         "mlflow.parentRunId": parent}).info.run_id
    client.log_metric(trial, "d_loss", 1.2, step=0)
    cfg = SearchConfig(experiment="acgan", preset="s0", name="no-g", mlflow_uri=uri)
    summary = finalize_search(cfg, {}, [SimpleNamespace(error=None, metrics={}, path="t1")],
                              client, parent)
    assert summary["best"] is None and summary["trials"] == 1
    tag = client.get_run(parent).data.tags["cxr.best"]
    assert tag.startswith("none: no epoch could be ranked") and "g_loss" in tag
    assert "no epoch could be ranked" in capsys.readouterr().out


def test_a_copying_epoch_is_never_selected_by_any_policy():
    """Issue 23's gate: an epoch whose memorised_share is above --max-memorised is excluded
    from every policy with its reason, even with the best FID and CAS; all copying: nothing."""
    t = _table().assign(memorised_share=[0.0, 0.01, 0.0, 0.0, 0.6, 0.02])
    for policy in ranking.POLICIES:
        r = ranking.rank(t, policy)
        copying = r[r["trial_id"].eq("b") & r["epoch"].eq(1)].iloc[0]
        assert copying["status"] == "memorised" and "memorised_share=0.60 > 0.05" in copying["reason"]
        assert ("b", 1) not in _order(r)
    assert ranking.rank(t, "staged", max_memorised=0.7)["status"].eq("ranked").sum() > \
        ranking.rank(t, "staged")["status"].eq("ranked").sum()
    everything = ranking.rank(t.assign(memorised_share=0.9), "staged")
    assert set(everything["status"]) == {"memorised"}
