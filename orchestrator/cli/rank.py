"""`python -m orchestrator.rank` (also `cxr-rank`): re-rank a finished search from its stored
MLflow metrics, without retraining, and move its selection (best-run tags, `champion` alias)
to the new rank 1 unless `--dry-run`.

    python -m orchestrator.rank <search | latest> --policy staged|pareto|weighted \\
        [--verdicts CSV] [--dry-run] [--mlflow-uri URI] [--out DIR]

Reads the search's epoch table (`orchestrator.store.reader`; human verdicts as tags
`verdict.epoch_0007 = reject` or a CSV), ranks with `orchestrator.ranking`, writes
`<out>/ranking_<policy>.parquet` and `.csv`, and records the new ranking on the search.
pandas, MLflow and the ranking code are imported once the options have parsed (fast --help).
"""
from __future__ import annotations

import argparse
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING

from orchestrator.cli import check_out_folder, parse_then_run
from orchestrator.cli.search import (
    POLICIES,
    HelpFormatter,
    add_mlflow_uri,
    add_objective,
    add_search_name,
)

if TYPE_CHECKING:
    import pandas as pd

    from orchestrator.config import SearchConfig
    from orchestrator.store.reader import SearchRecord

MAX_CONSTANT_FRAC = 0.5  # orchestrator.ranking.MAX_CONSTANT_FRAC (tests/test_cli_help.py)
POLICY_HELP = ("staged: S0's procedure (shortlist by low G loss and D fake-accuracy, then "
               "CAS, then FID/intra-FID/KID); pareto: non-dominated fronts over --objective; "
               "weighted: weighted mean of per-metric ranks (--weights)")
DESCRIPTION = ("Re-rank a finished search from its stored MLflow metrics, without retraining,\n"
               "and move its selection (best-run tags, `champion` alias) to the new rank 1\n"
               "unless --dry-run (also: cxr-rank).")
EXAMPLES = """examples:
  python -m orchestrator.rank latest --policy pareto --objective cas_acc,fid --dry-run
  python -m orchestrator.rank acgan-s0-20250101-120000 --policy staged --verdicts verdicts.csv \\
      --mlflow-uri http://HEAD:5000
"""


def _weights(text: str | None) -> dict[str, float] | None:
    if not text:
        return None
    try:
        return {k.strip(): float(v) for k, v in (p.split("=") for p in text.split(","))}
    except ValueError:
        raise ValueError(f"--weights {text!r}: write metric=weight pairs, e.g. "
                         "cas_acc=1,fid=1") from None


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m orchestrator.rank", formatter_class=HelpFormatter,
                                description=DESCRIPTION, epilog=EXAMPLES)
    which = p.add_argument_group("which search")
    add_search_name(which)
    add_mlflow_uri(which)
    _ranking_options(p.add_argument_group("ranking"))
    _limit_options(p.add_argument_group("limits (an epoch past one is never ranked)"))
    out = p.add_argument_group("output")
    out.add_argument("--out", type=Path, default=None, metavar="DIR",
                     help="folder for ranking_<policy>.parquet/.csv (default rankings/<search>)")
    out.add_argument("--dry-run", action="store_true",
                     help="only print and write the ranking; leave the search's best-run tags "
                          "and the champion alias as they are")
    return p


def _ranking_options(g) -> None:
    g.add_argument("--policy", choices=POLICIES, default="staged", help=POLICY_HELP)
    add_objective(g, default="cas_acc,fid",
                  help="pareto: comma-separated metrics the fronts are over")
    g.add_argument("--weights", default=None, metavar="METRIC=W,...",
                   help="weighted: metric=weight pairs (default cas_acc=1,fid=1,kid=0.5)")
    g.add_argument("--shortlist", type=int, default=10, metavar="N",
                   help="staged: how many epochs stage 1 keeps for CAS")
    g.add_argument("--verdicts", type=Path, default=None, metavar="CSV",
                   help="CSV trial_id,epoch,verdict (approve|reject): human verdicts, e.g. "
                        "after looking at the grids")


def _limit_options(g) -> None:
    g.add_argument("--min-diversity", type=float, default=None, metavar="RATIO",
                   help="never rank an epoch whose diversity_ratio is below this (collapsed "
                        "within a class; default: what the search used, 0.4 or 0.25 at the "
                        "smoke budget)")
    g.add_argument("--max-constant-frac", type=float, default=MAX_CONSTANT_FRAC, metavar="SHARE",
                   help="never rank an epoch where this share of the fakes is one flat image")
    g.add_argument("--max-memorised", type=float, metavar="SHARE",
                   help="never rank an epoch whose memorised_share is above SHARE (default: "
                        "the search's --max-memorised, else 0.05)")


def search_config(record: SearchRecord, policy: str) -> SearchConfig:
    """The search's own settings, as far as ranking and registering need them."""
    from orchestrator import ranking
    from orchestrator.config import SearchConfig

    params = record.params
    experiment = params.get("experiment") or record.tags.get("cxr.experiment", "acgan")
    return SearchConfig(experiment=experiment, preset=params.get("preset", "s0"),
                        name=record.name, mlflow_uri=record.tracking_uri, policy=policy,
                        smoke=params.get("smoke") == "True",
                        objective=params.get("objective") or None,
                        max_memorised=float(params.get("max_memorised", ranking.MAX_MEMORISED)),
                        # the limit the search ranked with (searches before it was a param:
                        # the budget's default)
                        min_diversity=(float(params["min_diversity"])
                                       if params.get("min_diversity") else None),
                        scheduler=params.get("scheduler") or "asha",
                        **({"storage": params["storage"]} if params.get("storage") else {}))


