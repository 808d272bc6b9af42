"""cluster.yaml is checked against Ray's own cluster-launcher schema, plus what maas relies on."""

from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[2]


def test_cluster_yaml_passes_rays_schema_and_has_cpu_and_gpu_workers():
    from ray.autoscaler._private.util import prepare_config, validate_config

    config = yaml.safe_load((ROOT / "cluster.yaml").read_text())
    # what `ray up` does first: fill the provider's defaults, then check against ray-schema.json
    validate_config(prepare_config(config))  # raises jsonschema.ValidationError on any violation

    types = config["available_node_types"]
    assert config["head_node_type"] in types
    assert types["gpu_worker"]["resources"]["GPU"] >= 1
    assert types["gpu_worker"]["min_workers"] <= types["gpu_worker"]["max_workers"]
    assert types["cpu_worker"]["min_workers"] <= types["cpu_worker"]["max_workers"] <= config["max_workers"]
    # maas on every node, and one auth token shared by the cluster and the submitting machine
    assert any("-e ~/maas" in c for c in config["setup_commands"])
    assert any("-e ~/maas" in c for c in types["gpu_worker"]["worker_setup_commands"])
    assert config["file_mounts"]["~/.ray/auth_token"] == "~/.ray/auth_token"
    assert all("RAY_AUTH_MODE=token" in c for c in config["head_start_ray_commands"][1:])


def test_schema_check_really_rejects_a_broken_config():
    import jsonschema
    import pytest
    from ray.autoscaler._private.util import prepare_config, validate_config

    config = yaml.safe_load((ROOT / "cluster.yaml").read_text())
    config["available_node_types"]["gpu_worker"]["min_wrokers"] = 1  # typo: unknown key
    with pytest.raises(jsonschema.ValidationError):
        validate_config(prepare_config(config))
