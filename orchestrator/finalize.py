"""The end of a search: rank every epoch, tag the best, register its generator, summarise."""
from __future__ import annotations

import sys
import tempfile
from pathlib import Path
from typing import Any, Optional

from orchestrator import plots, ranking
from orchestrator.store import optuna_notes
from orchestrator.store.layout import (SAME_EPOCH, STATUS, checkpoint_has, grid_artifact,
                                       read_checkpoint_file, tag_epoch, trial_runs, ui_link)
from orchestrator.store.models import register_generator
from orchestrator.store.reader import load_epoch_table
from orchestrator.view import write_report
from trainables.gan import load_generator
from trainables.metrics.evaluator import GanEvaluator
from trainables.metrics.registry import INCEPTION_EVALUATIONS, METRICS
from trainables.trial import TrialSettings, load_selection


# The champion's model version carries its epoch's main figures as tags (issue 24) ...
VERSION_METRICS = ("fid", "kid", "intra_fid", "cas_acc", "diversity_ratio")
# ... and its memorisation figures (issue 23).
MEMORISATION_TAGS = ("memorised_share", "nn_train_distance", "memorised_share_inception",
                     "nn_train_distance_inception", "precision", "recall", "density", "coverage")


def finalize_search(cfg, settings: TrialSettings, results, client, parent_run_id: str) -> dict:
    """Rank (trial, epoch) rows from MLflow, record the outcome, print where to look."""
    killed = reconcile_running(client, cfg.name, parent_run_id)
    table = load_epoch_table(cfg.name, cfg.mlflow_uri)
    failed = _failed_trials(results)
    endings = trial_endings(client, cfg.name, parent_run_id)
    where = {"mlflow_uri": cfg.mlflow_uri,
             "experiment_id": client.get_run(parent_run_id).info.experiment_id}
    if table.empty:
        client.set_tag(parent_run_id, "cxr.best", "none: no trial reported an epoch")
        client.set_terminated(parent_run_id, "FAILED")
        summary = {"search": cfg.name, "trials": 0, "failed_trials": failed, "best": None,
                   "policy": cfg.policy, "endings": endings, **where}
        print(format_summary(summary))
        return summary
    if cfg.is_gan:
        table = mark_kept(table)
    out_dir = Path(tempfile.mkdtemp(prefix="cxr-ranking-"))
    policy = "weighted" if cfg.experiment == "classifier" else cfg.policy
    summary: dict[str, Any] = {"search": cfg.name, "trials": int(table["trial_id"].nunique())
                               if len(table) else 0, "failed_trials": failed,
                               "killed_trials": killed, "endings": endings,
                               "policy": policy, **where}
    try:
        ranked = ranking.rank(table, policy, None, **policy_options(cfg))
    except KeyError as exc:
        # No trial ever reported a metric the policy needs (e.g. every G step was skipped):
        # the trials' records stand; say why nothing was ranked instead of failing here.
        ranked, why = None, f"none: no epoch could be ranked ({exc.args[0]})"
    else:
        for path in ranking.write_ranking(ranked, out_dir, "ranking"):
            client.log_artifact(parent_run_id, str(path), artifact_path="ranking")
        why = _why_nothing(ranked)
    best = _best_row(ranked) if ranked is not None else None
    scored = table if ranked is None else ranked
    log_summary_metrics(client, parent_run_id, scored, endings, cfg.objectives()[0], best)
    summary["trial_table"] = trial_table(scored, endings, cfg.objectives()[0])
    summary["next"] = next_commands(cfg)
    if best is None:
        client.set_tag(parent_run_id, "cxr.best", why[:5000])
        summary["best"], summary["why_none"] = None, why
    else:
        versus = versus_lowest(scored, best, cfg.objectives()[0])
        summary.update(record_best(cfg, settings, client, parent_run_id, best, versus))
    # One query for both: the trial runs as they ended (after reconcile_running).
    runs = trial_runs(client, where["experiment_id"], parent_run_id)
    note_optuna(cfg, runs, summary, search_ended=True)
    if cfg.is_gan:
        log_contact_sheets(client, runs, summary.get("best"))
        log_training_curves(client, runs, scored)
    _log_report(cfg, client, parent_run_id)
    client.set_terminated(parent_run_id, "FINISHED")
    print(format_summary(summary))
    return summary


