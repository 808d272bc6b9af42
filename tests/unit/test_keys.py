"""Named API keys: records in the store (create, rotate, revoke, history; compare-and-swap; on a folder and on
moto's S3), the ``maas keys`` command, and their enforcement in-process on every protocol of a replica: a key
outside its models gets 403 in the protocol's shape, a revoked, expired or rotated-away secret 401 naming why,
and a change reaches a running replica within its poll."""

from __future__ import annotations

import json
import time

import pytest

from maas.exceptions import RegistryError


@pytest.fixture()
def served(tmp_path):
    """A replica serving two classifiers, ``digits`` and ``iris``, with one unnamed key; its registry."""
    from maas.models import build_model
    from maas.models.artifacts import save_torch_model
    from maas.models.mlp import classifier_signature
    from maas.registry import Registry
    from maas.serve.app import ModelServer
    from maas.serve.tenancy import key_digest

    config = {"arch": "mlp", "input_dim": 4, "num_classes": 2, "hidden_sizes": [8], "dropout": 0.0}
    reg = Registry(str(tmp_path / "store"))
    for name in ("digits", "iris"):
        reg.publish(name, save_torch_model(build_model(config), config, tmp_path / name), runtime="torch",
                    task="classify", signature=classifier_signature(4, [0, 1]))
    srv = ModelServer.func_or_class(reg.location, ["digits/1", "iris/1"], alias_poll_s=0.1,
                                    api_key_hashes=[key_digest("unnamed-0123456789abcdef")])
    yield srv, reg
    srv.__del__()


def _call(srv, method: str, path: str, key=None, body: bytes = b""):
    import asyncio

    from tests.asgi import asgi_request

    headers = (("content-type", "application/json"),) + ((("authorization", f"Bearer {key}"),) if key else ())
    response = asyncio.run(srv(asgi_request(method, path, body, headers)))
    return response.status_code, json.loads(response.body)


INFER = json.dumps({"inputs": [{"name": "input", "shape": [1, 4], "datatype": "FP32", "data": [0, 1, 2, 3]}]})


@pytest.mark.parametrize("where", ["folder", "s3"])
def test_keys_are_records_with_history_written_create_only_and_only_a_digest_is_kept(where, tmp_path, request):
    from maas.registry import keys
    from maas.registry.objects import open_store

    store = open_store(str(tmp_path / "store") if where == "folder" else request.getfixturevalue("s3_bucket"))
    key, secret = keys.create(store, "team-a", ["digits*", "iris"], time.time() + 60, "me")
    assert secret.startswith("maas-") and len(secret) > 40 and key.prefix == secret[:12]
    assert key.digest == keys.digest(secret) and secret not in json.dumps([o.key for o in store.list("keys")])
    assert secret not in store.read_bytes("keys/team-a/0000000001.json").decode()
    assert key.allows("digits-v2") and key.allows("iris") and not key.allows("irises") and key.state() == "active"
    with pytest.raises(RegistryError, match="'team-a' exists"):
        keys.create(store, "team-a", [], None, "me")
    rotated, new_secret = keys.rotate(store, "team-a", "me")
    assert new_secret != secret and rotated.digest == keys.digest(new_secret) and rotated.seq == 2
    with pytest.raises(RegistryError, match="changed while this command ran"):
        keys._append(store, key, "me", "revoked", revoked_at=1.0)  # a writer that read seq 1: it lost the race
    assert keys.revoke(store, "team-a", "me").state() == "revoked"
    assert [k.change for k in keys.history(store, "team-a")] == ["created", "rotated", "revoked"]
    with pytest.raises(RegistryError, match="was revoked"):
        keys.rotate(store, "team-a", "me")
    keys.create(store, "all", [], None, "me")
    assert [(k.name, k.state(), k.allows("anything")) for k in keys.listing(store)] == [
        ("all", "active", True), ("team-a", "revoked", False)]
    for bad, words in [(lambda: keys.create(store, "Team", [], None, "me"), "key name 'Team'"),
                       (lambda: keys.create(store, "b", ["../x"], None, "me"), "--models '../x'"),
                       (lambda: keys.create(store, "b", [], time.time() - 1, "me"), "in the past"),
                       (lambda: keys.get(store, "ghost"), "no API key named 'ghost'")]:
        with pytest.raises(RegistryError, match=words):
            bad()


