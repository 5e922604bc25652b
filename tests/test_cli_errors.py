"""Every user mistake of rank, report and generate ends in ONE `error:` line on stderr naming
the option, exit code 2, no traceback (issue 25 item 7); generate's hints name the folders
a search writes (`checkpoint_00000N`)."""
from __future__ import annotations

from pathlib import Path

import pytest

from orchestrator.cli import generate, rank, report


def _layout(root: Path) -> dict[str, str]:
    """A file, a trial folder with one kept and one emptied checkpoint, an old export."""
    (root / "a-file").write_text("not a folder")
    trial = root / "search" / "trial_0"
    (trial / "checkpoint_000001").mkdir(parents=True)
    (trial / "checkpoint_000002").mkdir()
    (trial / "checkpoint_000002" / "generator.pt").write_bytes(b"")  # placeholder, never loaded
    (root / "old-export").mkdir()
    (root / "old-export" / "manifest.csv").write_text("path,class\n")
    (root / "junk.pt").write_text("not a checkpoint")
    return {"file": str(root / "a-file"), "trial": str(trial),
            "kept": str(trial / "checkpoint_000002"), "emptied": str(trial / "checkpoint_000001"),
            "export": str(root / "old-export"), "junk": str(root / "junk.pt")}


GENERATE = ["--per-class", "2", "--out", "{tmp}/synth"]
CASES = [
    # (command, argv, what the one error line must contain)
    ("rank", ["latest", "--out", "{file}"], ["--out", "{file}", "not a folder"]),
    ("rank", ["latest", "--out", "{file}/sub"], ["--out", "{file}", "not a folder"]),
    ("rank", ["latest", "--out", "/proc/rankings"], ["--out", "/proc", "cannot write"]),
    ("rank", ["latest", "--verdicts", "{tmp}/missing.csv"], ["--verdicts", "missing.csv",
                                                            "trial_id,epoch,verdict"]),
    ("rank", ["latest", "--weights", "cas_acc"], ["--weights", "metric=weight"]),
    ("rank", ["latest", "--shortlist", "0"], ["--shortlist"]),
    ("report", ["latest", "--out", "{file}"], ["--out", "{file}", "not a folder"]),
    ("report", ["latest", "--out", "/proc/report"], ["--out", "/proc", "cannot write"]),
    ("generate", ["--checkpoint", "{emptied}", *GENERATE],
     ["--checkpoint", "{emptied}", "no generator.pt", "checkpoint_00000N", "checkpoint_000002"]),
    ("generate", ["--checkpoint", "{trial}", *GENERATE],
     ["--checkpoint", "trial folder", "{kept}"]),
    ("generate", ["--checkpoint", "{tmp}/search", *GENERATE],
     ["--checkpoint", "search's folder", "{kept}"]),
    ("generate", ["--checkpoint", "{tmp}/nowhere", *GENERATE],
     ["--checkpoint", "no such file or folder", "checkpoint_00000N"]),
    ("generate", ["--checkpoint", "{kept}", "--per-class", "0", "--out", "{tmp}/synth"],
     ["--per-class", ">= 1"]),
    ("generate", ["--checkpoint", "{kept}", "--per-class", "2", "--out", "{file}"],
     ["--out", "not a folder"]),
    ("generate", ["--checkpoint", "{kept}", "--per-class", "2", "--out", "/proc/synth"],
     ["--out", "/proc", "cannot write"]),
    ("generate", ["--checkpoint", "{kept}", "--per-class", "2", "--out", "{export}"],
     ["--out", "already holds an export"]),
    ("generate", ["--checkpoint", "{junk}", *GENERATE],
     ["--checkpoint", "not a generator checkpoint", "checkpoint_00000N"]),
]


IDS = ["rank-out-is-a-file", "rank-out-under-a-file", "rank-out-read-only",
       "rank-verdicts-missing", "rank-weights-malformed", "rank-shortlist-0",
       "report-out-is-a-file", "report-out-read-only", "generate-checkpoint-without-generator",
       "generate-trial-folder", "generate-search-folder", "generate-checkpoint-missing",
       "generate-per-class-0", "generate-out-is-a-file", "generate-out-read-only",
       "generate-out-holds-an-export", "generate-not-a-checkpoint"]


@pytest.mark.parametrize("command, argv, expected", CASES, ids=IDS)
def test_a_user_mistake_is_one_error_line(command, argv, expected, tmp_path, capsys,
                                          monkeypatch):
    monkeypatch.chdir(tmp_path)  # rank and report default to folders here
    paths = {**_layout(tmp_path), "tmp": str(tmp_path)}
    main = {"rank": rank.main, "report": report.main, "generate": generate.main}[command]
    rc = main([a.format(**paths) for a in argv])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and err[0].startswith("error: "), err
    for text in expected:
        assert text.format(**paths) in err[0]
    assert "epoch_XXXX" not in err[0]
    assert not (tmp_path / "synth").exists() and not (tmp_path / "rankings").exists()



@pytest.mark.parametrize("mistake", ["verdicts-unknown-verdict", "verdicts-missing-column",
                                     "default-out-under-a-file"])
def test_a_stored_search_with_a_user_mistake_is_one_error_line(mistake, tmp_path, capsys,
                                                               monkeypatch):
    """Checked once the search is open: the verdicts file's content and rank's default
    --out (rankings/<search>)."""
    from test_ranking import _fake_search  # tests/ is on sys.path (rootdir conftest)

    uri = f"sqlite:///{tmp_path}/mlflow.db"
    _fake_search(uri, "demo")
    monkeypatch.chdir(tmp_path)
    verdicts = tmp_path / "v.csv"
    verdicts.write_text({"verdicts-missing-column": "trial_id,verdict\nb,reject\n"}.get(
        mistake, "trial_id,epoch,verdict\nb,2,maybe\n"))
    argv = ["demo", "--mlflow-uri", uri, "--dry-run"]
    if mistake.startswith("verdicts"):
        argv += ["--verdicts", str(verdicts), "--out", str(tmp_path / "o")]
    else:
        (tmp_path / "rankings").write_text("a file where the rankings folder would go")
    capsys.readouterr()  # MLflow's set-up lines
    assert rank.main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: "), err
    expected = {"verdicts-unknown-verdict": "unknown verdict(s) ['maybe']",
                "verdicts-missing-column": "missing column(s) ['epoch']",
                "default-out-under-a-file": "--out rankings/demo: rankings is a file"}[mistake]
    assert expected in err[0]