def log_contact_sheets(client, runs, best: Optional[dict]) -> int:
    """Each trial run's sample grids over training as one image (`contact_sheet/`, at most
    `plots.CONTACT_ROWS` epochs from its logged grids, evenly spaced); a trial whose sheet
    cannot be drawn gets the reason as tag `cxr.contact_sheet_skipped`.  Returns how many
    sheets were logged."""
    logged = 0
    for run in runs:
        run_id, trial = run.info.run_id, run.data.tags.get("cxr.trial_id", run.info.run_id)
        marked = best["epoch"] if best and str(best.get("trial_id")) == trial else None
        try:
            with tempfile.TemporaryDirectory(prefix="cxr-sheet-") as tmp:
                epochs = [tag_epoch(Path(a.path).stem) for a in client.list_artifacts(run_id, "grids")
                          if a.path.endswith(".png")]
                grids = [(e, client.download_artifacts(run_id, grid_artifact(e), tmp))
                         for e in plots.contact_epochs(epochs)]
                fig = plots.epochs_sheet(grids, f"trial {trial}: sample grids over training",
                                          marked)
                path = plots.save(fig, Path(tmp) / "contact_sheet.png")
                client.log_artifact(run_id, str(path), artifact_path="contact_sheet")
                logged += 1
        except Exception as exc:  # no grids (failed at once), unreadable image: say so
            client.set_tag(run_id, "cxr.contact_sheet_skipped", f"{type(exc).__name__}: {exc}"[:5000])
    return logged


def log_training_curves(client, runs, table) -> int:
    """Each trial run's G and D losses and `d_g_z1`/`d_g_z2` on one panel
    (`curves/training.png`): MLflow charts one metric per chart, and the two scores of the
    fakes are read together.  A trial with nothing to draw gets tag
    `cxr.training_curves_skipped`.  Returns how many figures were logged."""
    logged = 0
    for run in runs:
        run_id, trial = run.info.run_id, run.data.tags.get("cxr.trial_id", run.info.run_id)
        rows = table[table["trial_id"].astype(str) == str(trial)] if len(table) else table
        try:
            if not len(rows):
                raise ValueError("the trial reported no epoch")
            with tempfile.TemporaryDirectory(prefix="cxr-curves-") as tmp:
                path = plots.save(plots.loss_curves(rows), Path(tmp) / "training.png")
                client.log_artifact(run_id, str(path), artifact_path="curves")
            logged += 1
        except Exception as exc:  # nothing logged, unreadable values: say so on the run
            client.set_tag(run_id, "cxr.training_curves_skipped",
                           f"{type(exc).__name__}: {exc}"[:5000])
    return logged


def note_optuna(cfg, runs, summary: dict, search_ended: bool = False) -> None:
    """The ranking's verdicts on the Optuna study (`orchestrator.store.optuna_notes`);
    `search_ended`: also close the suggestions no trial ran."""
    if cfg.scheduler == "pbt" or not optuna_notes.study_path(cfg.storage, cfg.name).is_file():
        return  # PBT searches with Tune's own random starts: no Optuna study
    run_ids = {r.data.tags.get("cxr.trial_id", ""): r.info.run_id for r in runs}
    url = optuna_notes.study_url(cfg.storage, cfg.name)
    try:
        optuna_notes.annotate(url, cfg.name, summary["trial_table"], run_ids, summary["best"],
                              cfg.objectives()[0][0], search_ended)
    except Exception as exc:  # a note, not the result: the search's records stand without it
        print(f"warning: the ranking's verdicts were not written to the Optuna study at {url}: "
              f"{type(exc).__name__}: {exc}", file=sys.stderr)


