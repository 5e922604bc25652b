"""Does the GAN help? The paired statistics on constructed predictions with known answers, the
rare-class data (--minority), and the check that a study's generator was trained on the
study's classes and images."""
from __future__ import annotations

from pathlib import Path

import mlflow
import numpy as np
import pytest
import torch
from mlflow.tracking import MlflowClient

from orchestrator.cli import search
from orchestrator.config import ConfigError, SearchConfig
from orchestrator.study import driver
from orchestrator.study.config import StudyConfig, parse_minority
from orchestrator.store.models import RegisteredGenerator, register_generator
from trainables.classifier.study import (compare, data_fingerprint, paired_markdown, rare_class_source,
                                run_study, verdict)
from trainables.classifier.metrics import accuracy, macro_f1, mcnemar, paired_bootstrap
from trainables.classifier.stats import mcnemar_per_seed
from trainables.classifier.strategies import keep_share
from trainables.data import load_image_set
from trainables.data.selection import load_selection_sets
from trainables.gan import GANConfig
from trainables.gan.build import build_generator
from trainables.gan.checkpoint import save_generator

COVID3 = ("COVID-19", "Normal", "Viral Pneumonia")


def _flip(y: np.ndarray, rows: np.ndarray) -> np.ndarray:
    out = y.copy()
    out[rows] = 1 - out[rows]
    return out


def _seeded_models(y: np.ndarray, errors: int, seeds: int, start: int) -> np.ndarray:
    """(seeds, N) binary predictions, each seed wrong on `errors` different images."""
    rng = np.random.default_rng(start)
    return np.stack([_flip(y, rng.choice(len(y), errors, replace=False)) for _ in range(seeds)])


# ------------------------------------------------------------------------------ statistics
def test_a_known_difference_is_found_and_covered():
    y = np.repeat([0, 1], 200)
    better = _seeded_models(y, 20, 3, start=1)  # 95 % accurate, every seed
    worse = _seeded_models(y, 60, 3, start=2)  # 85 % accurate, every seed
    diff, low, high = paired_bootstrap(y, better, worse, accuracy, n_boot=500)
    assert diff == pytest.approx(0.10)
    assert 0 < low < 0.10 < high
    f1 = lambda t, p: macro_f1(t, p, 2)  # noqa: E731
    expected = np.mean([f1(y, p) for p in better]) - np.mean([f1(y, p) for p in worse])
    diff, low, high = paired_bootstrap(y, better, worse, f1, n_boot=500)
    assert diff == pytest.approx(expected) and low > 0
    reverse = paired_bootstrap(y, worse, better, accuracy, n_boot=500)
    assert reverse[0] == pytest.approx(-0.10) and reverse[2] < 0


def test_equal_predictions_give_a_ci_that_covers_zero():
    y = np.repeat([0, 1, 2], [50, 30, 20])
    models = np.stack([np.roll(y, k) for k in range(3)])
    assert paired_bootstrap(y, models, models.copy(), accuracy, n_boot=200) == (0.0, 0.0, 0.0)
    # equally good, different mistakes: no evidence either way
    a, b = _seeded_models(y % 2, 15, 3, start=3), _seeded_models(y % 2, 15, 3, start=4)
    diff, low, high = paired_bootstrap(y % 2, a, b, accuracy, n_boot=500)
    assert diff == 0.0 and low < 0 < high


def test_seed_to_seed_spread_widens_the_interval():
    """The same mean difference, once equal on every seed and once spread over the seeds:
    resampling seeds must show the second as less certain."""
    y = np.repeat([0, 1], 300)
    reference = _seeded_models(y, 90, 3, start=5)
    steady = _seeded_models(y, 60, 3, start=6)
    spread = np.stack([_flip(y, np.random.default_rng(7 + k).choice(600, e, replace=False))
                       for k, e in enumerate((10, 60, 110))])
    d1, lo1, hi1 = paired_bootstrap(y, steady, reference, accuracy, n_boot=500)
    d2, lo2, hi2 = paired_bootstrap(y, spread, reference, accuracy, n_boot=500)
    assert d1 == pytest.approx(d2)
    assert hi2 - lo2 > 1.5 * (hi1 - lo1)


