"""`python -m orchestrator.search {acgan,dcgan,cgan,wgan_gp,classifier}` (also `cxr-search`):
the search users run.

With no options: a local Ray on this machine's CPUs/GPUs, MLflow at
`sqlite:///mlruns/mlflow.db` (artefacts under ./mlruns), Tune storage under ./ray_results,
and the default data set (PneumoniaMNIST).  On a machine without a GPU and without an
explicit budget the CPU smoke budget is used, and the command says so.

Only the standard library is imported before the options have parsed: torch, Ray, MLflow and
the registries (which load the model code) come with the run, so `--help` and option errors
return at once.  rank, report and generate take their shared names and options from here.
"""
from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from typing import TYPE_CHECKING

from orchestrator.config import ARTIFACT_ROOT_HELP, CLASS_OPTIONS_HELP  # light: no registry at import

from orchestrator.cli import SET_HELP, config_table, parse_then_run

if TYPE_CHECKING:
    from orchestrator.config import SearchConfig

# The registries' names and the config's defaults, written out so that building a parser
# imports nothing heavy (`orchestrator.registry` loads torch and the model code).
# tests/test_cli_help.py checks them against the real ones, so they cannot drift: a new GAN
# family or preset fails that test until it is added here.
EXPERIMENTS = ("acgan", "dcgan", "cgan", "wgan_gp", "classifier")  # registry.EXPERIMENTS
PRESETS = ("s0", "s1", "s2", "s3", "s4")  # trainables.gan.presets.PRESETS
SEARCHERS = ("optuna", "random")  # registry.SEARCHERS
TUNE_SCHEDULERS = ("asha", "none", "pbt")  # registry.TUNE_SCHEDULERS
POLICIES = ("staged", "pareto", "weighted")  # orchestrator.ranking.POLICIES
DEFAULT_MLFLOW_URI = "sqlite:///mlruns/mlflow.db"  # orchestrator.config.DEFAULT_MLFLOW_URI
DEFAULT_STORAGE = "ray_results"  # orchestrator.config.DEFAULT_STORAGE
MAX_MEMORISED = 0.05  # orchestrator.ranking.MAX_MEMORISED

EXAMPLES = """examples:
  python -m orchestrator.search acgan --smoke --data ../shared/data/covid19-radiography-subset
  python -m orchestrator.search dcgan --preset s4 --num-samples 40 --max-epochs 200 \\
      --objective fid,cas_acc --storage s3://BUCKET/cxr --mlflow-uri http://HEAD:5000
  python -m orchestrator.search acgan --set help      # the keys --set overrides
"""


def __getattr__(name: str):
    # `search.SearchConfig` (tests, notebooks) without importing the config, and with it the
    # registries, whenever this module is imported for --help.
    if name == "SearchConfig":
        from orchestrator.config import SearchConfig

        return SearchConfig
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter, argparse.RawDescriptionHelpFormatter):
    """Every command's help: `(default: X)` after each option that has a default (None,
    False and [] are left out: the help text says what happens then), and the epilog's
    example command lines kept as written."""

    def _get_help_string(self, action: argparse.Action) -> str:
        if action.default is None or action.default is False or action.default == []:
            return action.help
        return super()._get_help_string(action)


class DeprecatedAlias(argparse.Action):
    """An old spelling of an option: still works, hidden from --help, warns when used."""

    def __init__(self, option_strings, dest, *, new: str, **kwargs):
        kwargs.setdefault("default", argparse.SUPPRESS)  # never overwrite the new option's
        super().__init__(option_strings, dest, help=argparse.SUPPRESS, **kwargs)
        self.new = new

    def __call__(self, parser, namespace, values, option_string=None):
        print(f"warning: {option_string} is deprecated; use {self.new}", file=sys.stderr)
        setattr(namespace, self.dest, values)


def add_objective(group, *, default: str | None, help: str) -> None:
    """`--objective` (comma-separated metrics), the same name in search and rank; rank's old
    `--objectives` still works."""
    group.add_argument("--objective", default=default, metavar="METRICS", help=help)
    group.add_argument("--objectives", dest="objective", action=DeprecatedAlias, new="--objective")


def add_search_name(group, **kwargs) -> None:
    """The positional `search` of rank, report and generate."""
    group.add_argument("search", metavar="SEARCH",
                       help="search name (= MLflow experiment) or 'latest'", **kwargs)