def reconcile_running(client, search_name: str, parent_run_id: str) -> list[str]:
    """Trial runs still RUNNING after Tune returned belong to trials Tune no longer knows (the
    driver was killed before its experiment state recorded them): mark them KILLED, with the
    reason, so that no partial trial is ranked as if it had finished.  Returns their ids."""
    experiment = client.get_experiment_by_name(search_name)
    killed = []
    for run in trial_runs(client, experiment.experiment_id, parent_run_id):
        if run.info.status == "RUNNING":
            client.set_tag(run.info.run_id, STATUS, "killed")
            client.set_tag(run.info.run_id, "stop_reason",
                           "killed: the driver died while this trial ran and the resumed "
                           "search did not continue it")
            client.set_terminated(run.info.run_id, "KILLED")
            killed.append(run.data.tags.get("cxr.trial_id", run.info.run_id))
    return killed


def trial_endings(client, search_name: str, parent_run_id: str) -> dict[str, list]:
    """status -> [(trial id, stop reason)], for the summary (`cxr.status` tags)."""
    experiment = client.get_experiment_by_name(search_name)
    endings: dict[str, list] = {}
    for run in trial_runs(client, experiment.experiment_id, parent_run_id):
        tags = run.data.tags
        status = tags.get(STATUS, run.info.status.lower())
        endings.setdefault(status, []).append((tags.get("cxr.trial_id", run.info.run_id),
                                               tags.get("stop_reason", "")))
    return endings


# The selected epoch's numbers the parent run shows as best_<name> (beside the objectives).
SUMMARY_KEYS = ("fid", "kid", "cas_acc", "diversity_ratio", "memorised_share", "val_macro_f1")


def log_summary_metrics(client, parent_run_id: str, table, endings: dict,
                        objective: tuple[str, str], best: Optional[dict] = None) -> None:
    """The search at a glance on its parent run (the experiment's run list shows them):
    `best_<metric>` are the *selected* epoch's values (the champion's, one "best" on every
    screen), `lowest_<objective>` the best objective value over the epochs a policy may
    select (a collapsed, killed or deleted epoch is left out), and how the trials ended."""
    name, mode = objective
    if best is not None:
        log_best_metrics(client, parent_run_id, best, name)
    if "status" in table:
        table = table[table["status"] == "ranked"]
    if name in table and table[name].notna().any():
        top = table[name].min() if mode == "min" else table[name].max()
        client.log_metric(parent_run_id, f"{'lowest' if mode == 'min' else 'highest'}_{name}",
                          float(top))
    for status in ("finished", "stopped_early", "diverged", "failed", "killed"):
        client.log_metric(parent_run_id, f"trials_{status}", float(len(endings.get(status, []))))


def log_best_metrics(client, parent_run_id: str, best: dict, objective: str) -> None:
    """`best_<metric>` on the parent: the selected epoch's values (again after a re-rank)."""
    for key in dict.fromkeys((objective, *SUMMARY_KEYS)):
        value = best.get(key)
        if isinstance(value, (int, float)) and value == value:
            client.log_metric(parent_run_id, f"best_{key}", float(value))


def versus_lowest(table, best: dict, objective: tuple[str, str]) -> str:
    """One line on why the selected epoch beat the epoch with the best objective value (any
    status), or "" when they are the same epoch."""
    name, mode = objective
    if name not in table or not table[name].notna().any():
        return ""
    row = table.loc[table[name].idxmin() if mode == "min" else table[name].idxmax()]
    if (str(row["trial_id"]), int(row["epoch"])) == (str(best["trial_id"]), int(best["epoch"])):
        return ""
    why = row.get("reason") if isinstance(row.get("reason"), str) else row.get("status", "")
    return (f"the {'lowest' if mode == 'min' else 'highest'} {name} ({row[name]:.4g}) was "
            f"trial {row['trial_id']}, epoch {int(row['epoch'])}: {why}")


def trial_table(table, endings: dict, objective: tuple[str, str]) -> list[dict]:
    """Per trial: how it ended, epochs run, its best selectable epoch and objective, why.
    "Best" is the ranking's word where there is one (the trial's highest-ranked epoch, so the
    champion's trial shows the champion's epoch), else the objective's best value."""
    name, mode = objective
    ended = {str(t): (status, reason) for status, rows in endings.items() for t, reason in rows}
    rows = []
    for trial, epochs in table.groupby("trial_id", sort=True):
        top = _trial_best(epochs, name, mode)
        status, reason = ended.get(str(trial), ("", ""))
        value = None if top is None else top.get(name)
        rows.append({"trial": str(trial), "status": status, "epochs": int(epochs["epoch"].max()) + 1,
                     "best_epoch": None if top is None else int(top["epoch"]),
                     name: float(value) if isinstance(value, (int, float)) and value == value
                     else None,  # the ranking's pick may lack the objective (not evaluated)
                     "reason": reason or ("" if top is not None else _unselectable(epochs))})
    return rows


