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


SEARCH_CACHE_ENV = "CXR_TEST_SEARCH_CACHE"


@pytest.fixture(scope="session", autouse=True)
def _one_cache_for_the_searches(tmp_path_factory):
    """The cache folder test_search_e2e.env_for gives the searches it starts (one per session)."""
    os.environ[SEARCH_CACHE_ENV] = str(tmp_path_factory.mktemp("search-cache"))
    yield
    os.environ.pop(SEARCH_CACHE_ENV, None)


@pytest.fixture(autouse=True)
def _few_threads():
    # Two cores are shared by the whole suite; oversubscribing them makes it slower.
    import torch

    torch.set_num_threads(2)
    yield


@pytest.fixture(scope="session")
def smoke_store(tmp_path_factory, covid3_dir):
    """One real smoke search (AC-GAN, 4 trials, ASHA) and then the classifier study, both
    in the same MLflow store: shared by the end-to-end, study and notebook tests."""
    import subprocess
    import sys
    import time
    from types import SimpleNamespace

    root = tmp_path_factory.mktemp("smoke_store")
    uri = f"sqlite:///{root}/mlruns/mlflow.db"
    env = dict(os.environ, CXR_CACHE_DIR=str(root / "cache"), RAY_AUTH_MODE="disabled",
               PYTHONPATH=str(REPO_ROOT), PYTHONUNBUFFERED="1")
    # no --duplicates: the default (drop the copies) is what a user running the command gets
    common = ["--smoke", "--data", str(covid3_dir),
              "--storage", str(root / "ray_results"), "--mlflow-uri", uri]
    runs = {}
    for name, command in (("smoke-acgan", ["orchestrator.search", "acgan"]),
                          ("smoke-study", ["orchestrator.study"])):
        start = time.time()
        # Every process of the run (driver, Ray workers) appends the splits it reads here.
        run_env = dict(env, CXR_SPLIT_ACCESS_LOG=str(root / f"{name}-splits.log"))
        proc = subprocess.run([sys.executable, "-m", *command, "--name", name, *common],
                              cwd=root, env=run_env,
                              capture_output=True, text=True, timeout=1200)
        assert proc.returncode == 0, (name, proc.stdout[-4000:], proc.stderr[-4000:])
        runs[name] = SimpleNamespace(stdout=proc.stdout, stderr=proc.stderr,
                                     elapsed=time.time() - start,
                                     splits_read=root / f"{name}-splits.log")
    return SimpleNamespace(root=root, uri=uri, search="smoke-acgan", study="smoke-study",
                           runs=runs, env=env)