def add_mlflow_uri(group) -> None:
    group.add_argument("--mlflow-uri", default=DEFAULT_MLFLOW_URI, metavar="URI",
                       help="MLflow tracking URI (sqlite:///… or http://host:port)")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m orchestrator.search", formatter_class=HelpFormatter, epilog=EXAMPLES,
        description="Search GAN (or classifier) hyper-parameters with Ray Tune + Optuna,\n"
                    "rank every epoch, record everything in MLflow (also: cxr-search).")
    p.add_argument("experiment", choices=EXPERIMENTS, help="what to train and search")
    _what_options(p.add_argument_group("what to search"))
    _data_options(p.add_argument_group("data"))
    _budget_options(p.add_argument_group("budget"))
    _resource_options(p.add_argument_group("resources (Ray)"))
    _ranking_options(p.add_argument_group("ranking (which epoch is selected)"))
    _storage_options(p.add_argument_group("storage"))
    _classifier_options(p.add_argument_group("classifier only"))
    return p


def _what_options(g) -> None:
    g.add_argument("--preset", choices=PRESETS,
                   help="seed system to reproduce and search around (shared/SYSTEMS.md): "
                        "s0/s3 AC-GAN, s1/s4 DCGAN, s2 cGAN; default s0, s1, s2 by family")
    g.add_argument("--searcher", choices=SEARCHERS, default="optuna",
                   help="optuna: TPE (seeded); random: Optuna's random sampler, same space")
    g.add_argument("--scheduler", choices=TUNE_SCHEDULERS, default="asha",
                   help="asha: early stopping on the objective; pbt: population based "
                        "training (random search); none: run every trial to the end")
    add_objective(g, default=None,
                  help="per-epoch metric to optimise, e.g. fid, kid, cas_acc; comma-separate "
                       "two or more for multi-objective Optuna (ASHA uses the first); "
                       "default fid (classifier: val_macro_f1)")
    g.add_argument("--asha-grace", type=float, default=0.25, metavar="SHARE",
                   help="ASHA stops no trial before this share of the epochs")
    g.add_argument("--seed", type=int, default=0, metavar="N", help="seed of the searcher and the trials")
    g.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a trial config field (e.g. --set width=0.25; values are "
                        "YAML); unknown keys fail; `--set help` lists the keys")


# --exclude-classes, --label-map, --classes: the data loader's exclude_labels=, label_map=
# and classes= on the command line (search, study, audit), with one help text each.


def add_class_options(g) -> None:
    """--exclude-classes A,B, --label-map OLD=NEW (repeatable), --classes A,B,C."""
    g.add_argument("--exclude-classes", metavar="A,B", help=CLASS_OPTIONS_HELP["exclude_classes"])
    g.add_argument("--label-map", action="append", default=[], metavar="OLD=NEW",
                   help=CLASS_OPTIONS_HELP["label_map"])
    g.add_argument("--classes", metavar="A,B,C", help=CLASS_OPTIONS_HELP["classes"])


def _data_options(g) -> None:
    g.add_argument("--data", default="default", metavar="SOURCE",
                   help="data source: a folder-per-class directory, a COVIDx directory, an "
                        "ieee8023 metadata.csv, a MedMNIST .npz, or 'default' (PneumoniaMNIST)")
    g.add_argument("--duplicates", choices=("drop", "error", "keep"), default="drop",
                   help="byte-identical images under two names (a train/val leak in several "
                        "published sets): drop keeps one file of each group, the earliest "
                        "split's (train, then val, then test), and prints how many; error "
                        "stops; keep loads them all. All are listed in duplicates.csv beside "
                        "the manifest")
    g.add_argument("--skip-bad", action="store_true",
                   help="skip unreadable/truncated images instead of stopping; they are "
                        "printed and listed in skipped.csv beside the manifest")
    add_class_options(g)