def shown(ranked: pd.DataFrame, rows: int = 10) -> str:
    cols = [c for c in ("rank", "trial_id", "epoch", "status", "reason") if c in ranked]
    top = ranked[cols].head(rows).copy()
    top["epoch"] = top["epoch"].astype(int)
    return top.to_string(index=False)


def checked(args: argparse.Namespace) -> argparse.Namespace:
    """The options, checked before the store is opened: a mistake is a ValueError or
    ConfigError naming the option (one `error:` line, exit code 2)."""
    args.weights_map = _weights(args.weights)
    if args.shortlist < 1:
        raise ValueError(f"--shortlist must be >= 1, got {args.shortlist}")
    for flag, value, top in (("--max-constant-frac", args.max_constant_frac, 1),
                             ("--max-memorised", args.max_memorised, 1),
                             ("--min-diversity", args.min_diversity, 1)):
        if value is not None and not 0 <= value <= top:
            raise ValueError(f"{flag} is a share in [0, 1], got {value}")
    if args.verdicts is not None and not args.verdicts.is_file():
        raise ValueError(f"--verdicts {args.verdicts}: no such file; write a CSV with columns "
                         "trial_id,epoch,verdict (approve|reject)")
    if args.out is not None:
        check_out_folder(args.out)
    return args


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return parse_then_run(lambda: checked(args), run)


def run(args: argparse.Namespace) -> None:
    """Re-rank the search; a store, verdicts or --out the command cannot use is a ConfigError."""
    # pandas, MLflow and the registries: only once the options are good
    from orchestrator import ranking
    from orchestrator.config import ConfigError
    from orchestrator.finalize import mark_kept
    from orchestrator.store.layout import StoreError
    from orchestrator.store.reader import load_epoch_table, load_search

    try:
        record = load_search(args.search, args.mlflow_uri)
        verdicts = ranking.load_verdicts_csv(args.verdicts) if args.verdicts else None
    except (StoreError, ValueError) as exc:  # a malformed verdicts CSV is a ValueError
        raise ConfigError(str(exc)) from None
    out = args.out or Path("rankings") / record.name
    check_out_folder(out)
    cfg = search_config(record, args.policy)
    table = load_epoch_table(record)
    if cfg.is_gan:
        table = mark_kept(table)
    options = {"staged": {"shortlist": args.shortlist},
               "pareto": {"objectives": tuple(args.objective.split(","))},
               "weighted": {"weights": args.weights_map}}[args.policy]
    limit = args.min_diversity if args.min_diversity is not None else cfg.diversity_limit()
    memorised = args.max_memorised if args.max_memorised is not None else cfg.max_memorised
    ranked = ranking.rank(table, args.policy, verdicts, min_diversity=limit,
                          max_constant_frac=args.max_constant_frac, max_memorised=memorised,
                          **options)
    pq, csv = ranking.write_ranking(ranked, out, f"ranking_{args.policy}")
    print(shown(ranked))
    print(f"wrote {pq} and {csv}")
    print(update_selection(record, cfg, ranked, args.dry_run))


def update_selection(record: SearchRecord, cfg: SearchConfig, ranked: pd.DataFrame,
                     dry_run: bool) -> str:
    """Move the search's selection to the new rank 1 (tags, note, ranking artefact, a new
    registry version aliased `champion`); returns what happened, in a sentence."""
    from mlflow.tracking import MlflowClient

    from orchestrator import ranking
    from orchestrator.finalize import (log_best_metrics, log_contact_sheets, note_optuna,
                                       record_best, trial_endings, trial_table, versus_lowest)
    from orchestrator.store.layout import trial_runs

    try:
        best = ranking.best(ranked).to_dict()
    except ValueError as exc:
        return f"nothing rankable ({exc}); the search's selection is unchanged"
    new = (str(best["trial_id"]), int(best["epoch"]))
    old = (record.tags.get("cxr.best_trial_id"), record.tags.get("cxr.best_epoch"))
    if old == (new[0], str(new[1])):
        return f"the selection is unchanged: trial {new[0]}, epoch {new[1]}"
    if dry_run:
        return (f"--dry-run: would select trial {new[0]}, epoch {new[1]} (now: trial {old[0]}, "
                f"epoch {old[1]}); nothing changed")
    client = MlflowClient(record.tracking_uri)
    parent = record.parent.info.run_id
    with tempfile.TemporaryDirectory() as tmp:
        for path in ranking.write_ranking(ranked, tmp, "ranking"):
            client.log_artifact(parent, str(path), artifact_path="ranking")
    objective = cfg.objectives()[0]
    done = record_best(cfg, None, client, parent, best, versus_lowest(ranked, best, objective))
    log_best_metrics(client, parent, best, objective[0])  # one "best" after the move too
    # ... on the other screens too: the Optuna study's notes and the "(selected)" sheet mark
    runs = trial_runs(client, record.parent.info.experiment_id, parent)
    note_optuna(cfg, runs, {"best": done["best"], "trial_table": trial_table(
        ranked, trial_endings(client, cfg.name, parent), objective)})
    if cfg.is_gan:
        log_contact_sheets(client, runs, done["best"])
    client.set_tag(parent, "cxr.reranked", f"policy {cfg.policy}; was trial {old[0]}, epoch {old[1]}")
    registered = done.get("registered_model")
    return (f"selected trial {new[0]}, epoch {new[1]} (was trial {old[0]}, epoch {old[1]})"
            + (f"; champion -> {registered['name']} version {registered['version']}"
               if registered else ""))
