"""cluster.yaml is valid for `ray up` (Ray's own schema) and keeps the project's promises."""
import copy
from pathlib import Path

import pytest
import yaml

from ray.autoscaler._private.util import prepare_config, validate_config

CLUSTER = Path(__file__).resolve().parents[1] / "cluster.yaml"


@pytest.fixture(scope="module")
def cluster() -> dict:
    return yaml.safe_load(CLUSTER.read_text())


def test_cluster_yaml_passes_rays_schema(cluster):
    validate_config(prepare_config(copy.deepcopy(cluster)))


def test_schema_check_can_fail(cluster):
    bad = copy.deepcopy(cluster)
    bad["available_node_types"]["gpu_1x"]["max_wrkers"] = 1
    with pytest.raises(Exception, match="max_wrkers"):
        validate_config(prepare_config(bad))


def test_gpu_worker_types_scale_from_zero(cluster):
    gpu_types = {k: v for k, v in cluster["available_node_types"].items() if k.startswith("gpu")}
    assert gpu_types, "cluster.yaml must define GPU worker node types"
    for node in gpu_types.values():
        assert node["min_workers"] == 0 and node["max_workers"] >= 1


def test_setup_installs_this_project_and_mlflow_is_loopback_only(cluster):
    setup = " ".join(cluster["setup_commands"])
    assert "pip install -e \".[aws]\"" in setup and "cxr-gan-search" in setup
    head = " ".join(cluster["head_setup_commands"])
    assert "mlflow server" in head and "--host 127.0.0.1" in head
    assert "s3://" in setup  # checkpoints go to shared storage, not the head's disk


def _pinned_ray() -> str:
    import tomllib

    deps = tomllib.loads((CLUSTER.parent / "pyproject.toml").read_text())["project"]["dependencies"]
    (ray_dep,) = [d for d in deps if d.startswith("ray[")]
    assert "==" in ray_dep, f"Ray must be pinned to one version: {ray_dep}"
    return ray_dep.split("==")[1]


def test_every_node_runs_rays_gpu_image_at_the_pinned_ray_version(cluster):
    import ray

    version = _pinned_ray()
    assert cluster["docker"]["image"] == f"rayproject/ray:{version}-py311-gpu"
    assert ray.__version__ == version  # the Ray this checkout is tested with


def test_every_node_has_an_instance_profile_for_the_storage(cluster):
    arns = {name: node["node_config"].get("IamInstanceProfile", {}).get("Arn", "")
            for name, node in cluster["available_node_types"].items()}
    assert all(":instance-profile/" in arn for arn in arns.values()), arns


def test_boto3_comes_with_the_aws_extra_that_setup_installs(cluster):
    import tomllib

    extras = tomllib.loads((CLUSTER.parent / "pyproject.toml").read_text())["project"][
        "optional-dependencies"]
    assert any(d.startswith("boto3") for d in extras["aws"])
    assert 'pip install -e ".[aws]"' in " ".join(cluster["setup_commands"])


def test_dashboards_and_mlflow_listen_on_loopback_only(cluster):
    head = " ".join(cluster["head_start_ray_commands"])
    assert "--dashboard-host=127.0.0.1" in head
    assert "0.0.0.0" not in yaml.safe_dump(cluster)
    mlflow = " ".join(cluster["head_setup_commands"])
    assert "--host 127.0.0.1" in mlflow


def test_trial_actors_stay_on_the_head_and_no_training_runs_there(cluster):
    from orchestrator.run.cluster import DRIVER_RESOURCE

    head = cluster["available_node_types"][cluster["head_node_type"]]["resources"]
    assert head["CPU"] == 0 and head[DRIVER_RESOURCE] > 0
    workers = [n for k, n in cluster["available_node_types"].items() if k != cluster["head_node_type"]]
    assert all(DRIVER_RESOURCE not in n["resources"] for n in workers)


def test_the_commit_is_passed_to_the_head_since_git_is_not_synced(cluster):
    assert "**/.git" in cluster["rsync_exclude"]
    assert "CXR_CODE_VERSION=$(git rev-parse HEAD)" in CLUSTER.read_text()


def test_a_train_trials_actor_asks_for_the_head_only_resource(monkeypatch):
    from orchestrator.config import SearchConfig
    from orchestrator.run.cluster import DRIVER_RESOURCE, place
    from orchestrator.store.layout import code_version, source_tags
    from trainables.ray_glue import trial_resources

    cfg = SearchConfig(experiment="acgan", preset="s0", gpus_per_worker=1.0, execution="train")
    on_cluster = place(cfg, {"GPU": 4.0, "CPU": 32.0, DRIVER_RESOURCE: 1000.0})
    assert trial_resources(on_cluster) == {"CPU": 0, DRIVER_RESOURCE: 0.01}
    assert trial_resources(place(cfg, {"GPU": 4.0, "CPU": 32.0})) == {"CPU": 0.01}
    monkeypatch.setenv("CXR_CODE_VERSION", "0123abc")
    assert code_version() == "0123abc"
    assert source_tags("orchestrator.search")["mlflow.source.git.commit"] == "0123abc"