def test_bootstrap_rejects_unpaired_shapes():
    y = np.zeros(10, dtype=int)
    with pytest.raises(ValueError, match="seeds, labels"):
        paired_bootstrap(y, np.zeros((2, 10)), np.zeros((3, 10)), accuracy)


def test_mcnemar_exact_values():
    y = np.zeros(30, dtype=int)
    a = y.copy()
    b = _flip(y, np.arange(10))  # a alone is right on 10 images, b alone on none
    only_a, only_b, p = mcnemar(y, a, b)
    assert (only_a, only_b) == (10, 0) and p == pytest.approx(2 * 0.5 ** 10)
    assert mcnemar(y, a, a) == (0, 0, 1.0)
    c = _flip(y, np.arange(10, 20))
    assert mcnemar(y, b, c)[2] == pytest.approx(1.0)
    # several seeds: one test per seed, never pooled (the seeds' predictions of one image
    # are not independent pairs)
    with pytest.raises(ValueError, match="mcnemar_per_seed"):
        mcnemar(y, np.stack([a, a]), np.stack([b, b]))
    per_seed = mcnemar_per_seed(y, np.stack([a, a]), np.stack([b, b]))
    assert list(per_seed.a_only) == [10, 10] and per_seed.p[0] == pytest.approx(2 * 0.5 ** 10)


def test_verdicts_say_a_direction_only_when_holm_says_so():
    assert verdict("gan_positional", "positional", 0.023, 0.004, 0.041, 0.01, 9) == \
        ("GAN + positional beats positional oversampling by +2.3 macro-F1 points [+0.4, +4.1] "
         "(Holm-adjusted p = 0.01 over 9 comparisons)")
    assert verdict("undersample", "none", -0.05, -0.08, -0.01, 0.003, 9).startswith(
        "undersampling is worse than no rebalancing by -5.0 macro-F1 points")
    # the unadjusted interval excludes 0, the Holm-adjusted p does not: no direction
    assert "no evidence of a difference (+2.3 macro-F1 points [+0.4, +4.1]; Holm-adjusted " \
        "p = 0.12 over 9 comparisons)" in verdict("gan", "none", 0.023, 0.004, 0.041, 0.12, 9)


def test_compare_pairs_every_strategy_with_both_references_once():
    y = np.repeat([0, 1], 100)
    preds = {"none": list(_seeded_models(y, 40, 2, 10)),
             "positional": list(_seeded_models(y, 40, 2, 11)),
             "gan_positional": list(_seeded_models(y, 5, 2, 12))}
    paired = compare(y, preds, 2, n_boot=300)
    assert list(zip(paired.strategy, paired.reference)) == [
        ("positional", "none"), ("gan_positional", "none"),
        ("gan_positional", "positional")]
    row = paired.iloc[2]
    assert row.accuracy_diff == pytest.approx(0.175) and row.accuracy_diff_ci_low > 0
    assert row.verdict.startswith("GAN + positional beats positional oversampling by +")
    assert row.mcnemar_seeds_significant == 2  # both seeds' McNemar tests
    assert row.macro_f1_diff_p_holm >= row.macro_f1_diff_p
    md = paired_markdown(paired)
    assert md.count("\n| ") == 4 and "- GAN + positional beats" in md
    assert compare(y, {"gan_positional": preds["gan_positional"]}, 2).empty


# ------------------------------------------------------------------------------ --minority
def test_keep_share_is_seeded_and_keeps_at_least_one():
    labels = np.repeat([0, 1, 2], [100, 50, 3])
    keep = keep_share(labels, {0: 0.2, 2: 0.1})
    assert np.bincount(labels[keep]).tolist() == [20, 50, 1]
    assert np.array_equal(keep, keep_share(labels, {0: 0.2, 2: 0.1}))


