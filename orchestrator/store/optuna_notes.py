"""The Optuna study told how the product judged its trials (issue 24: one "best" everywhere).

optuna-dashboard marks the trial with the best objective value as "best", which may be a
trial the ranking excluded (collapsed, say), and numbers trials its own way.  Optuna freezes
a finished trial's attributes and the ranking runs after the trials finished, so the verdicts
go on the *study*: `cxr.selected` (the selected trial, epoch and MLflow run) and one
`cxr.trial.<optuna number>` per trial (its Tune trial id, MLflow run id, how it ended, and its
best selectable epoch or why none).  optuna-dashboard lists them under the study's user
attributes; `optuna.load_study(...).user_attrs` reads them.  (Each trial also carries its Tune
id as the trial attribute `tune_trial_id`, set while it ran.)
"""
from __future__ import annotations

from pathlib import Path

import optuna


def study_path(storage: str, name: str) -> Path:
    """The search's Optuna study file: beside the Tune results (./ray_results for a remote
    --storage)."""
    root = Path(storage) if "://" not in storage else Path("ray_results").resolve()
    return root / f"{name}-optuna.db"


def study_url(storage: str, name: str) -> str:
    """The study's storage URL (`orchestrator.run.tuner.optuna_storage` opens it)."""
    return f"sqlite:///{study_path(storage, name)}"


def trial_line(row: dict, run_id: str, objective: str) -> str:
    """One trial as the product judged it."""
    head = f"tune trial {row['trial']} · MLflow run {run_id or '?'} · {row.get('status') or '?'}"
    if row.get("best_epoch") is None:
        return f"{head} · excluded: {row.get('reason') or 'no selectable epoch'}"
    value = row.get(objective)
    shown = f" ({objective} {value:.4g})" if isinstance(value, float) else ""
    return f"{head} · best selectable epoch {row['best_epoch']}{shown}"


def annotate(url: str, name: str, rows: list[dict], run_ids: dict[str, str],
             best: dict | None, objective: str, search_ended: bool = False) -> int:
    """Write the verdicts onto study `name` at `url`; returns how many trials were noted
    (0 when the search had no Optuna study, e.g. under PBT).  `search_ended` (Tune's fit
    returned, every trial over): a trial still RUNNING is a suggestion nobody ran, FAILED with
    the reason; a re-rank of a search that may resume leaves it alone."""
    try:
        study = optuna.load_study(study_name=name, storage=url)
    except KeyError:  # no such study: the searcher was not Optuna
        return 0
    by_tune_id = {str(r["trial"]): r for r in rows}
    noted = 0
    for trial in study.get_trials(deepcopy=False):
        if search_ended and trial.state == optuna.trial.TrialState.RUNNING:
            _close_orphan(study, trial)
            continue
        row = by_tune_id.get(str(trial.user_attrs.get("tune_trial_id")))
        if row is not None:
            study.set_user_attr(f"cxr.trial.{trial.number}",
                                trial_line(row, run_ids.get(row["trial"], ""), objective))
            noted += 1
    study.set_user_attr("cxr.selected", "none" if best is None else
                        f"tune trial {best['trial_id']}, epoch {best['epoch']} · MLflow run "
                        f"{best.get('run_id') or '?'} (the ranking's choice; Optuna's own "
                        "'best trial' is only the best objective value)" +
                        (f"; not the same epoch as {best['versus_lowest']}"
                         if best.get("versus_lowest") else ""))
    return noted


NEVER_RAN = ("suggested, never run: the driver stopped between Optuna's suggestion and Tune's "
             "saved state, and the resumed search did not know the trial")


def _close_orphan(study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
    """A trial still RUNNING once the search has ended was asked for and never run (Tune's
    trials have all ended by now): FAIL it with the reason, or the dashboard shows it running
    forever."""
    optuna.trial.Trial(study, trial._trial_id).set_user_attr("cxr.excluded", NEVER_RAN)
    study.tell(trial.number, state=optuna.trial.TrialState.FAIL)
    study.set_user_attr(f"cxr.trial.{trial.number}", NEVER_RAN)
