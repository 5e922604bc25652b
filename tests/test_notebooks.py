"""Both notebooks run top to bottom (nbclient, kernel python3) against an MLflow store.

The store: $CXR_NOTEBOOK_MLFLOW_URI with search $CXR_NOTEBOOK_SEARCH (default "latest")
when set, e.g. by CI after a smoke search; otherwise the fake, well-formed search of
tests/test_report.py.  A failing cell fails the test.
"""
from __future__ import annotations

import os
from pathlib import Path

import pytest

from test_report import SEARCH, build_fake_search  # tests/ is on sys.path (rootdir conftest)

NOTEBOOKS = Path(__file__).resolve().parents[1] / "notebooks"

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module", params=["smoke-search", "fake"])
def notebook_store(request, tmp_path_factory, pneumoniamnist_npz) -> tuple[str, str, bool]:
    """(MLflow URI, search name, whether it is the fake store).  "smoke-search" is the real
    store a smoke search and study wrote in this test session (or $CXR_NOTEBOOK_MLFLOW_URI)."""
    if request.param == "smoke-search":
        uri = os.environ.get("CXR_NOTEBOOK_MLFLOW_URI")
        if uri:
            return uri, os.environ.get("CXR_NOTEBOOK_SEARCH", "latest"), False
        store = request.getfixturevalue("smoke_store")
        return store.uri, store.search, False
    root = tmp_path_factory.mktemp("nb_store")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("CXR_CACHE_DIR", str(tmp_path_factory.getbasetemp() / "cxr-cache"))
        uri, name = build_fake_search(root, str(pneumoniamnist_npz), study=True)
    return uri, name, True


def _run(name: str, env: dict[str, str], cwd: Path, monkeypatch):
    import nbclient
    import nbformat

    for key, value in env.items():
        monkeypatch.setenv(key, value)  # the kernel inherits this process's environment
    nb = nbformat.read(NOTEBOOKS / name, as_version=4)
    client = nbclient.NotebookClient(nb, kernel_name="python3", timeout=600,
                                     resources={"metadata": {"path": str(cwd)}})
    client.execute()  # raises CellExecutionError naming the failing cell
    return nb


def _outputs(nb, mime: str) -> list[str]:
    return [out["data"][mime] for cell in nb.cells if cell.cell_type == "code"
            for out in cell.get("outputs", []) if mime in out.get("data", {})]


def _printed(nb) -> str:
    return "".join(out.get("text", "") for cell in nb.cells if cell.cell_type == "code"
                   for out in cell.get("outputs", []) if out.get("output_type") == "stream")


def test_explore_search_notebook(notebook_store, tmp_path, tmp_path_factory, monkeypatch):
    uri, search, fake = notebook_store
    nb = _run("explore_search.ipynb", {
        "MLFLOW_TRACKING_URI": uri, "CXR_NOTEBOOK_SEARCH": search,
        "CXR_CACHE_DIR": str(tmp_path_factory.getbasetemp() / "cxr-cache")}, tmp_path, monkeypatch)
    pngs = _outputs(nb, "image/png")
    assert pngs, "the notebook drew no figure"
    if not fake:
        # a real smoke search: every view is drawn (loss curves, metric curves,
        # hyper-parameters, Pareto front, top grids, t-SNE); nothing replaced by a note
        notes = [m for m in _outputs(nb, "text/markdown") if m.startswith("**Not shown:**")]
        assert not notes, notes
        assert len(pngs) == 6, len(pngs)
    if fake:
        # loss curves, metric curves, hyper-parameters, Pareto front, top grids
        assert len(pngs) == 5
        text = _printed(nb)
        assert f"search {SEARCH!r}" in text and "('t_b', 1)" in text


def test_augmentation_study_notebook(notebook_store, tmp_path, monkeypatch):
    uri, _, fake = notebook_store
    nb = _run("augmentation_study.ipynb", {"MLFLOW_TRACKING_URI": uri}, tmp_path, monkeypatch)
    markdown = "\n".join(_outputs(nb, "text/markdown"))
    if fake:
        assert len(_outputs(nb, "image/png")) == 1  # the one confusion matrix
        assert "gan_oversample" in "\n".join(_outputs(nb, "text/html"))
        assert "no gradcam/*.png" in markdown  # what is missing is said, not skipped