def _budget_options(g) -> None:
    g.add_argument("--smoke", action="store_true",
                   help="tiny budget that runs on a 2-core CPU in minutes (32 px, few trials)")
    g.add_argument("--num-samples", type=int, metavar="N", help="number of trials (default 20; smoke 4)")
    g.add_argument("--max-epochs", type=int, metavar="N", help="epochs per trial (default: the preset's)")
    g.add_argument("--max-images", type=image_count, metavar="N",
                   help="training images per trial (e.g. 2e6): a trial ends at N images or its "
                        "epochs, whichever comes first, and ASHA decides at image counts, so a "
                        "search costs the same on 1k and 30k training images (default: no image "
                        "budget, epochs decide)")
    g.add_argument("--eval-metrics", metavar="LIST",
                   # by hand: the registry would import torch into --help (a test compares)
                   help="comma-separated per-epoch evaluation metrics "
                        "(fid,kid,intra_fid,is,cas,visual,memorisation,memorisation_inception); "
                        "default depends on --smoke")
    g.add_argument("--eval-every", type=int, metavar="K",
                   help="evaluate every K epochs (and at a trial's last epoch); default: "
                        "--eval-every-images 8192, --smoke every epoch")
    g.add_argument("--eval-every-images", type=image_count, metavar="N",
                   help="evaluate each time another N training images were seen (and at a "
                        "trial's last epoch), instead of every K epochs (default 8192: every "
                        "epoch of a large data set, every few of a small one; --smoke: every "
                        "epoch)")
    g.add_argument("--keep-epochs", type=int, default=5, metavar="K",
                   help="per trial, keep the generator weights of the K best epochs by the "
                        "(first) objective, plus the latest (the full training states for resume are "
                        "--set state_every=K, newest two kept); every epoch's metrics and grid "
                        "are kept")


def image_count(text: str) -> int:
    """A whole number of images, also written 2e6 or 2_000_000."""
    value = float(text.replace("_", ""))
    if not value.is_integer():
        raise ValueError(text)
    return int(value)


def _resource_options(g) -> None:
    g.add_argument("--max-concurrent", type=int, metavar="N",
                   help="trials at once (default: cluster GPUs / GPUs per trial, or CPUs)")
    g.add_argument("--workers-per-trial", type=int, default=1, metavar="N",
                   help="Ray Train workers (DDP processes) per trial")
    g.add_argument("--gpus-per-worker", type=float, metavar="GPUS",
                   help="GPUs per worker (default 1/N with --trials-per-gpu N if the cluster has "
                        "GPUs, else 0)")
    g.add_argument("--trials-per-gpu", default="auto", metavar="N|auto",
                   help="trials sharing one GPU (each trial, or each DDP worker, asks Ray for "
                        "1/N GPU); auto: as many as fit in 80%% of the visible GPU's free "
                        "memory by the trial's estimate, at most 8 (1 without a visible GPU "
                        "or with --workers-per-trial > 1); a trial that finds too little "
                        "free GPU memory fails with that reason")
    g.add_argument("--gpu-wait", type=float, default=0.0, metavar="SECONDS",
                   help="on an autoscaling cluster (`ray up cluster.yaml`, GPU nodes scale "
                        "from zero): ask the autoscaler for the GPUs a trial needs and wait up "
                        "to SECONDS for them; trials then run as the autoscaler adds nodes")
    g.add_argument("--execution", choices=("auto", "function", "train"), default="auto",
                   help="train: every trial is a Ray Train TorchTrainer (DDP); function: the "
                        "loop runs in the Tune trial (1 worker); auto: train when a trial has "
                        "GPUs or several workers")


def _ranking_options(g) -> None:
    g.add_argument("--policy", choices=POLICIES, default="staged",
                   help="epoch-ranking policy run at the end of the search "
                        "(`python -m orchestrator.rank` re-ranks later)")
    g.add_argument("--min-diversity", type=float, metavar="RATIO",
                   help="never select an epoch whose within-class diversity ratio (fakes vs "
                        "real) is below RATIO (default 0.4; 0.25 at the smoke budget)")
    g.add_argument("--max-memorised", type=float, default=MAX_MEMORISED, metavar="SHARE",
                   help="never select an epoch whose memorised_share (fakes nearer a training "
                        "image than almost any unseen real image) is above SHARE")


def _storage_options(g) -> None:
    g.add_argument("--storage", default=DEFAULT_STORAGE, metavar="PATH|URI",
                   help="Tune storage: a local path or s3://… / gs://… (required on a cluster)")
    add_mlflow_uri(g)
    g.add_argument("--artifact-root", metavar="PATH|URI", help=ARTIFACT_ROOT_HELP)
    g.add_argument("--name", metavar="NAME", help="search name (= MLflow experiment); default <exp>-<preset>-<time>")
    g.add_argument("--resume", action="store_true",
                   help="continue the interrupted search --name (or the latest one)")
    g.add_argument("--force", action="store_true",
                   help="with --resume: continue even though the settings or the data's "
                        "fingerprint differ from the first run's (the difference is recorded)")