def test_a_key_calls_only_its_models_on_every_route_and_a_change_reaches_the_replica_within_its_poll(served):
    from tests.waiting import wait_until

    srv, reg = served
    logged = []  # the access log's lines, as the replica's log file would get them

    class Sink:
        def write(self, entries):
            logged.extend(entries)

        def close(self):
            pass

    srv.accounting.sink = Sink()
    _, digits_only = reg.keys.create("team-a", models=["digits"])
    assert wait_until(lambda: _call(srv, "GET", "/v2/models", digits_only)[0] == 200, 10, "the new key")
    assert [m["name"] for m in _call(srv, "GET", "/v2/models", digits_only)[1]["models"]] == ["digits"]
    assert [m["id"] for m in _call(srv, "GET", "/v1/models", digits_only)[1]["data"]] == ["digits"]
    assert _call(srv, "POST", "/v2/models/digits/infer", digits_only, INFER.encode())[0] == 200
    for method, path, body, shape in [("POST", "/v2/models/iris/infer", INFER, "oip"),
                                      ("GET", "/v2/models/iris", "", "oip"), ("GET", "/v1/models/iris", "", "openai"),
                                      ("POST", "/v1/embeddings", json.dumps({"model": "iris", "input": "x"}),
                                       "openai"),
                                      ("POST", "/v1/completions", json.dumps({"model": "iris/1", "prompt": "x"}),
                                       "openai")]:
        status, answer = _call(srv, method, path, digits_only, body.encode())
        message = answer["error"] if shape == "oip" else answer["error"]["message"]
        assert status == 403 and "API key 'team-a' may not call model 'iris'" in message, (path, answer)
        if shape == "openai":
            assert answer["error"]["type"] == "permission_error"
    srv.accounting.flush()  # the access log names the key that asked
    assert {(e["path"], e["status"], e.get("key")) for _, e in logged} >= {
        ("/v2/models/digits/infer", 200, "team-a"), ("/v2/models/iris/infer", 403, "team-a")}
    unnamed = "unnamed-0123456789abcdef"  # MAAS_API_KEYS's: every model, as before
    assert _call(srv, "POST", "/v2/models/iris/infer", unnamed, INFER.encode())[0] == 200
    # metered per key, model and version, written by the replica's meter: the 403s are errors of the key
    usage = lambda: sorted((u.key, u.model, u.version, u.requests, u.errors, u.rows) for u in reg.usage())  # noqa: E731
    expected = [("-", "iris", "1", 1, 0, 1), ("team-a", "-", "-", 2, 2, 0), ("team-a", "digits", "1", 1, 0, 1),
                ("team-a", "iris", "-", 1, 1, 0)]
    assert wait_until(lambda: usage() == expected, 10, every_s=0.05), usage()
    _, fresh = reg.keys.rotate("team-a")
    wait_until(lambda: _call(srv, "GET", "/v2/models", fresh)[0] == 200, 10, "the rotated secret")
    assert _call(srv, "GET", "/v2/models", digits_only)[0] == 401  # the old secret is gone with the rotation
    reg.keys.revoke("team-a")
    status, answer = wait_until(lambda: (r := _call(srv, "GET", "/v2/models", fresh))[0] == 401 and r, 10, "revoke")
    assert "API key 'team-a' was revoked at" in answer["error"]


def test_an_expired_key_is_refused_naming_when_and_a_batch_line_outside_the_keys_models_is_a_403_line(served):
    from maas.batch.openai_run import parse_lines
    from maas.registry import keys

    srv, reg = served
    _, secret = reg.keys.create("brief", expires_in_s=0.5)
    srv.keys.refresh()
    assert _call(srv, "GET", "/v2/models", secret)[0] == 200
    time.sleep(0.6)
    status, answer = _call(srv, "GET", "/v2/models", secret)
    assert status == 401 and "API key 'brief' expired at" in answer["error"]
    assert keys.get(reg.store, "brief").state() == "expired"
    line = json.dumps({"custom_id": "a", "method": "POST", "url": "/v1/completions",
                       "body": {"model": "lm", "prompt": "w1"}}).encode()
    _, errors, _, _ = parse_lines(line, "/v1/completions", {}, 16, denied=("lm",))
    assert errors[0]["response"]["status_code"] == 403 and "may not call model 'lm'" in \
        errors[0]["response"]["body"]["error"]["message"]


