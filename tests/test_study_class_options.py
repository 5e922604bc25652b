"""The study threads --exclude-classes / --label-map / --classes to every classifier it
trains, to its generator check and to a --minority folder (issue 25 item 6)."""
from __future__ import annotations

import pytest

from orchestrator.study import driver
from orchestrator.study.config import config_from_args, study_settings
from trainables.classifier.config import ClassifierConfig
from trainables.classifier.train import load_selection_data, load_test_set, split_roles

from test_data_cli import NON_ASCII, tb_dir  # noqa: F401 (the fixture)


@pytest.fixture(autouse=True)
def _cache(tmp_path, monkeypatch):
    monkeypatch.setenv("CXR_CACHE_DIR", str(tmp_path / "cache"))


def test_every_classifier_of_the_study_loads_with_the_class_options(tb_dir):  # noqa: F811
    cfg = config_from_args(["--smoke", "--data", str(tb_dir), "--label-map",
                            f"{NON_ASCII}=Pneumonia", "--classes", "Normal,Pneumonia,Tuberculosis",
                            "--exclude-classes", "Lung_Opacity"])
    budget, base = study_settings(cfg)
    data, options = driver._study_data(cfg)
    assert data == str(tb_dir) and options == {k: base[k] for k in options}
    clf = ClassifierConfig.from_dict({**base, "source": data, "resolution": 16})
    assert split_roles(clf) == (("train", "val"), "test")
    *_, classes = load_selection_data(clf)
    assert classes == ("Normal", "Pneumonia", "Tuberculosis")
    assert load_test_set(clf).class_counts() == {"Normal": 2, "Pneumonia": 2, "Tuberculosis": 2}


def test_a_minority_folder_keeps_the_mapped_names(tb_dir):  # noqa: F811
    cfg = config_from_args(["--smoke", "--data", str(tb_dir), "--minority", "TB=0.5",
                            "--label-map", "Tuberculosis=TB", "--exclude-classes",
                            f"Lung_Opacity,{NON_ASCII}"])
    data, options = driver._study_data(cfg)
    assert options == {"classes": ("Normal", "TB")}
    budget, base = study_settings(cfg)
    base = {**{k: v for k, v in base.items() if k not in driver.CLASS_KEYS}, **options}
    clf = ClassifierConfig.from_dict({**base, "source": data, "resolution": 16})
    x_tr, y_tr, *_, classes = load_selection_data(clf)
    assert classes == ("Normal", "TB") and int((y_tr == 1).sum()) == 3  # 6 TB, half kept