def _trial_best(epochs, name: str, mode: str):
    """The trial's best selectable epoch (a row) or None."""
    usable = epochs[epochs["status"] == "ranked"] if "status" in epochs else epochs
    if "rank" in usable and usable["rank"].notna().any():
        return usable.loc[usable["rank"].idxmin()]
    usable = usable[usable[name].notna()] if name in usable else usable.iloc[:0]
    if not len(usable):
        return None
    return usable.loc[usable[name].idxmin() if mode == "min" else usable[name].idxmax()]


def _unselectable(epochs) -> str:
    """Why none of a trial's epochs may be selected: its commonest status and reason."""
    if "status" not in epochs or epochs["status"].isna().all():
        return "no selectable epoch"
    status = epochs["status"].mode().iloc[0]
    why = epochs.loc[epochs["status"] == status, "reason"].dropna() if "reason" in epochs else []
    return f"no selectable epoch: {status}" + (f" ({why.iloc[0]})" if len(why) else "")


def next_commands(cfg) -> list[str]:
    """What to run next, with this search's own names."""
    uri = f" --mlflow-uri {cfg.mlflow_uri}"
    optuna = ([] if cfg.scheduler == "pbt"  # PBT: Tune's own random starts, no Optuna study
              else [f"optuna-dashboard {optuna_notes.study_url(cfg.storage, cfg.name)}"])
    return [f"python -m orchestrator.report {cfg.name}{uri} --out report/",
            f"python -m orchestrator.rank {cfg.name}{uri} --policy pareto",
            *optuna, f"mlflow ui --backend-store-uri {cfg.mlflow_uri}"]


def mark_kept(table):
    """A `kept` column: whether the epoch's checkpoint still holds its generator (Tune keeps
    the --keep-epochs best epochs' folders and the latest)."""
    if "checkpoint" not in table:  # no checkpoint recorded at all: nothing to say
        return table
    kept = [isinstance(p, str) and checkpoint_has(p, "generator.pt") for p in table["checkpoint"]]
    return table.assign(kept=kept)


def _why_nothing(ranked) -> str:
    barred = ranked[ranked["status"].isin(["collapsed", "memorised", "not_kept", "killed"])]
    if len(barred) and not (ranked["status"] == "ranked").any():
        counts = barred["status"].value_counts().to_dict()
        return (f"none: every epoch is unusable ({counts}); no generator was registered. "
                "See the ranking artefact's reasons and the grids")
    return "none: no epoch could be ranked"


def _log_report(cfg, client, parent_run_id: str) -> None:
    """The researcher's view (figures + report.md), logged on the parent run as `report/`."""
    out = Path(tempfile.mkdtemp(prefix="cxr-report-"))
    try:
        report_md = write_report(cfg.name, cfg.mlflow_uri, out)
    except Exception as exc:  # the search's results stand; say why the report is missing
        client.set_tag(parent_run_id, "cxr.report_error", f"{type(exc).__name__}: {exc}"[:5000])
        print(f"warning: report not written ({type(exc).__name__}: {exc})")
        return
    client.log_artifacts(parent_run_id, str(report_md.parent), artifact_path="report")


def policy_options(cfg) -> dict:
    """The search's objectives steer the Pareto policy; staged/weighted use their defaults;
    the collapse limit follows the budget (`SearchConfig.diversity_limit`)."""
    if cfg.experiment == "classifier":  # one validation metric decides, not the GAN criteria
        name, mode = cfg.objectives()[0]
        return {"weights": {name: 1.0}, "directions": {name: mode}}
    limits = {"min_diversity": cfg.diversity_limit(), "max_memorised": cfg.max_memorised}
    if cfg.policy != "pareto":
        return limits
    names = [name for name, _ in cfg.objectives()]
    if len(names) == 1:
        names = list(dict.fromkeys(["cas_acc", names[0]]))
    return {"objectives": tuple(names), **limits}