def test_the_keys_command_makes_lists_shows_rotates_and_revokes(tmp_path, capsys):
    from maas.cli import main
    from maas.cli.keys import expires_at

    store = str(tmp_path / "store")
    assert main(["keys", "create", "team-a", "--models", "digits*", "--expires", "30d", "--tpm", "1000",
                 "--tokens-per-day", "20000", "--store", store]) == 0
    made = capsys.readouterr().out
    secret = next(w for w in made.split() if w.startswith("maas-"))
    assert "'team-a'" in made and "digits*" in made and "1,000 tokens/min, 20,000 tokens/day" in made
    assert main(["keys", "create", "team-b", "--tpm", "0", "--store", store]) == 2
    assert "--tpm must be a whole number from 1" in capsys.readouterr().err
    assert main(["keys", "list", "--store", store]) == 0
    listed = capsys.readouterr().out
    assert "team-a" in listed and "active" in listed and secret not in listed and secret[:12] in listed
    assert main(["keys", "rotate", "team-a", "--json", "--store", store]) == 0
    assert json.loads(capsys.readouterr().out)["secret"] != secret
    assert main(["keys", "revoke", "team-a", "--store", store]) == 0 and "revoked" in capsys.readouterr().out
    assert main(["keys", "show", "team-a", "--store", store]) == 0
    assert [ln.split()[4] for ln in capsys.readouterr().out.splitlines()[1:]] == ["created", "rotated", "revoked"]
    assert main(["keys", "create", "team-a", "--store", store]) == 2
    assert "exists" in capsys.readouterr().err
    assert main(["keys", "create", "b", "--expires", "0d", "--store", store]) == 2
    assert expires_at("2027-01-31", 0) == 1801353600.0 and expires_at("12h", 100.0) == 100.0 + 12 * 3600


def test_request_limits_hold_across_replicas_sharing_one_limiter_and_a_refusal_says_when_to_come_back():
    """Two replicas' ``Limits`` leasing from one ``Limiter`` (the actor's class, called in-process): a window
    admits at most its limit in all, at least 90% of it, and the next window admits again; a refusal is a 429
    with ``retry-after``; a key without limits never asks the limiter."""
    import asyncio

    from maas.serve.errors import ProtocolError
    from maas.serve.limits import Limiter, Limits
    from maas.serve.tenancy import Caller

    now = [1_000_040.0]  # 40 s left in this minute
    counts, asked = Limiter(), []

    async def lease(bucket, window, limit, want):
        asked.append(want)
        return counts.lease(bucket, window, limit, want)

    replicas = [Limits(lease, clock=lambda: now[0]) for _ in range(2)]
    team = Caller("team", (), "digest-of-team", (("rpm", 40, "digest-of-team:rpm"),))

    async def ask(n: int) -> tuple[int, list]:
        admitted, refused = 0, []
        for i in range(n):
            try:
                await replicas[i % 2].admit(team)
                admitted += 1
            except ProtocolError as err:
                refused.append(err)
        return admitted, refused

    admitted, refused = asyncio.run(ask(100))
    assert admitted == 40 and len(refused) == 60 and set(asked) == {2}  # leases of a twentieth of the limit
    assert refused[0].status == 429 and refused[0].headers == {"retry-after": "40"}
    assert "API key 'team' is over its limit of 40 requests per minute; retry after 40 s" == refused[0].message
    now[0] += 40  # the next minute
    assert asyncio.run(ask(100))[0] == 40
    now[0] += 60  # a replica holding a lease it does not spend: the cluster admits at least 90% of the limit
    asyncio.run(replicas[0].admit(team))
    assert sum([1] + [asyncio.run(_try(replicas[1], team)) for _ in range(100)]) >= 36

    async def never(*_):
        raise AssertionError("a key without limits asked the limiter")

    for _ in range(3):
        asyncio.run(Limits(never).admit(Caller("free", (), "d")))


async def _try(limits, caller) -> int:
    from maas.serve.errors import ProtocolError

    try:
        await limits.admit(caller)
        return 1
    except ProtocolError:
        return 0