def test_minority_option_is_parsed_and_checked(capsys, tmp_path):
    assert parse_minority("COVID-19=0.2, Normal=0.5") == {"COVID-19": 0.2, "Normal": 0.5}
    for bad in ("COVID-19", "COVID-19=1.5", "=0.2", "COVID-19=abc"):
        with pytest.raises(ValueError, match="CLASS=SHARE"):
            parse_minority(bad)
    common = ["--mlflow-uri", f"sqlite:///{tmp_path}/mlflow.db", "--storage", str(tmp_path)]
    with pytest.raises(SystemExit):  # argparse: the GAN search has no study options
        search.main(["acgan", "--smoke", "--minority", "COVID-19=0.2", *common])
    assert "unrecognized arguments: --minority" in capsys.readouterr().err
    assert search.main(["classifier", "--smoke", "--generator", "x", "--gan-search", "y",
                        *common]) == 2
    assert "not both" in capsys.readouterr().err


def test_rare_class_source_changes_training_only(covid3_dir, tmp_path):
    """covid3 has train/val only: its fit part loses 80 % of COVID-19; the selection
    hold-out (15 % of train) and the test split (its val) are the same images as before."""
    folder, counts = rare_class_source(covid3_dir, {"covid": 0.2}, duplicates="drop",
                                       cache_dir=tmp_path)
    assert rare_class_source(covid3_dir, {"COVID-19": 0.2}, duplicates="drop",
                             cache_dir=tmp_path)[0] == folder  # same name, same folder
    options = dict(resolution=16, channels=1, duplicates="drop", cache_dir=tmp_path)
    fit, val = load_selection_sets(covid3_dir, **options)
    rare_fit, rare_val = load_selection_sets(folder, **options)
    n_covid = int((fit.labels == 0).sum())
    assert counts == {"COVID-19": (round(0.2 * n_covid), n_covid)}
    assert np.bincount(rare_fit.labels).tolist() == [round(0.2 * n_covid),
                                                     *np.bincount(fit.labels)[1:]]
    assert {Path(p).resolve() for p in rare_fit.paths} < {Path(p).resolve() for p in fit.paths}

    def same(a, b):
        key = lambda s: sorted(zip((str(Path(p).resolve()) for p in s.paths), s.labels))  # noqa: E731
        return key(a) == key(b)

    assert same(rare_val, val)
    assert same(load_image_set(folder, "test", **options), load_image_set(covid3_dir, "val", **options))
    with pytest.raises(ValueError, match="its classes are COVID-19, Normal, Viral Pneumonia"):
        rare_class_source(covid3_dir, {"Pneumonia": 0.2}, cache_dir=tmp_path)


# ------------------------------------------------------------------------------ the generator
def _generator(classes=COVID3, fingerprint="fp", resolution=16) -> RegisteredGenerator:
    return RegisteredGenerator(name="cxr-acgan-generator", version="1", epoch=3, search="s",
                               source_run_id="r", data_fingerprint=fingerprint,
                               classes=tuple(classes), resolution=resolution, channels=1,
                               path=Path("unused"))


def _study_cfg(data, uri="sqlite:///unused.db", **kw) -> StudyConfig:
    return StudyConfig(data=str(data), mlflow_uri=uri, **kw)


def test_the_check_refuses_other_classes_and_other_images(covid3_dir, monkeypatch):
    fp = data_fingerprint(covid3_dir, resolution=16, channels=1, duplicates="drop")
    data = str(covid3_dir)
    found, warning = driver._checked_generator(_generator(fingerprint=fp), _study_cfg(data),
                                                 data, COVID3)
    assert warning == ""
    with pytest.raises(ConfigError, match="classes .* are not the data's .*--force does not apply"):
        driver._checked_generator(_generator(classes=("Normal", "Pneumonia")),
                                    _study_cfg(data, force=True), data, COVID3)
    with pytest.raises(ConfigError, match="trained on other images .* add --force"):
        driver._checked_generator(_generator(fingerprint="other"), _study_cfg(data), data,
                                    COVID3)
    _, warning = driver._checked_generator(_generator(fingerprint="other"),
                                             _study_cfg(data, force=True), data, COVID3)
    assert "trained on other images" in warning and "--force" in warning
    with pytest.raises(ConfigError, match="records no data fingerprint"):
        driver._checked_generator(_generator(fingerprint=None), _study_cfg(data), data, COVID3)


