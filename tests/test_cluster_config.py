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
    assert "pip install -e ." in setup and "cxr-gan-search" in setup
    head = " ".join(cluster["head_setup_commands"])
    assert "mlflow server" in head and "--host 127.0.0.1" in head
    assert "s3://" in setup  # checkpoints go to shared storage, not the head's disk