def _failed_trials(results) -> list[str]:
    """Trials that kept failing after their retries (a failed trial may never have reported)."""
    return [str((r.metrics or {}).get("trial_id") or Path(str(r.path)).name)
            for r in results if r.error is not None]


def _best_row(ranked) -> Optional[dict]:
    try:
        return ranking.best(ranked).to_dict()
    except ValueError:  # nothing rankable: every epoch lacks a metric the policy needs
        return None


def record_best(cfg, settings: Optional[TrialSettings], client, parent_run_id: str,
                best: dict, versus: str = "") -> dict:
    """Tag the selected (trial, epoch) on the parent, register its generator as `champion`,
    write the parent's note.  settings=None (a re-rank): no t-SNE is redrawn.  `versus`:
    why the selection beat the epoch with the best objective value (`versus_lowest`), shown
    in the note and as tag `cxr.best_versus_lowest` ("" when they are the same epoch)."""
    trial_id, epoch = str(best["trial_id"]), int(best["epoch"])
    run = _trial_run(client, cfg.name, parent_run_id, trial_id)
    metrics = {k: float(v) for k, v in best.items()
               if isinstance(v, (int, float)) and not isinstance(v, bool)
               and k not in ("epoch", "rank") and v == v}
    tags = {"cxr.best_trial_id": trial_id, "cxr.best_epoch": str(epoch),
            "cxr.best_run_id": run.info.run_id if run else ""}
    for key, value in tags.items():
        client.set_tag(parent_run_id, key, value)
    if run is not None:
        client.set_tag(run.info.run_id, "cxr.best_epoch", str(epoch))
    checkpoint = best.get("checkpoint") if isinstance(best.get("checkpoint"), str) else None
    registered = None
    if checkpoint and cfg.experiment != "classifier":
        # the version carries its copy audit: a user of the generator sees it at once
        audit = {k: f"{metrics[k]:.4g}" for k in MEMORISATION_TAGS + VERSION_METRICS
                 if isinstance(metrics.get(k), (int, float)) and metrics[k] == metrics[k]}
        registered = register_generator(cfg, run.info.run_id, checkpoint, epoch, audit,
                                        description=_version_note(run, epoch, metrics,
                                                                  best.get("reason")))
        if settings is not None:
            _log_champion_views(settings, client, parent_run_id, run.info.run_id, checkpoint,
                                f"trial {trial_id}, epoch {epoch}")
    note = _note(cfg, trial_id, epoch, run, metrics, checkpoint, registered, best.get("reason"),
                 versus)
    client.set_tag(parent_run_id, "mlflow.note.content", note)
    client.set_tag(parent_run_id, "cxr.best_versus_lowest", versus or SAME_EPOCH)
    lineage = best.get("lineage") if isinstance(best.get("lineage"), str) else ""
    if "<-" in lineage:  # PBT: the best weights descend from other trials' checkpoints
        client.set_tag(parent_run_id, "cxr.best_lineage", lineage)
    return {"best": {"trial_id": trial_id, "epoch": epoch, "run_id": tags["cxr.best_run_id"],
                     "checkpoint": checkpoint, "metrics": metrics,
                     "reason": best.get("reason", ""), "lineage": lineage,
                     "versus_lowest": versus},
            "registered_model": registered}


