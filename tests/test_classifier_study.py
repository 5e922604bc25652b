"""End to end on the real covid19-image-dataset: training never reads the test split, the
strategy study produces a table with CIs, and training resumes from its checkpoint."""
from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from trainables.classifier.study import run_study, study_markdown
from trainables.classifier import ClassifierConfig, evaluate_final, train_classifier
from trainables.classifier.train import load_selection_data, split_roles, stratified_folds
from trainables.context import standalone_context
from trainables.data import clear_split_access_log, split_access_log

SMALL = dict(resolution=32, epochs=1, lr=1e-3, batch_size=32, duplicates="keep", n_boot=200,
             gradcam_per_class=1)


def test_stratified_folds_spread_every_class():
    labels = np.repeat([0, 1, 2], [8, 5, 4])
    fold = stratified_folds(labels, 4, seed=3)
    for c in range(3):
        counts = np.bincount(fold[labels == c], minlength=4)
        assert counts.max() - counts.min() <= 1
    assert np.array_equal(fold, stratified_folds(labels, 4, seed=3))


def test_split_roles(covid3_dir, pneumoniamnist_npz):
    # published with train/val only: val is held out as the test set
    assert split_roles(ClassifierConfig(source=str(covid3_dir), duplicates="keep")) == (("train",), "val")
    assert split_roles(ClassifierConfig(source=str(pneumoniamnist_npz))) == (("train", "val"), "test")


def test_selection_never_reads_the_test_split(covid3_dir, tmp_path):
    cfg = ClassifierConfig(source=str(covid3_dir), **SMALL)
    clear_split_access_log()
    history = train_classifier(cfg, standalone_context(tmp_path))
    assert {split for _, split in split_access_log()} == {"train"}  # "val" is this set's test
    assert len(history) == 1 and math.isfinite(history[0]["val_loss"])
    assert history[0]["pretrained"] is False  # a custom CNN never starts from ImageNet
    final = evaluate_final(tmp_path)
    assert [s for _, s in split_access_log()].count("val") == 1
    assert 0 <= final["metrics"]["accuracy_ci_low"] <= final["metrics"]["accuracy"] \
        <= final["metrics"]["accuracy_ci_high"] <= 1
    for name in ("test_metrics.json", "classification_report.txt", "confusion_matrix.png",
                 "gradcam.png"):
        assert (tmp_path / name).stat().st_size > 0


def test_resume_continues_from_the_checkpoint(covid3_dir, tmp_path):
    first = train_classifier(ClassifierConfig(source=str(covid3_dir), **SMALL),
                             standalone_context(tmp_path / "a"))
    cfg2 = ClassifierConfig(source=str(covid3_dir), **{**SMALL, "epochs": 2})
    ctx = standalone_context(tmp_path / "b", resume_dir=tmp_path / "a" / "checkpoint")
    resumed = train_classifier(cfg2, ctx)
    assert [r["epoch"] for r in resumed] == [1, 2] and len(ctx.history) == 1
    assert resumed[0] == first[0]


def _tiny_acgan(resolution: int):
    """A real (untrained) AC-GAN generator from trainables.gan, narrow and small."""
    from trainables.gan import GANConfig
    from trainables.gan.build import build_generator

    gcfg = GANConfig(family="acgan", resolution=resolution, channels=1, width=0.125)
    return build_generator(gcfg, 3), gcfg.latent_dim


@pytest.mark.slow
def test_study_end_to_end_with_a_gan(covid3_dir, tmp_path):
    events = []
    base = {k: v for k, v in SMALL.items() if k not in ("resolution", "epochs", "n_boot")}
    table = run_study(covid3_dir, "all", _tiny_acgan(32), resolution=24, epochs=1, seeds=(0,),
                      run_dir=tmp_path, base=base, n_boot=200,
                      callback=lambda e, p: events.append(e))
    assert list(table["strategy"]) == ["none", "class_weights", "undersample", "oversample",
                                       "positional", "gan", "gan_positional", "gan_balanced"]
    for name in ("accuracy", "macro_f1"):
        assert ((table[f"{name}_ci_low"] <= table[name]) & (table[name] <= table[f"{name}_ci_high"])).all()
    runs = table.attrs["runs"]
    assert (runs.loc[runs.strategy == "gan", "n_synthetic"] > 0).all()
    assert (runs.loc[runs.strategy == "none", "n_synthetic"] == 0).all()
    assert events == ["run"] * 8 + ["table"]
    md = study_markdown(table)
    # the strategy table (header + 8) and the per-class table (header + 8 x 3 classes)
    # and the composition table (header + 8 strategies)
    assert md.count("\n| ") == 9 + 25 + 9 and "gan_positional" in md
    assert "| gan_balanced | " in md.split("What each strategy trains on")[1]
    assert (tmp_path / "study.md").read_text() == md
    for name in ("macro_auroc", "sensitivity/COVID-19", "specificity/Normal", "auroc/Normal"):
        assert ((table[f"{name}_ci_low"] <= table[name]) & (table[name] <= table[f"{name}_ci_high"])).all()
    # chosen on validation, never on test
    assert table.attrs["best_strategy"] == table.loc[table["val_macro_f1"].idxmax(), "strategy"]
    composition = pd.read_csv(tmp_path / "composition.csv")
    assert list(composition.columns) == ["strategy", "class", "real", "synthetic", "augmented_share"]
    assert set(composition["strategy"]) == set(table["strategy"])
    assert (composition.groupby("strategy")["augmented_share"].nunique() == 1).all()
    assert (composition.loc[composition.strategy == "none", "synthetic"] == 0).all()
    # every strategy against no rebalancing (7) and against positional oversampling (6 more)
    paired = table.attrs["paired"]
    assert len(paired) == 13 and set(paired["reference"]) == {"none", "positional"}
    assert paired["verdict"].str.contains("macro-F1 points").all()
    assert paired["verdict"].str.contains("Holm-adjusted p").all()
    assert {"macro_auroc_diff", "macro_f1_diff_p_holm", "mcnemar_p_per_seed"} <= set(paired.columns)
    assert (tmp_path / "study_paired.csv").is_file()