def test_a_checked_header_is_remembered_but_never_past_a_change_of_its_key(tmp_path):
    """The replica remembers headers it found valid (no hash per request), and forgets them when a key changes;
    even a remembered entry that raced a refresh is not taken for a record the store no longer holds."""
    from maas.registry import keys
    from maas.registry.objects import open_store
    from maas.serve.errors import ProtocolError
    from maas.serve.tenancy import KeyRing

    store = open_store(str(tmp_path / "store"))
    _, secret = keys.create(store, "team", [], None, "me")
    ring = KeyRing(store.uri, [])
    header = f"Bearer {secret}"
    assert ring.check(header).name == "team" and header in ring._known
    keys.revoke(store, "team", "me")
    remembered = ring._known
    ring.refresh()
    assert ring._known == {}
    ring._known = remembered  # as if a check had cached the old record while the refresh ran
    with pytest.raises(ProtocolError, match="API key 'team' was revoked"):
        ring.check(header)


def test_an_admin_key_manages_keys_moves_aliases_and_reads_everyones_usage_over_http(served):
    """``/maas/v1/...`` in-process: an admin key makes, lists, shows, rotates and revokes keys and moves an alias
    (compare-and-swap); bad bodies are 400s naming the field, a taken name or a lost race 409; another named
    key reads only its own usage and nothing else; the unnamed key none of it."""
    from maas.serve.limits import Limiter
    from tests.waiting import wait_until

    srv, reg = served
    counts = Limiter()  # the cluster's limiter actor's class, in-process: no Ray here

    async def lease(*args):
        return counts.lease(*args)

    srv.limits._lease = lease
    _, ops = reg.keys.create("ops", admin=True)
    assert wait_until(lambda: _call(srv, "GET", "/maas/v1/keys", ops)[0] == 200, 10, "the admin key")
    status, made = _call(srv, "POST", "/maas/v1/keys", ops, json.dumps(
        {"name": "team-b", "models": ["digits"], "tpm": 100, "expires_in_s": 3600}).encode())
    assert status == 201 and made["secret"].startswith("maas-") and "digest" not in made and made["tpm"] == 100
    assert made["by"] == "key:ops" and made["state"] == "active" and made["models"] == ["digits"]
    team_b = made["secret"]
    for body, status, fragment in (({"name": "team-b"}, 409, "exists"), ({"name": "c", "rpm": 0}, 400, "rpm"),
                                   ({"name": 5}, 400, "'name' must be str"), ({"name": "c", "admin": "yes"}, 400,
                                                                               "'admin' must be bool"),
                                   ({"name": "c", "colour": 1}, 400, "unknown field 'colour'"), ({}, 400, "'name'"),
                                   ({"name": "c", "expires_in_s": -1}, 400, "expires_in_s"),
                                   ({"name": "c", "models": ["a/b"]}, 400, "--models")):
        answer = _call(srv, "POST", "/maas/v1/keys", ops, json.dumps(body).encode())
        assert answer[0] == status and fragment in answer[1]["error"], (body, answer)
    assert _call(srv, "POST", "/maas/v1/keys", ops, b"{not json")[0] == 400
    listed = _call(srv, "GET", "/maas/v1/keys", ops)[1]["data"]
    assert [(k["name"], k["admin"]) for k in listed] == [("ops", True), ("team-b", False)]
    assert wait_until(lambda: _call(srv, "POST", "/v2/models/digits/infer", team_b, INFER.encode())[0] == 200, 10)
    # a named key that is not an admin: its own usage, nothing else; the unnamed key: nothing here at all
    mine = wait_until(lambda: (r := _call(srv, "GET", "/maas/v1/usage?since=1h", team_b))[1]["data"] and r, 10,
                      "its usage written")
    assert mine[0] == 200 and [(u["key"], u["requests"], u["rows"]) for u in mine[1]["data"]] == [("team-b", 1, 1)]
    for method, path in (("GET", "/maas/v1/usage?key=ops"), ("GET", "/maas/v1/keys"),
                         ("POST", "/maas/v1/keys/ops/revoke"), ("PUT", "/maas/v1/models/digits/aliases/live")):
        status, answer = _call(srv, method, path, team_b, b'{"version": 1}')
        assert status == 403 and ("is not an admin key" in answer["error"] or "only its own" in answer["error"])
    assert _call(srv, "GET", "/maas/v1/usage", "unnamed-0123456789abcdef")[0] == 403
    assert _call(srv, "GET", "/maas/v1/keys", None)[0] == 401
    everyone = _call(srv, "GET", "/maas/v1/usage?hourly=true", ops)[1]["data"]
    assert {"team-b"} <= {u["key"] for u in everyone} and all("hour" in u for u in everyone)
    # aliases: a move, a compare-and-swap that lost, unknown models and versions
    status, move = _call(srv, "PUT", "/maas/v1/models/digits/aliases/live", ops, b'{"version": 1, "expected": null}')
    assert status == 200 and move["version"] == 1 and move["by"] == "key:ops" and reg.aliases("digits") == {"live": 1}
    assert _call(srv, "PUT", "/maas/v1/models/digits/aliases/live", ops, b'{"version": 1, "expected": 7}')[0] == 409
    assert _call(srv, "PUT", "/maas/v1/models/digits/aliases/live", ops, b'{"version": 9}')[0] == 404
    assert _call(srv, "PUT", "/maas/v1/models/digits/aliases/live", ops, b'{"version": true}')[0] == 400
    assert _call(srv, "GET", "/maas/v1/models/nothing/aliases", ops)[0] == 404
    assert _call(srv, "GET", "/maas/v1/models/digits/aliases", ops)[1] == {"model": "digits", "aliases": {"live": 1}}
    # rotate and revoke: the history shows who did what
    status, rotated = _call(srv, "POST", "/maas/v1/keys/team-b/rotate", ops)
    assert status == 200 and rotated["secret"] != team_b
    assert _call(srv, "POST", "/maas/v1/keys/team-b/revoke", ops)[1]["state"] == "revoked"
    shown = _call(srv, "GET", "/maas/v1/keys/team-b", ops)[1]
    assert [(h["change"], h["by"]) for h in shown["history"]] == [("created", "key:ops"), ("rotated", "key:ops"),
                                                                  ("revoked", "key:ops")]
    assert _call(srv, "GET", "/maas/v1/keys/nobody", ops)[0] == 404