def _log_champion_views(settings: TrialSettings, client, parent_run_id: str, run_id: str,
                        checkpoint: str, title: str) -> None:
    """S0's stage 4, t-SNE of real validation vs the best generator's features (`tsne/`), and
    the copy view: its fakes nearest a training image beside those images (`memorisation/`,
    on the search run and the trial run)."""
    wanted = _views_wanted(client, parent_run_id, settings.eval.get("metrics") or ())
    if not any(wanted.values()):
        return
    blob = read_checkpoint_file(checkpoint, "generator.pt")
    with tempfile.TemporaryDirectory() as tmp:
        try:
            (Path(tmp) / "generator.pt").write_bytes(blob or b"")
            G, gan_cfg, _ = load_generator(Path(tmp) / "generator.pt")
            train, val = load_selection(settings, gan_cfg.resolution, gan_cfg.channels)
            evaluator = GanEvaluator(val, metrics=tuple(m for m, on in (
                                         ("fid", wanted["tsne"]),
                                         ("memorisation", wanted["memorisation"])) if on),
                                     latent_dim=gan_cfg.latent_dim,
                                     latent_dist=gan_cfg.latent_dist, seed=gan_cfg.seed,
                                     classes=getattr(G, "class_indices", None), real_train=train,
                                     n_fake=settings.eval.get("n_fake"))
        except Exception as exc:  # unreadable checkpoint, data gone: say so
            client.set_tag(parent_run_id, "cxr.tsne_skipped", f"{type(exc).__name__}: {exc}"[:5000])
            return
        views = (("tsne", "cxr.tsne_skipped", lambda: evaluator.tsne(
                    G, Path(tmp) / "tsne_best_epoch.png", title=f"t-SNE, {title}"), (parent_run_id,)),
                 ("memorisation", "cxr.copy_view_skipped", lambda: evaluator.copy_view(
                    G, Path(tmp) / "most_copied.png"), (parent_run_id, run_id)))
        for folder, skip_tag, draw, runs in views:
            if not wanted[folder]:
                continue
            try:
                png = draw()
            except Exception as exc:  # no Inception weights, too few images: say so
                client.set_tag(parent_run_id, skip_tag, f"{type(exc).__name__}: {exc}"[:5000])
                continue
            for target in runs:
                client.log_artifact(target, str(png), artifact_path=folder)


def _views_wanted(client, parent_run_id: str, metrics) -> dict[str, bool]:
    """Which champion views the search's metrics allow; a view left out gets its skip tag.
    The t-SNE needs Inception features, the copy view the pixel memorisation check: a search
    run with, say, `--eval-metrics visual` loads no Inception network at its end either."""
    asked = set(metrics)
    wanted = {"tsne": bool(asked & set(INCEPTION_EVALUATIONS)),
              "memorisation": "memorisation" in asked}
    needs = {"tsne": ("cxr.tsne_skipped", "one of " + ",".join(INCEPTION_EVALUATIONS)),
             "memorisation": ("cxr.copy_view_skipped", "memorisation")}
    for view, (tag, need) in needs.items():
        if not wanted[view]:
            client.set_tag(parent_run_id, tag, "not drawn: the search measured "
                           f"{','.join(sorted(asked)) or 'nothing'} (--eval-metrics); this "
                           f"view needs {need}")
    return wanted


def _trial_run(client, search_name: str, parent_run_id: str, trial_id: str):
    experiment = client.get_experiment_by_name(search_name)
    runs = trial_runs(client, experiment.experiment_id, parent_run_id, trial_id, 1)
    return runs[0] if runs else None


def _version_note(run, epoch: int, metrics: dict, reason) -> str:
    """The champion version's description: its epoch's numbers on the version page itself
    (MLflow shows the logged model's metrics one click further) and a link to its grid."""
    exp = run.info.experiment_id
    shown = ", ".join(f"{k}={metrics[k]:.4g}" for k in METRICS if k in metrics)
    return "\n".join(line for line in [
        f"Epoch {epoch} of trial run {run.info.run_name} "
        f"([run]({ui_link(exp, run.info.run_id)}), "
        f"[sample grid of epoch {epoch}]({ui_link(exp, run.info.run_id, grid_artifact(epoch))}))",
        f"- why selected: {reason}" if reason else "", f"- metrics: {shown}"] if line)