@pytest.fixture
def registry_store(tmp_path):
    previous = mlflow.get_tracking_uri()
    yield f"sqlite:///{tmp_path}/mlflow.db"
    mlflow.set_tracking_uri(previous)


def _register_search(tmp_path, uri: str, name: str, fingerprint: str) -> dict:
    """A GAN search `name` whose parent run records `fingerprint`, and its registered best
    generator (untrained, 16 px, covid3's classes)."""
    client = MlflowClient(uri)
    exp = client.create_experiment(name, artifact_location=(tmp_path / name).as_uri())
    parent = client.create_run(exp, tags={"cxr.role": "search",
                                          "cxr.data_fingerprint": fingerprint}).info.run_id
    trial = client.create_run(exp, tags={"cxr.role": "trial", "mlflow.parentRunId": parent})
    cfg = GANConfig(family="acgan", resolution=16, channels=1, width=0.125)
    epoch_dir = tmp_path / name / "epoch_0003"
    epoch_dir.mkdir(parents=True)
    torch.manual_seed(0)
    save_generator(epoch_dir, build_generator(cfg, 3, COVID3), cfg, COVID3, (0, 1, 2))
    search_cfg = SearchConfig(experiment="acgan", preset="s0", name=name, mlflow_uri=uri)
    return register_generator(search_cfg, trial.info.run_id, str(epoch_dir), 3)


def test_the_study_takes_only_a_champion_of_its_own_data(covid3_dir, tmp_path, registry_store):
    uri, data = registry_store, str(covid3_dir)
    fp = data_fingerprint(covid3_dir, resolution=16, channels=1, duplicates="drop")
    _register_search(tmp_path, uri, "gan-of-other-data", "fingerprint-of-other-images")
    with pytest.raises(ConfigError) as refused:
        driver._generator_for_study(_study_cfg(data, uri), data, 16)
    for said in ("no registered champion was trained on this study's data",
                 "search 'gan-of-other-data'", "trained on other images", "--generator models:/",
                 "--gan-search NAME", f"search acgan --data {data}"):
        assert said in str(refused.value)
    with pytest.raises(ConfigError, match="other images"):
        driver._generator_for_study(_study_cfg(data, uri, gan_search="gan-of-other-data"),
                                      data, 16)
    registered = _register_search(tmp_path, uri, "gan-of-this-data", fp)
    version = MlflowClient(uri).get_model_version(registered["name"], registered["version"])
    assert version.tags["data_fingerprint"] == fp  # recorded on the model version
    found, warning = driver._generator_for_study(_study_cfg(data, uri), data, 16)
    assert (found.search, found.version, found.epoch, warning) == ("gan-of-this-data", "2", 3, "")
    assert found.tags()["cxr.generator"] == "models:/cxr-acgan-generator/2"
    # an explicit older version of other images: only with --force, and then with a warning
    cfg = _study_cfg(data, uri, generator="models:/cxr-acgan-generator/1", force=True)
    found, warning = driver._generator_for_study(cfg, data, 16)
    assert found.search == "gan-of-other-data" and "other images" in warning


# ------------------------------------------------------------------------------ the study
def test_the_study_writes_its_paired_table(covid3_dir, tmp_path):
    table = run_study(covid3_dir, "none,positional", resolution=16, epochs=1,
                      seeds=(0, 1), run_dir=tmp_path, n_boot=100,
                      base={"duplicates": "keep", "gradcam_per_class": 0, "channels": 1})
    paired = table.attrs["paired"]
    assert len(paired) == 1 and paired.iloc[0].seeds == 2
    assert paired.iloc[0].macro_f1_diff_ci_low <= paired.iloc[0].macro_f1_diff \
        <= paired.iloc[0].macro_f1_diff_ci_high
    assert (tmp_path / "study_paired.md").read_text() == paired_markdown(paired)
    assert (tmp_path / "study_paired.csv").is_file()
