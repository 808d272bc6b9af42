import pytest

from maas.exceptions import ServeError, SpecError
from maas.serve.errors import ProtocolError, answer
from maas.serve.tenancy import KeyRing, key_digest, load_api_key_hashes
from maas.spec import DeploySpec, spec_from_dict

BASE = {"data": {"path": "d.parquet", "label": "y"}, "model": {"name": "m"}}


def test_replicas_and_autoscaling_are_exclusive_and_map_to_serve_options():
    grpc_env = {"env_vars": {"RAY_SERVE_GRPC_MAX_MESSAGE_SIZE": str(4 * 1024 * 1024)}}
    assert DeploySpec().serve_options() == {"ray_actor_options": {"num_cpus": 0.25, "num_gpus": 0,
                                                                  "runtime_env": grpc_env},
                                            "num_replicas": 1, "logging_config": {"enable_access_log": False}}
    assert "logging_config" not in DeploySpec(serve_access_log=True).serve_options()  # Serve's config decides
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
    assert load_api_key_hashes() == [] and not KeyRing(None, []).required  # no keys: open
    monkeypatch.setenv("MAAS_API_KEYS", "a" * 20 + ", " + "b" * 20)
    hashes = load_api_key_hashes()
    assert len(hashes) == 2 and all(len(h) == 64 for h in hashes)
    ring = KeyRing(None, hashes)
    assert ring.check("Bearer " + "a" * 20).name is None and ring.check("bearer " + "b" * 20).allows("any")
    for header in ("Bearer " + "c" * 20, None, "a" * 20):  # an unknown key, none, no scheme
        with pytest.raises(ProtocolError, match="API key"):
            ring.check(header)
    monkeypatch.setenv("MAAS_API_KEYS", "short")
    with pytest.raises(ServeError, match="shorter than 16"):
        load_api_key_hashes()
    monkeypatch.setenv("MAAS_API_KEYS", "")
    monkeypatch.setenv("MAAS_API_KEYS_FILE", str(tmp_path / "missing"))
    with pytest.raises(ServeError, match="MAAS_API_KEYS_FILE"):
        load_api_key_hashes()


def test_one_key_rule_answers_each_protocol_in_its_own_error_shape():
    """``KeyRing.check`` is what OIP (REST and gRPC), OpenAI and the Batch API routes all call: open without
    keys, else a 401 with ``www-authenticate`` in the route's protocol's shape; a 503 says when to come back;
    errors cross actors."""
    import json
    import pickle

    assert KeyRing(None, []).check(None).digest == "open"  # no keys configured: open
    ring = KeyRing(None, [key_digest("k" * 20)])
    assert ring.check("Bearer " + "k" * 20).digest == key_digest("k" * 20)
    for header in (None, "Bearer wrong-key-of-some-length", "Basic " + "k" * 20):
        with pytest.raises(ProtocolError) as err:
            ring.check(header)
        assert err.value.status == 401 and err.value.headers == {"www-authenticate": "Bearer"}
    oip, openai = answer(err.value, "oip"), answer(err.value, "openai")
    assert oip.status_code == openai.status_code == 401 and oip.headers["www-authenticate"] == "Bearer"
    assert json.loads(oip.body) == {"error": err.value.message}
    assert json.loads(openai.body)["error"] == {"message": err.value.message, "type": "authentication_error",
                                                "code": 401}
    busy = pickle.loads(pickle.dumps(ProtocolError(503, "loading")))
    assert (busy.status, busy.message, busy.headers) == (503, "loading", {"retry-after": "2"})
    assert answer(busy, "openai").headers["retry-after"] == "2"


def test_served_model_lists_normalise_and_bad_entries_name_the_problem():
    from maas.serve.served import normalize_routes

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