def _classifier_options(g) -> None:
    g.add_argument("--tune", action="store_true",
                   help="search its hyper-parameters (lr, batch size, dropout, strategy) with "
                        "Tune; without it `search classifier` is the strategy study "
                        "(`python -m orchestrator.study`)")
    g.add_argument("--no-pretrained", action="store_true",
                   help="train VGG16/ResNet50 from scratch instead of loading ImageNet "
                        "weights from the torch hub cache (labelled in MLflow)")


def config_from_args(argv: Sequence[str] | None = None) -> SearchConfig:
    """Parse and validate; a bad value raises ValueError naming the option."""
    return config_from_namespace(build_parser().parse_args(argv))


def config_from_namespace(args: argparse.Namespace) -> SearchConfig:
    """The validated SearchConfig of parsed options (imports the registries)."""
    from dataclasses import replace

    from orchestrator import registry
    from orchestrator.config import SearchConfig, validate

    preset = args.preset or registry.default_preset(args.experiment)
    allowed = registry.presets_of(args.experiment)
    if preset not in allowed:
        raise ValueError(f"preset {preset!r} is a {registry.preset_family(preset)} system, not "
                         f"{args.experiment}; {args.experiment} presets: {', '.join(allowed)}")
    # Every option's dest is a SearchConfig field (tests/test_search_cli.py checks it).
    options = {**vars(args), "preset": preset, "overrides": tuple(args.overrides),
               "label_map": tuple(args.label_map),
               "num_samples": 20 if args.num_samples is None else args.num_samples}
    cfg = SearchConfig(**options)
    budget_given = args.num_samples is not None or args.max_epochs is not None
    if not cfg.smoke and not budget_given and not _has_gpu():
        print("No GPU found and no budget given (--num-samples/--max-epochs): running the CPU "
              "smoke budget. Give a budget, or run on a GPU machine / `ray up cluster.yaml`, "
              "for a real search.", file=sys.stderr)
        cfg = replace(cfg, smoke=True)
    if cfg.smoke and args.num_samples is None:
        cfg = replace(cfg, num_samples=4)
    validate(cfg)
    return cfg


def _has_gpu() -> bool:
    import torch

    return torch.cuda.is_available()


def print_set_help(cfg: SearchConfig) -> None:
    """`--set help`: the trial config fields --set overrides (GANConfig, or ClassifierConfig
    for `classifier --tune`) with their types, defaults and the values this command line
    starts every trial from (preset, family, budget and the other --set values)."""
    from orchestrator.run import settings

    if cfg.is_gan:
        from trainables.gan.config import GANConfig as kind

        start = settings.gan_base_config(cfg)
    else:
        from trainables.classifier.config import ClassifierConfig as kind

        start = settings.classifier_base_config(cfg)
    print(f"--set KEY=VALUE overrides these {kind.__name__} fields ({cfg.experiment}, preset "
          f"{cfg.preset}{', smoke budget' if cfg.smoke else ''}):\n")
    print(config_table(kind, start))
    print(f"\nValues are YAML: --set amp=false --set lr_g=1e-4 --set variant=null.\n"
          f"The keys search_spaces/{cfg.experiment}.py samples are set per trial, over these.")


def _run_search(cfg: SearchConfig) -> None:
    from orchestrator.pipeline import run_search  # Ray, MLflow and torch: only now

    run_search(cfg)


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["classifier"] and "--tune" not in argv:
        # `search classifier` is the study's old name: the study has its own command now
        from orchestrator.study.cli import main as study_main

        return study_main(argv[1:], prog="python -m orchestrator.search classifier")
    args = build_parser().parse_args(argv)
    if SET_HELP in args.overrides:
        args.overrides = [o for o in args.overrides if o != SET_HELP]
        return parse_then_run(lambda: config_from_namespace(args), print_set_help)
    return parse_then_run(lambda: config_from_namespace(args), _run_search)


if __name__ == "__main__":
    sys.exit(main())
