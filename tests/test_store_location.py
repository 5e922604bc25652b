"""One store (issue 24 item 4): a sqlite store keeps its artefacts beside it, and a moved
folder keeps them reachable (the MLflow UI reads the paths the store records)."""
from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

from mlflow.tracking import MlflowClient

from orchestrator.store.layout import existing_client


def _search_store(root: Path, cwd: Path) -> str:
    """A store at root/mlflow.db with one run and one artefact, written from another folder."""
    code = ("import sys; from mlflow.tracking import MlflowClient\n"
            "from orchestrator.store.layout import experiment_id\n"
            f"c = MlflowClient('sqlite:///{root}/mlflow.db')\n"
            "run = c.create_run(experiment_id(c, 'search')).info.run_id\n"
            f"open('grid.png', 'wb').write(b'png')\n"
            "c.log_artifact(run, 'grid.png', artifact_path='grids')\n"
            "print(run)")
    repo = Path(__file__).resolve().parents[1]
    out = subprocess.run([sys.executable, "-c", code], cwd=cwd, capture_output=True, text=True,
                         env={"PYTHONPATH": str(repo), "PATH": "/usr/bin:/bin"}, check=True)
    return out.stdout.strip().splitlines()[-1]


def test_artefacts_go_beside_the_sqlite_store_and_survive_a_move(tmp_path):
    (tmp_path / "elsewhere").mkdir()
    root = tmp_path / "DIR"
    root.mkdir()
    run_id = _search_store(root, tmp_path / "elsewhere")
    client = MlflowClient(f"sqlite:///{root}/mlflow.db")
    location = client.get_experiment_by_name("search").artifact_location
    assert location == (root / "artifacts").as_uri()
    assert not (tmp_path / "elsewhere" / "mlruns").exists()
    assert (root / "artifacts" / run_id / "artifacts" / "grids" / "grid.png").is_file()

    moved = tmp_path / "NEW"
    shutil.move(root, moved)
    client = existing_client(f"sqlite:///{moved}/mlflow.db")  # what rank/report/generate open
    assert client.get_experiment_by_name("search").artifact_location == (moved / "artifacts").as_uri()
    assert client.get_run(run_id).info.artifact_uri.startswith((moved / "artifacts").as_uri())
    got = client.download_artifacts(run_id, "grids/grid.png", str(tmp_path))
    assert Path(got).read_bytes() == b"png"


def test_a_server_store_chooses_its_own_artefact_root(tmp_path):
    from orchestrator.store.layout import artifact_root

    assert artifact_root("http://127.0.0.1:5000") is None
    assert artifact_root(f"sqlite:///{tmp_path}/m.db") == (tmp_path / "artifacts").as_uri()


def test_artifact_root_puts_a_new_experiments_artefacts_where_asked(tmp_path):
    """--artifact-root (a relative folder is made absolute) for a new experiment; asking an
    existing experiment for another root is an error naming both, not a silent split."""
    import pytest

    from orchestrator.store.layout import StoreError, experiment_id
    from orchestrator.store.writer import start_parent_run

    client = MlflowClient(f"sqlite:///{tmp_path}/store/mlflow.db")
    run_id = start_parent_run(client, "s", {}, {}, artifact_root=str(tmp_path / "elsewhere"))
    location = client.get_experiment_by_name("s").artifact_location
    assert location == (tmp_path / "elsewhere").as_uri()
    assert client.get_run(run_id).info.artifact_uri.startswith(location)
    assert experiment_id(client, "s", str(tmp_path / "elsewhere")) == experiment_id(client, "s")
    with pytest.raises(StoreError, match="keeps its artefacts at .*elsewhere.*applies to new "
                                         "searches only"):
        experiment_id(client, "s", "s3://bucket/cxr")


def test_a_bad_artifact_root_is_refused_before_anything_starts(tmp_path, capsys):
    from orchestrator.search import main

    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    rc = main(["acgan", "--smoke", "--artifact-root", str(blocker / "sub"), "--mlflow-uri",
               f"sqlite:///{tmp_path}/m.db", "--storage", str(tmp_path / "rr")])
    err = capsys.readouterr().err
    assert rc == 2 and "--artifact-root" in err and "pass --artifact-root a folder" in err, err