def test_stale_haproxy_folders_are_swept_and_live_or_starting_ones_kept(monkeypatch, tmp_path):
    import os
    import socket
    import tempfile
    import time

    from maas.serve.deploy import HAPROXY_MARK, haproxy_instance_env, remove_stale_haproxy_folders

    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))

    def folder_of(env):
        return os.path.dirname(env["RAY_SERVE_HAPROXY_CONFIG_FILE_LOC"])

    def with_socket(folder, listening):  # an HAProxy's admin socket, as Ray lays it out (under the node id)
        os.makedirs(f"{folder}/node1")
        sock = socket.socket(socket.AF_UNIX)
        sock.bind(f"{folder}/node1/admin.sock")
        sock.listen(1)
        if not listening:
            sock.close()  # the socket file stays, as HAProxy's does after Serve shuts down
        return sock

    live, dead, starting, abandoned = (folder_of(haproxy_instance_env()) for _ in range(4))
    assert all(os.path.isfile(f"{d}/{HAPROXY_MARK}") for d in (live, dead, starting, abandoned))
    listener = with_socket(live, listening=True)
    with_socket(dead, listening=False)
    old = time.time() - 3600
    os.utime(f"{abandoned}/{HAPROXY_MARK}", (old, old))  # never got a socket, an hour ago
    unmarked = tmp_path / "mh0123abcd"  # someone else's folder of the same shape
    (unmarked / "node1").mkdir(parents=True)
    try:
        assert sorted(remove_stale_haproxy_folders(grace_s=300)) == sorted([dead, abandoned])
        assert os.path.isdir(live) and os.path.isdir(starting) and unmarked.is_dir()
        assert not os.path.exists(dead) and not os.path.exists(abandoned)
    finally:
        listener.close()
    assert remove_stale_haproxy_folders(grace_s=300) == [live]  # its HAProxy is gone now
    assert remove_stale_haproxy_folders(grace_s=0) == [starting]


def test_the_start_line_says_which_ports_listen_where_and_grpc_is_bounded(monkeypatch, tmp_path):
    import os

    from maas.serve.deploy import haproxy_bound_env, haproxy_instance_env, listening

    monkeypatch.setattr("tempfile.tempdir", str(tmp_path))
    env = {**haproxy_instance_env(), **haproxy_bound_env("127.0.0.1")}
    folder = env["RAY_SERVE_HAPROXY_CONFIG_FILE_LOC"].rsplit("/", 1)[0]
    assert os.stat(folder).st_mode & 0o777 == 0o700  # HAProxy's world-writable admin socket lives in it
    line = listening(DeploySpec(host="127.0.0.1", port=8000, grpc_port=9000), env, grpc=True)
    assert line.startswith("HTTP 127.0.0.1:8000; gRPC 127.0.0.1:9000; the replicas' own HTTP ports")
    http, grpc_ = (f"{env[f'RAY_SERVE_DIRECT_INGRESS_MIN_{p}_PORT']}-{env[f'RAY_SERVE_DIRECT_INGRESS_MAX_{p}_PORT']}"
                   for p in ("HTTP", "GRPC"))
    assert f"HTTP ports ({http}) on 127.0.0.1; the replicas' own gRPC ports ({grpc_}) and Serve's fallback gRPC " \
           f"proxy ({env['RAY_SERVE_FALLBACK_PROXY_GRPC_PORT']}) on every interface; " in line  # as Serve binds it
    assert f"HAProxy's stats 127.0.0.1:{env['RAY_SERVE_HAPROXY_STATS_PORT']} and metrics 127.0.0.1:" in line
    assert haproxy_bound_env("0.0.0.0") == {}  # every interface asked for: Ray's binds stay
    default = listening(DeploySpec(host="0.0.0.0", proxy="default", grpc_port=9000), {}, grpc=True)
    assert default == "HTTP 0.0.0.0:8000; gRPC [::]:9000"
    with pytest.raises(ValueError, match="Serve's Python gRPC proxy listens on every interface, whatever "
                                         "deploy.host \\('127.0.0.1'\\) says. Set deploy.grpc_port: 0"):
        DeploySpec(host="127.0.0.1", proxy="default", grpc_port=9000)  # it cannot be bound to the host
    assert DeploySpec(proxy="default", grpc_port=0).proxy == "default"
    # gRPC's transport limit: the body limit, or gRPC's 4 MiB default when larger (it bounds answers too)
    assert DeploySpec(max_request_bytes=64 * 1024).grpc_message_limit() == 4 * 1024 * 1024
    assert DeploySpec(max_request_bytes=32 * 1024 * 1024).grpc_message_limit() == 32 * 1024 * 1024
    env_vars = DeploySpec(max_request_bytes=32 * 1024 * 1024).serve_options()["ray_actor_options"]["runtime_env"]
    assert env_vars["env_vars"]["RAY_SERVE_GRPC_MAX_MESSAGE_SIZE"] == str(32 * 1024 * 1024)

