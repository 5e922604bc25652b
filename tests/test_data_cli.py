"""The data loader's class options on the command line (issue 25 item 6): --exclude-classes,
--label-map and --classes on search, study and audit load exactly what the Python options
(exclude_labels=, label_map=, classes=) load, with the same fingerprint; the loader's
messages name the flags; preflight warns about a class too small for an evaluation.

Real images (../shared/data) under class names the loader does not know: Tuberculosis and
a non-ASCII one.  No Ray, no MLflow: the commands' own parsing and loading functions."""
from __future__ import annotations

import shlex
import shutil
from pathlib import Path

import numpy as np
import pytest

from orchestrator.cli import audit, search
from orchestrator.run import preflight
from orchestrator.run.settings import trial_settings
from orchestrator.study import cli as study_cli
from orchestrator.study.config import config_from_args as study_args
from trainables.data import DataError
from trainables.data.selection import load_selection_sets
from trainables.trial import load_selection

NON_ASCII = "Lungenentzündung"
# class folder -> (images of radiography_dir's class, per split: train, val, test)
CLASSES = {"Normal": ("Normal", (6, 3, 2)), "Tuberculosis": ("COVID", (6, 3, 2)),
           NON_ASCII: ("COVID", (6, 1, 2)), "Lung_Opacity": ("Normal", (6, 3, 2))}


@pytest.fixture(scope="module")
def tb_dir(tmp_path_factory, radiography_dir) -> Path:
    """{train,val,test}/{Normal,Tuberculosis,Lungenentzündung,Lung_Opacity}/ of distinct real
    images; the non-ASCII class has a single validation image."""
    root = tmp_path_factory.mktemp("tb") / "tb"
    used: dict[str, int] = {}
    for name, (real, counts) in CLASSES.items():
        files = sorted((radiography_dir / real).glob("*.png"))
        for split, n in zip(("train", "val", "test"), counts):
            (root / split / name).mkdir(parents=True)
            start = used.get(real, 0)
            for f in files[start:start + n]:
                shutil.copy(f, root / split / name / f.name)
            used[real] = start + n
    return root


@pytest.fixture(autouse=True)
def _cache(tmp_path, monkeypatch):
    monkeypatch.setenv("CXR_CACHE_DIR", str(tmp_path / "cache"))


def _search(tmp_path: Path, *argv: str):
    return search.config_from_args(["acgan", "--smoke", "--storage", str(tmp_path / "rr"),
                                    "--mlflow-uri", f"sqlite:///{tmp_path}/m/mlflow.db",
                                    *argv])


def test_search_accepts_new_class_names_as_python_does(tb_dir, tmp_path):
    cfg = _search(tmp_path, "--data", str(tb_dir), "--classes",
                  f"Normal,Tuberculosis,{NON_ASCII}", "--exclude-classes", "Lung Opacity")
    settings = trial_settings(cfg, str(tmp_path / "rr"))
    assert settings.data_options == {
        "duplicates": "drop", "skip_bad": False, "exclude_labels": ("Lung Opacity",),
        "classes": ("Normal", "Tuberculosis", NON_ASCII)}
    fit, val = load_selection(settings, 32, 1)  # what the driver and every trial read
    assert fit.classes == (NON_ASCII, "Normal", "Tuberculosis")
    assert val.class_counts() == {NON_ASCII: 1, "Normal": 3, "Tuberculosis": 3}
    python, _ = load_selection_sets(tb_dir, resolution=32, channels=1, duplicates="drop",
                                    classes=("Normal", "Tuberculosis", NON_ASCII),
                                    exclude_labels=["Lung Opacity"])
    assert fit.fingerprint == python.fingerprint  # the same cache entry, the same data
    plain, _ = load_selection_sets(tb_dir, resolution=32, channels=1, duplicates="drop",
                                   classes=("Normal", "Tuberculosis", NON_ASCII, "Lung Opacity"))
    assert plain.fingerprint != fit.fingerprint  # the options are part of the fingerprint


def test_preflight_warns_about_a_class_too_small_to_evaluate(tb_dir, tmp_path, capsys):
    cfg = _search(tmp_path, "--data", str(tb_dir), "--classes", f"Tuberculosis,{NON_ASCII}",
                  "--label-map", "Lung_Opacity=Tuberculosis", "--exclude-classes", "Normal",
                  "--eval-metrics", "fid,intra_fid,visual,cas")
    settings = preflight.preflight_data(trial_settings(cfg, str(tmp_path / "rr")))
    assert settings.classes == (NON_ASCII, "Tuberculosis")
    warnings = [line for line in capsys.readouterr().err.splitlines() if "warning:" in line]
    assert warnings == [f"warning: class '{NON_ASCII}' has 1 validation image (fewer than 2): "
                        "intra-FID and the diversity check (collapse guard) leave it out of "
                        "every evaluation; add images of it, or leave it out with "
                        "--exclude-classes"]


def test_no_warning_when_every_class_is_large_enough(tb_dir, tmp_path, capsys):
    cfg = _search(tmp_path, "--data", str(tb_dir), "--exclude-classes",
                  f"{NON_ASCII},Lung_Opacity", "--label-map", "Tuberculosis=COVID-19")
    settings = preflight.preflight_data(trial_settings(cfg, str(tmp_path / "rr")))
    assert settings.classes == ("COVID-19", "Normal")
    assert "warning: class" not in capsys.readouterr().err