def test_gan_strategy_from_a_checkpoint_in_the_config(covid3_dir, tmp_path):
    from trainables.gan import GANConfig
    from trainables.gan.build import build_generator
    from trainables.gan.checkpoint import save_generator

    gcfg = GANConfig(family="acgan", resolution=16, channels=1, width=0.125)
    for name, classes in (("ok", ("COVID-19", "Normal", "Viral Pneumonia")),
                          ("other", ("A", "B", "C"))):
        (tmp_path / name).mkdir()
        save_generator(tmp_path / name, build_generator(gcfg, 3), gcfg, classes, (0, 1, 2))
    small = {**SMALL, "resolution": 24, "strategy": "gan"}
    cfg = ClassifierConfig(source=str(covid3_dir), gan_checkpoint=str(tmp_path / "ok"), **small)
    history = train_classifier(cfg, standalone_context(tmp_path / "run"))
    counts = np.bincount(load_selection_data(cfg)[1], minlength=3)
    assert history[0]["n_train"] == 3 * counts.max()  # balanced up to the largest class
    assert history[0]["n_synthetic"] == 3 * counts.max() - counts.sum() > 0
    bad = ClassifierConfig(source=str(covid3_dir), gan_checkpoint=str(tmp_path / "other"), **small)
    with pytest.raises(ValueError, match="trained on classes"):
        train_classifier(bad, standalone_context(tmp_path / "run2"))


def test_gan_search_validates_on_the_classifiers_validation_images(covid3_dir, pneumoniamnist_npz,
                                                                   tmp_path):
    """One rule for both: the GAN trial's fit/validation images are exactly the classifier's,
    so a generator ranked on its validation images never saw the study's test split."""
    from trainables.data.selection import load_selection_sets

    cfg = ClassifierConfig(source=str(covid3_dir), **SMALL)
    x_tr, y_tr, x_va, y_va, _ = load_selection_data(cfg)
    clear_split_access_log()
    fit, val = load_selection_sets(str(covid3_dir), resolution=32, channels=cfg.channels,
                                   duplicates="keep")
    assert {split for _, split in split_access_log()} == {"train"}
    assert (fit.split, val.split) == ("train_fit", "train_val")
    assert np.array_equal(np.asarray(val.images), x_va) and np.array_equal(val.labels, y_va)
    assert np.array_equal(np.asarray(fit.images), x_tr) and np.array_equal(fit.labels, y_tr)
    assert len(fit) + len(val) == 251 and not set(fit.paths) & set(val.paths)
    assert fit.images[3].shape == (32, 32, cfg.channels) == fit.images.shape[1:]
    # a source with its own test split: train and val as they are, test never read
    clear_split_access_log()
    fit, val = load_selection_sets(str(pneumoniamnist_npz), resolution=28, channels=1)
    assert [s for _, s in split_access_log()] == ["train", "val"]
    assert (fit.split, val.split) == ("train", "val")


@pytest.mark.parametrize("counts", [(111, 70, 70), (20, 20, 20), (5, 2, 1)])
def test_holdout_is_15_percent_of_each_class(counts):
    from trainables.data.selection import holdout_mask

    labels = np.repeat(np.arange(len(counts)), counts)
    held = holdout_mask(labels)
    for c, n in enumerate(counts):
        k = int(held[labels == c].sum())
        assert k == (max(1, round(0.15 * n)) if n >= 2 else 0), (c, n, k)
    assert np.array_equal(held, holdout_mask(labels))  # fixed, not a fresh draw
