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


def test_served_model_lists_normalise_and_bad_entries_name_the_problem():
    from maas.serve.hosting import normalize_routes

    routes = normalize_routes(["digits@production", "wine/2", {"model": "iris", "canary_alias": "candidate",
                                                               "canary_percent": 5}])
    assert [(r["model"], r["alias"], r["version"]) for r in routes] == [
        ("digits", "production", None), ("wine", None, 2), ("iris", "production", None)]
    assert routes[2]["canary_alias"] == "candidate" and routes[2]["canary_percent"] == 5.0
    assert normalize_routes("digits")[0]["alias"] == "production"
    for bad, fragment in [([], "no models"), (["a@x", "a/2"], "listed twice"),
                          ([{"model": "a", "alias": "x", "version": 1}], "not both"),
                          ([{"model": "a", "canary_percent": 10}], "needs a canary_alias"),
                          ([{"model": "a", "canary_alias": "c", "canary_percent": 150}], "0..100"),
                          ([{"model": "a", "weights": 1}], "unknown key"), ([3], "name@alias")]:
        with pytest.raises(ServeError, match=fragment):
            normalize_routes(bad)


def test_canary_and_alias_poll_are_checked_in_the_spec():
    spec = spec_from_dict(BASE, ["deploy.canary={alias: candidate, percent: 10}", "deploy.alias_poll_s=0.5"])
    assert spec.deploy.canary.alias == "candidate" and spec.deploy.canary.percent == 10
    with pytest.raises(SpecError, match="deploy.canary.percent"):
        spec_from_dict(BASE, ["deploy.canary={alias: candidate, percent: 120}"])