def test_hostile_admin_requests_are_4xx_in_the_oip_shape_and_change_nothing(served):
    """300 generated bodies and paths for the admin routes, with an admin key: every answer a 4xx (or a 2xx
    for a body that happens to be valid), never a server fault; the store's keys stay readable."""
    import random

    from tests.waiting import wait_until

    srv, reg = served
    _, ops = reg.keys.create("ops", admin=True)
    assert wait_until(lambda: _call(srv, "GET", "/maas/v1/keys", ops)[0] == 200, 10, "the admin key")
    rng, seen = random.Random(7), {}
    junk = [None, True, -1, 0, 10 ** 400, 1e308, 3.5, "", "\u00b2", [], {}, [None], {"a": 1}, "y" * 5000,
            ["s"] * 20, ["../x"], "team-\u00e9", "a" * 300]
    names = ["team-x", "..", "%00", "a" * 300, "\u00b2", "digits", "nothing"]  # never "ops": it would rotate itself
    for i in range(300):
        route = rng.choice(["POST /maas/v1/keys", "PUT /maas/v1/models/{n}/aliases/{n}",
                            "POST /maas/v1/keys/{n}/rotate", "GET /maas/v1/usage?since={n}&hourly={n}"])
        method, path = route.split(" ")
        path = path.replace("{n}", rng.choice(names), 1).replace("{n}", rng.choice(names))
        body = {k: rng.choice(junk) for k in rng.sample(["name", "models", "rpm", "tpm", "admin", "expires_in_s",
                                                         "version", "expected", "force", "reason", "x"], 3)}
        data = json.dumps(body).encode() if i % 5 else bytes(rng.randrange(256) for _ in range(40))
        status, answer = _call(srv, method, path, ops, data)
        assert status < 500 and (status < 300 or isinstance(answer["error"], str)), (method, path, body, answer)
        seen[status] = seen.get(status, 0) + 1
    assert seen.get(400, 0) > 100 and seen.get(401, 0) == 0, seen  # most reach the parsers, as the admin
    assert [k.name for k in reg.keys.list()][0] == "ops"