def test_study_label_map_and_exclude(tb_dir):
    from orchestrator.study.config import study_class_options

    cfg = study_args(["--data", str(tb_dir), "--label-map", f"{NON_ASCII}=Pneumonia",
                      "--label-map", "Tuberculosis=TB,Lung_Opacity=Normal"])
    options = study_class_options(cfg)
    assert options == {"label_map": {NON_ASCII: "Pneumonia", "Tuberculosis": "TB",
                                     "Lung_Opacity": "Normal"}}
    fit, val = load_selection_sets(cfg.data, resolution=16, duplicates=cfg.duplicates, **options)
    assert fit.classes == ("Normal", "Pneumonia", "TB")
    assert val.class_counts() == {"Normal": 6, "Pneumonia": 1, "TB": 3}
    cfg = study_args(["--data", str(tb_dir), "--exclude-classes", f"Tuberculosis,{NON_ASCII}",
                      "--label-map", "Lung Opacity=Opacity"])
    fit, _ = load_selection_sets(cfg.data, resolution=16, duplicates=cfg.duplicates,
                                 **study_class_options(cfg))
    assert fit.classes == ("Normal", "Opacity")


def test_audit_loads_its_reference_with_the_class_options(tb_dir):
    args = audit.build_parser().parse_args(
        ["--synthetic", "synth", "--data", str(tb_dir), "--classes",
         f"Tuberculosis,Normal,{NON_ASCII}", "--exclude-classes", "Lung_Opacity"])
    train, heldout, _ = audit.load_reference(args.data, None, 16, args.duplicates,
                                             audit.audit_class_options(args))
    assert train.classes == (NON_ASCII, "Normal", "Tuberculosis")
    assert len(heldout) == 7  # the val split: 3 + 3 + 1


@pytest.mark.parametrize("command", ["search", "study", "audit"])
@pytest.mark.parametrize("value", ["Tuberculosis", "=Normal", "Tuberculosis="])
def test_a_bad_label_map_is_one_error_line(command, value, tb_dir, tmp_path, capsys):
    common = ["--data", str(tb_dir), "--label-map", value]
    main, argv = {"search": (search.main, ["acgan", "--smoke", *common, "--storage",
                                           str(tmp_path / "rr")]),
                  "study": (study_cli.main, ["--smoke", *common]),
                  "audit": (audit.main, ["--synthetic", str(tmp_path), *common])}[command]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"error: --label-map {value!r}: expected OLD=NEW")
    assert not (tmp_path / "rr").exists()


def test_unknown_names_are_answered_with_the_flags_that_fix_them(tb_dir, tmp_path):
    with pytest.raises(DataError) as err:
        load_selection_sets(tb_dir, resolution=16)
    message = str(err.value)
    assert "--classes" in message and "--label-map" in message and "--exclude-classes" in message
    # the --classes it suggests, a shell word, names every class of the data: it loads
    names = shlex.split(message.split("--classes ", 1)[1])[0]
    assert names == f"Lung Opacity,{NON_ASCII},Normal,Tuberculosis"
    fit, _ = load_selection_sets(tb_dir, resolution=16, classes=tuple(names.split(",")))
    assert fit.classes == ("Lung Opacity", NON_ASCII, "Normal", "Tuberculosis")
    with pytest.raises(DataError, match=r"not in --classes .*--exclude-classes 'Lung Opacity'"):
        load_selection_sets(tb_dir, resolution=16, classes=("Normal", "Tuberculosis", NON_ASCII))
    with pytest.raises(DataError, match=r"no images left after --exclude-classes"):
        load_selection_sets(tb_dir, resolution=16, label_map={NON_ASCII: "X", "Tuberculosis": "X",
                                                              "Lung_Opacity": "X"},
                            exclude_labels=["X", "Normal"])


def test_npz_class_names_point_to_classes(tmp_path):
    path = tmp_path / "mystery.npz"
    arrays = {f"{s}_{k}": np.zeros((2, 4, 4), np.uint8) if k == "images" else np.array([0, 1])
              for s in ("train", "val", "test") for k in ("images", "labels")}
    np.savez(path, **arrays)
    with pytest.raises(DataError, match=r"--classes NAME0,NAME1"):
        load_selection_sets(path, resolution=4)


def test_the_search_record_reloads_the_same_data(tb_dir, tmp_path):
    """report and the other readers of a stored search load its data from the
    `data_options.<key>` params the search records (`str` of each value, as MLflow keeps it)."""
    from orchestrator.config import data_options_from_params

    cfg = _search(tmp_path, "--data", str(tb_dir), "--classes", f"Normal,Tuberculosis,{NON_ASCII}",
                  "--label-map", "Lung_Opacity=Normal", "--exclude-classes", "Lung Opacity")
    options = trial_settings(cfg, str(tmp_path / "rr")).data_options
    params = {f"data_options.{k}": str(v) for k, v in options.items()}
    assert data_options_from_params({**params, "seed": "0"}) == options