def _note(cfg, trial_id, epoch, run, metrics, checkpoint, registered, reason,
          versus: str = "") -> str:
    """The parent run's description: the best (trial, epoch) and, one click each, its run, its
    sample grid and the registered generator (relative links the MLflow UI opens in place)."""
    shown = ", ".join(f"{k}={metrics[k]:.4g}" for k in METRICS if k in metrics)
    exp = run.info.experiment_id if run else None
    run_link = f"[{run.info.run_name}]({ui_link(exp, run.info.run_id)})" if run else ""
    links = [f"[sample grid of epoch {epoch}]({ui_link(exp, run.info.run_id, grid_artifact(epoch))})"
             if run else "",
             (f"[registered generator {registered['name']} version {registered['version']} "
              f"(@{registered['alias']})](#/models/{registered['name']}/versions/"
              f"{registered['version']})") if registered else ""]
    # The links first: the UI folds a long description after its first lines.
    lines = [f"## Best epoch: trial {run_link or trial_id}, epoch {epoch}",
             " · ".join(link for link in links if link),
             "",
             f"- ranking policy: {cfg.policy}; why: {reason}" if reason else "",
             f"- not the same epoch as {versus}" if versus else "",
             f"- metrics: {shown}",
             "- every epoch's grid: the trial run's *Model metrics* tab, image `grid`, slider "
             "on the epoch; the full ranking: artefact `ranking/ranking.csv`",
             f"- trial run id: {run.info.run_id}" if run else "",
             f"- checkpoint: {checkpoint}" if checkpoint else ""]
    return "\n".join(line for i, line in enumerate(lines) if line or i == 2)


def format_summary(summary: dict) -> str:
    lines = [f"\n=== search {summary['search']}: {summary['trials']} trials, "
             f"policy {summary['policy']} ==="]
    if summary.get("failed_trials"):
        lines.append(f"failed trials: {', '.join(map(str, summary['failed_trials']))}")
    for status, trials in sorted((summary.get("endings") or {}).items()):
        lines.append(f"{status}: {len(trials)} trial(s)" + "".join(
            f"\n  {trial}: {reason}" for trial, reason in trials if reason))
    best = summary.get("best")
    if not best:
        lines.append(summary.get("why_none") or
                     "no epoch could be ranked (see the trials' stop_reason tags in MLflow)")
    else:
        lines.append(f"best: trial {best['trial_id']}, epoch {best['epoch']}  ({best['reason']})")
        if best.get("versus_lowest"):
            lines.append(f"  not the same epoch as {best['versus_lowest']}")
        if "<-" in best.get("lineage", ""):
            lines.append(f"  lineage (PBT): {best['lineage']}")
        keys = [k for k in ("fid", "kid", "intra_fid", "cas_acc", "cas_f1", "g_loss",
                            "d_fake_acc", "val_macro_f1", "val_accuracy")
                if k in best["metrics"]]
        lines.append("  " + "  ".join(f"{k}={best['metrics'][k]:.4g}" for k in keys))
        if summary.get("registered_model"):
            reg = summary["registered_model"]
            lines.append(f"generator: models:/{reg['name']}@{reg['alias']} (version {reg['version']})")
    lines += _trial_lines(summary.get("trial_table") or [])
    where = (f"http://127.0.0.1:5000/{ui_link(summary['experiment_id'])}"
             if summary.get("experiment_id") else f"experiment '{summary['search']}'")
    lines.append(f"look: mlflow ui --backend-store-uri {summary['mlflow_uri']}, then {where} -> "
                 f"run '{summary['search']}': its description links the best trial run, that "
                 "epoch's sample grid and the registered generator")
    if summary.get("next"):
        lines.append("next:\n" + "\n".join(f"  {command}" for command in summary["next"]))
    return "\n".join(lines)


def _trial_lines(rows: list[dict]) -> list[str]:
    if not rows:
        return []
    name = [k for k in rows[0] if k not in ("trial", "status", "epochs", "best_epoch", "reason")][0]
    out = [f"  {'trial':<12} {'status':<14} {'epochs':>6} {'best epoch':>10} {name:>10}  reason"]
    for r in rows:
        value = "-" if r[name] is None else f"{r[name]:.4g}"
        epoch = "-" if r["best_epoch"] is None else str(r["best_epoch"])
        out.append(f"  {r['trial'][:12]:<12} {r['status'][:14]:<14} {r['epochs']:>6} {epoch:>10} "
                   f"{value:>10}  {r['reason'][:80]}")
    return ["trials:"] + out
