import pytest

from maas.exceptions import ServeError, SpecError
from maas.serve.auth import authorized, load_api_key_hashes
from maas.spec import DeploySpec, spec_from_dict

BASE = {"data": {"path": "d.parquet", "label": "y"}, "model": {"name": "m"}}


def test_replicas_and_autoscaling_are_exclusive_and_map_to_serve_options():
    assert DeploySpec().serve_options() == {"ray_actor_options": {"num_cpus": 0.25, "num_gpus": 0},
                                            "num_replicas": 1}
    auto = DeploySpec(autoscaling={"min_replicas": 0, "max_replicas": 3, "target_ongoing_requests": 4}, num_gpus=0.5)
    opts = auto.serve_options()
    assert opts["autoscaling_config"] == {"min_replicas": 0, "max_replicas": 3, "target_ongoing_requests": 4}
    assert "num_replicas" not in opts and opts["ray_actor_options"]["num_gpus"] == 0.5
    with pytest.raises(SpecError, match="either num_replicas or autoscaling"):
        spec_from_dict(BASE, ["deploy.num_replicas=2", "deploy.autoscaling={max_replicas: 2}"])
    with pytest.raises(SpecError, match="min_replicas"):
        spec_from_dict(BASE, ["deploy.autoscaling={min_replicas: 5, max_replicas: 2}"])


def test_api_keys_come_from_env_and_file_and_only_digests_are_kept(monkeypatch, tmp_path):
    monkeypatch.delenv("MAAS_API_KEYS", raising=False)
    monkeypatch.delenv("MAAS_API_KEYS_FILE", raising=False)
    assert load_api_key_hashes() == [] and authorized(None, [])  # no keys: open
    monkeypatch.setenv("MAAS_API_KEYS", "a" * 20 + ", " + "b" * 20)
    hashes = load_api_key_hashes()
    assert len(hashes) == 2 and all(len(h) == 64 for h in hashes)
    assert authorized("Bearer " + "a" * 20, hashes) and authorized("bearer " + "b" * 20, hashes)
    assert not authorized("Bearer " + "c" * 20, hashes) and not authorized(None, hashes)
    assert not authorized("a" * 20, hashes)  # the scheme is required
    monkeypatch.setenv("MAAS_API_KEYS", "short")
    with pytest.raises(ServeError, match="shorter than 16"):
        load_api_key_hashes()
    monkeypatch.setenv("MAAS_API_KEYS", "")
    monkeypatch.setenv("MAAS_API_KEYS_FILE", str(tmp_path / "missing"))
    with pytest.raises(ServeError, match="MAAS_API_KEYS_FILE"):
        load_api_key_hashes()
