"""Shared pytest fixtures: the real chest X-ray data beside the repository."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]


def shared_data_dir() -> Path:
    """`../shared/data` next to the repository (override with CXR_SHARED_DATA)."""
    path = Path(os.environ.get("CXR_SHARED_DATA", REPO_ROOT.parent / "shared" / "data"))
    if not path.is_dir():
        raise FileNotFoundError(
            f"real test data not found at {path}: the tests read ../shared/data beside the "
            "repository; set CXR_SHARED_DATA to its location"
        )
    return path


@pytest.fixture(scope="session")
def shared_data() -> Path:
    return shared_data_dir()


@pytest.fixture(scope="session")
def covid3_dir(shared_data: Path) -> Path:
    """3-class folder-per-class set: {train,val}/{Covid,Normal,Viral Pneumonia}."""
    return shared_data / "covid19-image-dataset"


@pytest.fixture(scope="session")
def radiography_dir(shared_data: Path) -> Path:
    return shared_data / "covid19-radiography-subset"


@pytest.fixture(scope="session")
def pneumoniamnist_npz(shared_data: Path) -> Path:
    return shared_data / "medmnist" / "pneumoniamnist.npz"


@pytest.fixture(autouse=True)
def _few_threads():
    # Two cores are shared by the whole suite; oversubscribing them makes it slower.
    import torch

    torch.set_num_threads(2)
    yield
