"""The search's data published under its storage (issue 15): trials read the bundle, on any
node, and never the driver's data path."""
from __future__ import annotations

import dataclasses

import numpy as np
import pyarrow.fs as pafs
import pytest

from trainables.data import DataError, ImageSet, bundle
from trainables.data.selection import load_selection_sets
from trainables.trial import TrialSettings, load_selection


@pytest.fixture(scope="module")
def sets(covid3_dir):
    return load_selection_sets(covid3_dir, resolution=16, channels=1, duplicates="drop")


def _same(a, b) -> None:
    assert np.array_equal(np.asarray(a.images), np.asarray(b.images))
    assert np.array_equal(a.labels, b.labels)
    assert (a.classes, a.split, a.fingerprint, a.paths) == (b.classes, b.split, b.fingerprint, b.paths)


def test_published_bundle_reads_back_the_same_images_and_publishing_twice_writes_nothing(
        sets, tmp_path):
    fit, val = sets
    uri = bundle.publish(fit, val, str(tmp_path / "storage"))
    assert uri.startswith(str(tmp_path / "storage" / "cxr-data"))
    meta = tmp_path / "storage" / "cxr-data" / uri.rsplit("/", 1)[-1] / "bundle.json"
    first = meta.stat().st_mtime_ns
    assert bundle.publish(fit, val, str(tmp_path / "storage")) == uri
    assert meta.stat().st_mtime_ns == first
    got_fit, got_val = bundle.load(uri, tmp_path / "cache", ImageSet)
    _same(got_fit, fit)
    _same(got_val, val)
    assert isinstance(got_fit.images, np.memmap)  # memory-mapped in place, not copied
    assert not (tmp_path / "cache").exists()


def test_a_remote_bundle_is_copied_once_per_node_into_the_cache(sets, tmp_path, monkeypatch):
    """A non-local pyarrow file system (here a SubTree over a folder, standing in for s3://):
    the first read downloads into <cache>/bundles/<key>, later reads use that copy."""
    fit, val = sets
    remote_root = tmp_path / "bucket"
    remote_root.mkdir()
    remote = pafs.SubTreeFileSystem(str(remote_root), pafs.LocalFileSystem())
    monkeypatch.setattr(bundle, "_filesystem",
                        lambda uri: (remote, uri.split("://", 1)[1].split("/", 1)[1]))
    uri = bundle.publish(fit, val, "s3://bucket/search")
    assert (remote_root / "search" / "cxr-data").is_dir()
    got_fit, got_val = bundle.load(uri, tmp_path / "cache", ImageSet)
    _same(got_fit, fit)
    _same(got_val, val)
    copy = tmp_path / "cache" / "bundles" / uri.rsplit("/", 1)[-1]
    assert (copy / "bundle.json").is_file() and not list(copy.parent.glob(".*"))
    (remote_root / "search" / "cxr-data" / uri.rsplit("/", 1)[-1] / "fit_images.npy").unlink()
    _same(bundle.load(uri, tmp_path / "cache", ImageSet)[0], fit)  # from the node's copy


def test_a_missing_bundle_and_a_wrong_size_are_clear_errors(sets, tmp_path):
    with pytest.raises(DataError, match="bundle.json missing"):
        bundle.load(str(tmp_path / "nowhere"), tmp_path / "cache", ImageSet)
    fit, val = sets
    uri = bundle.publish(fit, val, str(tmp_path))
    with pytest.raises(DataError, match="holds 16x16x1 images but this trial asks for 32x32x1"):
        bundle.check_shape(bundle.load(uri, tmp_path, ImageSet)[0], 32, 1, uri)


def test_a_trial_with_a_bundle_never_reads_the_data_path(sets, tmp_path):
    fit, val = sets
    uri = bundle.publish(fit, val, str(tmp_path))
    settings = TrialSettings(experiment="acgan", data=str(tmp_path / "gone-on-this-node"),
                             search_name="s", storage=str(tmp_path), base={},
                             data_bundle=uri)
    got_fit, got_val = load_selection(settings, 16, 1)
    _same(got_fit, fit)
    _same(got_val, val)
    with pytest.raises((DataError, FileNotFoundError, ValueError)):
        load_selection(TrialSettings(experiment="acgan", data=str(tmp_path / "gone-on-this-node"),
                                     search_name="s", storage=str(tmp_path), base={}), 16, 1)


def test_a_classifier_trial_with_a_bundle_trains_where_the_data_path_is_gone(covid3_dir, tmp_path):
    """`search classifier --tune` publishes its data too: a trial on a node without the data
    folder trains on the bundle, on exactly the images it would have read from the source
    (the folds of cross-validation too)."""
    from trainables.classifier import ClassifierConfig
    from trainables.classifier.train import load_selection_data
    from trainables.context import standalone_context
    from trainables.trial import run_classifier_trial

    fixed = {"resolution": 16, "channels": 1, "duplicates": "drop", "epochs": 1,
             "batch_size": 32, "evaluate_test": False, "gradcam_per_class": 0}
    local = TrialSettings(experiment="classifier", data=str(covid3_dir), search_name="s",
                          storage=str(tmp_path), base={"source": str(covid3_dir), **fixed},
                          data_options={"duplicates": "drop"})
    assert local.resolution_channels == (16, 1)
    fit, val = load_selection(local, 16, 1)
    uri = bundle.publish(fit, val, str(tmp_path))
    gone = str(tmp_path / "gone-on-this-node")
    remote = TrialSettings(experiment="classifier", data=gone, search_name="s",
                           storage=str(tmp_path), base={"source": gone, **fixed}, data_bundle=uri)
    history = run_classifier_trial({}, remote, standalone_context(tmp_path / "run"))
    assert len(history) == 1 and np.isfinite(history[0]["val_loss"])
    published = bundle.load(uri, tmp_path / "cache", ImageSet)
    for extra in ({}, {"folds": 4, "fold": 1}):
        from_source = load_selection_data(ClassifierConfig(source=str(covid3_dir), **fixed, **extra))
        from_bundle = load_selection_data(ClassifierConfig(source=gone, **fixed, **extra), published)
        for a, b in zip(from_source, from_bundle):
            assert np.array_equal(np.asarray(a), np.asarray(b))
    with pytest.raises((DataError, FileNotFoundError, ValueError)):
        run_classifier_trial({}, dataclasses.replace(remote, data_bundle=""),
                             standalone_context(tmp_path / "run2"))
