"""`python -m orchestrator.study` (also `python -m orchestrator.search classifier` and
`cxr-study`): parse, then run; user mistakes end in one `error:` line and exit code 2."""
from __future__ import annotations

import sys
from typing import Optional, Sequence

from orchestrator.cli import SET_HELP, config_table, parse_then_run
from orchestrator.study.config import build_parser, config_from_namespace, study_settings


def main(argv: Optional[Sequence[str]] = None, *,
         prog: str = "python -m orchestrator.study") -> int:
    def run(cfg) -> None:
        from orchestrator.study import driver  # MLflow and torch only once the options are good

        driver.run(cfg)

    args = build_parser(prog).parse_args(argv)
    if SET_HELP in args.overrides:
        args.overrides = [o for o in args.overrides if o != SET_HELP]
        return parse_then_run(lambda: config_from_namespace(args), print_set_help)
    return parse_then_run(lambda: config_from_namespace(args), run)


def print_set_help(cfg) -> None:
    """`--set help`: the ClassifierConfig fields and the budget keys --set overrides, with
    their types, defaults and the values this command line starts every classifier from."""
    from trainables.classifier.config import ClassifierConfig

    budget, base = study_settings(cfg)
    start = {**base, "source": cfg.data,
             **{k: budget[k] for k in ("resolution", "epochs", "model", "n_boot")}}
    print(f"--set KEY=VALUE overrides these ClassifierConfig fields (the study"
          f"{', smoke budget' if cfg.smoke else ''}):\n")
    print(config_table(ClassifierConfig, start, "THIS STUDY"))
    print(f"\nand the budget: seeds (now {','.join(map(str, budget['seeds']))}).\n"
          "Values are YAML: --set epochs=10 --set seeds=0,1,2,3,4 --set lr=1e-4.")


if __name__ == "__main__":
    sys.exit(main())
