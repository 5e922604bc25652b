"""The commands fit the ecosystem (issue 24, item 7): `--help` and option errors return before
torch, Ray, MLflow, Optuna, pandas or matplotlib are imported (checked on sys.modules, which
is deterministic; benchmarks/cli_help.py times it); the names the parsers offer are the
registries'; `--set help`; one option name across the commands, old spellings still work."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from orchestrator.cli import generate, rank, report, search

REPO = Path(__file__).resolve().parents[1]
HEAVY = ("torch", "ray", "mlflow", "optuna", "pandas", "matplotlib", "trainables")
# A fresh interpreter calls main(argv) and prints its exit code and the heavy packages loaded.
PROBE = """
import sys
from {module} import main
try:
    code = main({argv!r})
except SystemExit as exc:
    code = exc.code
print("PROBE", code, ",".join(sorted({{m.split(".")[0] for m in sys.modules}} & set({heavy!r}))))
"""
COMMANDS = [pytest.param("orchestrator.cli.search", id="search"),
            pytest.param("orchestrator.cli.rank", id="rank"),
            pytest.param("orchestrator.cli.report", id="report"),
            pytest.param("orchestrator.cli.generate", id="generate"),
            pytest.param("orchestrator.study.cli", id="study"),
            pytest.param("orchestrator.cli.audit", id="audit")]


def probe(module: str, argv: list[str]) -> tuple[str, str, str]:
    """(exit code, heavy packages imported, stdout) of `main(argv)` in a fresh interpreter."""
    code = PROBE.format(module=module, argv=argv, heavy=HEAVY)
    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, check=False,
                          text=True, timeout=120)
    last = [line for line in proc.stdout.splitlines() if line.startswith("PROBE ")][-1]
    _, exit_code, heavy = (last + " ").split(" ", 2)
    return exit_code, heavy.strip(), proc.stdout


@pytest.mark.parametrize("module", COMMANDS)
def test_help_imports_nothing_heavy(module):
    exit_code, heavy, out = probe(module, ["--help"])
    assert (exit_code, heavy) == ("0", "")
    assert "examples:" in out  # two real command lines in every epilog


def test_every_command_groups_its_options_and_shows_defaults():
    import importlib

    for param in COMMANDS:
        parser = importlib.import_module(param.values[0]).build_parser
        parser = parser() if param.values[0] != "orchestrator.study.cli" else parser("study")
        text = parser.format_help()
        named = [g.title for g in parser._action_groups if g._group_actions]
        assert len(named) >= 3, (param.id, named)  # options, plus at least two groups
        assert "(default: " in text or "default " in text, param.id


@pytest.mark.parametrize("module", COMMANDS)
def test_an_option_error_imports_nothing_heavy(module):
    assert probe(module, ["--no-such-option"])[:2] == ("2", "")


def test_the_offered_names_are_the_registries():
    """The parsers offer written-out names (importing the registries loads torch); a new
    family, preset, searcher, scheduler or policy must be added to orchestrator/cli/search.py."""
    from orchestrator import config, ranking, registry, view
    from trainables.gan.presets import PRESETS

    assert search.EXPERIMENTS == registry.EXPERIMENTS
    assert search.PRESETS == tuple(PRESETS)
    assert search.SEARCHERS == registry.SEARCHERS
    assert search.TUNE_SCHEDULERS == registry.TUNE_SCHEDULERS
    assert search.POLICIES == tuple(registry.POLICIES) == tuple(ranking.POLICIES)
    assert (search.DEFAULT_MLFLOW_URI, search.DEFAULT_STORAGE, search.MAX_MEMORISED) == \
        (config.DEFAULT_MLFLOW_URI, config.DEFAULT_STORAGE, ranking.MAX_MEMORISED)
    assert config.MAX_MEMORISED == ranking.MAX_MEMORISED
    assert rank.MAX_CONSTANT_FRAC == ranking.MAX_CONSTANT_FRAC
    assert report.TOP_K == view.TOP_K


def test_set_help_lists_the_trial_config(capsys):
    assert search.main(["acgan", "--smoke", "--set", "help", "--set", "width=0.5"]) == 0
    out = capsys.readouterr().out
    assert "GANConfig fields (acgan, preset s0, smoke budget)" in out
    width = next(line.split() for line in out.splitlines() if line.startswith("width "))
    assert width == ["width", "float", "0.25", "0.5"]  # key, type, default, this search
    lr_g = next(line.split() for line in out.splitlines() if line.startswith("lr_g "))
    assert lr_g[:2] == ["lr_g", "float"]


def test_set_help_of_a_classifier_search(capsys):
    assert search.main(["classifier", "--tune", "--smoke", "--set", "help"]) == 0
    out = capsys.readouterr().out
    assert "ClassifierConfig fields" in out and "\ndropout " in out


def test_set_help_of_the_study(capsys):
    """`cxr-study --set help` lists the classifier fields and the budget, with the values
    this command line starts from (it used to fail: "expected KEY=VALUE")."""
    from orchestrator.study import cli as study_cli

    assert study_cli.main(["--smoke", "--set", "help", "--set", "lr=0.001"]) == 0
    out = capsys.readouterr().out
    assert "ClassifierConfig fields (the study, smoke budget)" in out
    lr = next(line.split() for line in out.splitlines() if line.startswith("lr "))
    assert lr == ["lr", "float", "0.0001", "0.001"]  # key, type, default, this study
    assert "seeds (now 0)" in out
    assert study_cli.main(["--smoke", "--set", "help", "--set", "no_such_knob=1"]) == 2


def test_set_help_still_rejects_bad_values(capsys):
    assert search.main(["acgan", "--smoke", "--set", "help", "--set", "no_such_knob=1"]) == 2
    assert "unknown GANConfig key(s) ['no_such_knob']" in capsys.readouterr().err


def test_objective_is_one_name_and_the_old_spelling_still_works(capsys):
    ranked = rank.build_parser()
    assert ranked.parse_args(["latest"]).objective == "cas_acc,fid"
    assert ranked.parse_args(["latest", "--objective", "fid,kid"]).objective == "fid,kid"
    assert ranked.parse_args(["latest", "--objectives", "fid,kid"]).objective == "fid,kid"
    assert "--objectives is deprecated; use --objective" in capsys.readouterr().err
    assert search.build_parser().parse_args(["acgan", "--objectives", "kid"]).objective == "kid"
    for parser in (ranked, search.build_parser()):
        assert "--objective " in parser.format_help() and "--objectives" not in parser.format_help()


def test_rank_report_and_generate_name_the_search_alike():
    for module in (rank, report, generate):
        parser = module.build_parser()
        args = parser.parse_args(["latest", "--per-class", "1", "--out", "o"]
                                 if module is generate else ["latest"])
        assert (args.search, args.mlflow_uri) == ("latest", search.DEFAULT_MLFLOW_URI)
        assert "(default: sqlite:///mlruns/mlflow.db)" in parser.format_help()


def test_generate_takes_one_source():
    parser = generate.build_parser()
    for argv in (["latest", "--model", "m"], ["--checkpoint", "c", "--model", "m"], []):
        with pytest.raises(SystemExit):
            parser.parse_args([*argv, "--per-class", "1", "--out", "o"])
    assert "search's\nselected generator" in parser.format_help()  # not cut off


def test_generate_from_a_search_uses_the_generator_it_registered(monkeypatch):
    from orchestrator.store import models, reader

    monkeypatch.setattr(reader, "resolve_name", lambda name, uri: "acgan-s0-1" if name == "latest" else name)
    monkeypatch.setattr(models, "search_generator",
                        lambda name, uri: type("G", (), {"path": Path(f"/{name}/generator.pt")}))
    args = generate.build_parser().parse_args(["latest", "--per-class", "1", "--out", "o"])
    assert generate.generator_path(args) == Path("/acgan-s0-1/generator.pt")


def test_generate_from_a_missing_search_is_one_error_line(tmp_path, capsys):
    uri = f"sqlite:///{tmp_path}/none.db"
    assert generate.main(["latest", "--mlflow-uri", uri, "--per-class", "1",
                          "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and len(err.strip().splitlines()) == 1


def test_the_help_benchmark_prints_the_ratio():
    out = subprocess.run([sys.executable, "benchmarks/cli_help.py", "--repeat", "1",
                          "--commands", "report"], cwd=REPO, capture_output=True, text=True,
                         check=True, timeout=120).stdout
    assert "report    --help: median" in out and "ratio to 2 s" in out
