"""source="default": PneumoniaMNIST from the MedMNIST root, the download, or the stand-in."""
from __future__ import annotations

import logging

import pytest

import trainables.data.default as default
from trainables.data import DataError, load_image_set


@pytest.fixture(autouse=True)
def _fresh(monkeypatch, tmp_path):
    monkeypatch.setattr(default, "_RESOLVED", {})
    monkeypatch.setenv("MEDMNIST_ROOT", str(tmp_path / "medmnist-root"))


def test_medmnist_root_is_used_first(pneumoniamnist_npz, tmp_path, caplog):
    root = tmp_path / "medmnist-root"
    root.mkdir()
    (root / "pneumoniamnist.npz").symlink_to(pneumoniamnist_npz)
    with caplog.at_level(logging.WARNING):
        s = load_image_set("default", "val", resolution=28, cache_dir=tmp_path / "c")
    assert s.class_counts() == {"Normal": 135, "Pneumonia": 389}
    assert "(MedMNIST root)" in caplog.text and "STAND-IN" not in caplog.text


def test_offline_falls_back_to_the_stand_in_loudly(monkeypatch, tmp_path, caplog):
    monkeypatch.setenv("CXR_OFFLINE", "1")
    with caplog.at_level(logging.WARNING):
        s = load_image_set("default", "test", resolution=32, cache_dir=tmp_path / "c")
    assert "LOCAL STAND-IN" in caplog.text and str(default.stand_in_path()) in caplog.text
    assert s.images.shape == (624, 32, 32, 1) and s.classes == ("Normal", "Pneumonia")


def test_failed_download_is_tried_once_then_stand_in(monkeypatch, caplog):
    calls = []

    def no_network(root, size, timeout):
        calls.append((root, size))
        return "no network (the test)"

    monkeypatch.delenv("CXR_OFFLINE", raising=False)
    monkeypatch.setattr(default, "_download", no_network)
    with caplog.at_level(logging.WARNING):
        first = default.resolve_default(64)
        second = default.resolve_default(64)
    assert first == second == default.stand_in_path()
    assert [size for _, size in calls] == [64]  # the _64 variant was asked for, once
    # one line: which data instead, why (the download's reason), and where the real file goes
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 1 and "LOCAL STAND-IN" in lines[0], lines
    assert "pneumoniamnist_64.npz is not in" in lines[0] and "no network (the test)" in lines[0]


def test_real_download_attempt_fails_fast_offline(tmp_path, monkeypatch):
    """The medmnist package's real download code, with every connection refused (as on a
    machine without network, and the same on one with it): None, within its timeout."""
    import socket
    import time

    def refuse(*args, **kwargs):
        raise OSError("network unreachable (refused by the test)")

    monkeypatch.setattr(socket, "create_connection", refuse)
    monkeypatch.setattr(socket.socket, "connect", refuse)
    start = time.monotonic()
    reason = default._download(tmp_path / "root", 28, timeout=3.0)
    assert isinstance(reason, str) and reason
    assert time.monotonic() - start < 10


def test_nothing_found_names_the_file_and_folder(monkeypatch, tmp_path):
    monkeypatch.setenv("CXR_OFFLINE", "1")
    monkeypatch.setattr(default, "stand_in_path", lambda: tmp_path / "absent.npz")
    with pytest.raises(DataError, match=r"put pneumoniamnist_128.npz .* into .*medmnist-root"):
        load_image_set("default", "train", resolution=100, cache_dir=tmp_path / "c")