def test_haproxy_runs_with_its_side_listeners_bound_to_the_host_and_its_own_arguments(tmp_path):
    import subprocess

    from maas.serve.deploy import haproxy_bound_env

    env = haproxy_bound_env("127.0.0.1")
    fake = tmp_path / "haproxy"  # stands for the binary: records the arguments it got
    fake.write_text(f"#!/bin/sh\necho \"$@\" > {tmp_path}/args\n")
    fake.chmod(0o755)
    config = tmp_path / "haproxy.cfg"  # the binds as Ray's template writes them (Ray 2.60)
    config.write_text("frontend prometheus\n    bind :9101\n    mode http\nfrontend http_frontend\n"
                      "    bind 127.0.0.1:8000\nlisten stats\n  bind *:8404\n  stats enable\n")
    run = subprocess.run([env["RAY_SERVE_HAPROXY_BINARY_PATH"], "-db", "-f", str(config), "-sf", "12"],
                         env={**env, "MAAS_HAPROXY_BINARY": str(fake), "PATH": "/usr/bin:/bin"})
    assert run.returncode == 0
    assert (tmp_path / "args").read_text().split() == ["-db", "-f", str(config), "-sf", "12"]
    assert config.read_text() == ("frontend prometheus\n    bind 127.0.0.1:9101\n    mode http\n"
                                  "frontend http_frontend\n    bind 127.0.0.1:8000\nlisten stats\n"
                                  "  bind 127.0.0.1:8404\n  stats enable\n")
    missing = subprocess.run([env["RAY_SERVE_HAPROXY_BINARY_PATH"], "-f", str(config)], capture_output=True,
                             text=True, env={**env, "MAAS_HAPROXY_BINARY": "/nowhere", "PATH": str(tmp_path / "x")})
    assert missing.returncode == 127 and "HAProxy not found at '/nowhere'" in missing.stderr


def test_a_side_port_chosen_for_one_serve_is_not_handed_to_another_starting_at_once(monkeypatch, tmp_path):
    """Two Serve instances starting together on one machine (two `maas run`, a suite in two processes) each
    find Ray's default HAProxy ports free before either binds them: the first claims them, the second gets
    others, and a claim lapses after CLAIM_S seconds."""
    import json
    import tempfile

    from maas import ports
    from maas.serve.deploy import haproxy_instance_env

    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    keys = ("RAY_SERVE_HAPROXY_STATS_PORT", "RAY_SERVE_HAPROXY_METRICS_PORT", "RAY_SERVE_FALLBACK_PROXY_HTTP_PORT",
            "RAY_SERVE_FALLBACK_PROXY_GRPC_PORT", "RAY_SERVE_DIRECT_INGRESS_MIN_HTTP_PORT",
            "RAY_SERVE_DIRECT_INGRESS_MIN_GRPC_PORT")
    first, second = ({k: int(env[k]) for k in keys} for env in (haproxy_instance_env(), haproxy_instance_env()))
    assert not set(first.values()) & set(second.values()), (first, second)
    assert all(ports.port_free(p) for p in second.values())
    (claims,) = tmp_path.glob("maas-port-claims-*.json")
    assert set(json.loads(claims.read_text())) == {str(p) for p in (*first.values(), *second.values())}
    assert not ports.claim(first["RAY_SERVE_HAPROXY_STATS_PORT"])
    monkeypatch.setattr(ports, "CLAIM_S", 0.0)  # every claim has lapsed
    assert ports.claim(first["RAY_SERVE_HAPROXY_STATS_PORT"])
    claims.write_text("not json")  # a damaged file is started over, not a failure
    assert ports.claim(first["RAY_SERVE_HAPROXY_STATS_PORT"])
