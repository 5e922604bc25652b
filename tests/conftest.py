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


def _workers() -> int:
    """How many pytest-xdist workers share this machine (1 without -n)."""
    return int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))


@pytest.fixture(autouse=True)
def _few_threads():
    # Two cores are shared by the whole suite (and by the xdist workers); oversubscribing
    # them makes it slower.
    import torch

    torch.set_num_threads(max(1, min(2, (os.cpu_count() or 2) // _workers())))
    yield


@pytest.fixture(scope="session", autouse=True)
def _own_ray_temp_dir():
    """Each pytest process its own Ray temp dir.  A Ray head started by a test (the
    spread test's Cluster) records its address in <temp>/ray/ray_current_cluster, and a plain
    `ray.init()` in a search another xdist worker starts meanwhile would join it."""
    import shutil
    import tempfile

    if "RAY_TMPDIR" in os.environ:
        yield
        return
    # short: Ray's socket paths live under it and are limited to ~107 characters
    path = tempfile.mkdtemp(prefix="rt", dir="/tmp")
    os.environ["RAY_TMPDIR"] = path
    yield
    os.environ.pop("RAY_TMPDIR", None)
    shutil.rmtree(path, ignore_errors=True)


# pytest-xdist (`-n 2 --dist loadgroup`): a test that needs the smoke store runs where the
# store was built (it costs ~6 minutes); the tests of a module with a module-scoped fixture
# stay together (their fixture is built once); every other test goes wherever a worker is free.
SMOKE_FIXTURES = {"smoke_store", "notebook_store"}


def _xdist_group(item) -> str | None:
    names = set(item.fixturenames)
    if names & SMOKE_FIXTURES:
        return "smoke_store"
    defs = getattr(item, "_fixtureinfo", None)
    defs = defs.name2fixturedefs if defs else {}
    if any(d and d[-1].scope == "module" for d in defs.values()):
        return item.nodeid.split("::")[0]
    return None


def _file_order(items) -> dict[str, int]:
    """Heaviest files first (the smoke store, then the slow tests), so that two workers
    end together instead of one running the six-minute store while the other idles."""
    order: dict[str, int] = {}
    for item in items:
        path = item.nodeid.split("::")[0]
        rank = 0 if set(item.fixturenames) & SMOKE_FIXTURES else (
            1 if item.get_closest_marker("slow") else 2)
        order[path] = min(order.get(path, 2), rank)
    return order


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(config, items):
    for item in items:
        group = _xdist_group(item)
        if group:
            item.add_marker(pytest.mark.xdist_group(group))
    order = _file_order(items)
    items.sort(key=lambda item: order[item.nodeid.split("::")[0]])  # stable: file order kept


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
