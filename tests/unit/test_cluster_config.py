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



def test_ray_start_itself_runs_with_token_authentication(tmp_path):
    """Run the start commands as the launcher does (bash), with a `ray` that records the environment it was
    started with: the variable must reach `ray start`, not some other command on the line."""
    import os
    import subprocess

    config = yaml.safe_load((ROOT / "cluster.yaml").read_text())
    stub = tmp_path / "bin"
    stub.mkdir()
    log = tmp_path / "calls.txt"
    (stub / "ray").write_text(f'#!/bin/sh\necho "$1 auth=$RAY_AUTH_MODE" >> {log}\n')
    (stub / "ray").chmod(0o755)
    env = {k: v for k, v in os.environ.items() if k != "RAY_AUTH_MODE"}
    env.update(PATH=f"{stub}:{env['PATH']}", RAY_HEAD_IP="10.0.0.1")
    for key in ("head_start_ray_commands", "worker_start_ray_commands"):
        log.write_text("")
        for command in config[key]:
            subprocess.run(["bash", "-c", command], env=env, check=False, timeout=30)
        calls = log.read_text().split("\n")
        assert "start auth=token" in calls, (key, calls)
        assert all(c.endswith("auth=token") for c in calls if c.startswith("start")), (key, calls)


def test_schema_check_really_rejects_a_broken_config():
    import jsonschema
    import pytest
    from ray.autoscaler._private.util import prepare_config, validate_config

    config = yaml.safe_load((ROOT / "cluster.yaml").read_text())
    config["available_node_types"]["gpu_worker"]["min_wrokers"] = 1  # typo: unknown key
    with pytest.raises(jsonschema.ValidationError):
        validate_config(prepare_config(config))
