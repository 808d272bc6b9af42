"""Metered usage (``maas.registry.usage``): each writer's totals per hour written whole (a rewrite replaces,
never adds), summed by readers per key, model and version, on a folder and on moto's S3; hostile objects
skipped; a replica's meter writing off the request path and keeping what a store refused; token limits that
admit while tokens are left and spend a request's tokens as they come."""

from __future__ import annotations

import json
import os
import time

import pytest

from maas.exceptions import RegistryError


@pytest.mark.parametrize("where", ["folder", "s3"])
def test_writers_totals_are_summed_per_key_model_and_version_and_a_rewrite_never_counts_twice(
        where, tmp_path, request):
    from maas.registry import usage
    from maas.registry.objects import open_store

    store = open_store(str(tmp_path / "store") if where == "folder" else request.getfixturevalue("s3_bucket"))
    a, b = usage.UsageWriter(store, "replica-a"), usage.UsageWriter(store, "replica-b")
    now = time.time()
    a.add(now, "team-a", "tiny", "1", 200, 1, prompt_tokens=5, completion_tokens=7)
    a.add(now, "team-a", "tiny", "1", 429, 0)
    b.add(now, "team-a", "tiny", "1", 200, 1, prompt_tokens=3, completion_tokens=2)
    b.add(now, None, "digits", "2", 200, 16)
    b.add(now - 7200, "team-a", "tiny", "1", 200, 1, 1, 1)  # two hours ago
    assert a.write() == 1 and b.write() == 2 and a.write() == 0  # nothing changed since: nothing written
    a.add(now, "team-a", "tiny", "1", 200, 1, prompt_tokens=1, completion_tokens=1)
    assert a.write() == 1  # the writer's whole totals again: replaces its object
    rows = usage.totals(usage.read(store, "1h"))
    assert [(u.key, u.model, u.version, u.requests, u.errors, u.prompt_tokens, u.completion_tokens, u.rows)
            for u in rows] == [("-", "digits", "2", 1, 0, 0, 0, 16), ("team-a", "tiny", "1", 4, 1, 9, 10, 3)]
    assert sum(u.requests for u in usage.read(store, "3h", key="team-a")) == 5
    assert usage.read(store, None, model="nothing") == []
    assert len(store.list(f"usage/{usage.hour_of(now)}")) == 2  # one object per writer and hour


def test_hostile_usage_objects_are_skipped_whole_and_bad_arguments_are_named(tmp_path, caplog):
    from maas.registry import usage
    from maas.registry.objects import open_store

    store = open_store(str(tmp_path / "store"))
    hour = usage.hour_of(time.time())
    w = usage.UsageWriter(store, "good")
    w.add(time.time(), "k", "m", "1", 200, 2)
    w.write()
    good = ["k", "m", "1", 1, 0, 0, 0, 2]
    for name, body in (("bad-json", b"{"), ("negative", {"rows": [["k", "m", "1", -5, 0, 0, 0, 0]]}),
                       ("a-float", {"rows": [good, ["k", "m", "1", 1.5, 0, 0, 0, 0]]}),
                       ("short", {"rows": [["k", "m", 1]]}), ("other-hour", {"hour": "2020-01-01T00", "rows": [good]}),
                       ("huge", {"rows": [good] * (usage.MAX_ROWS + 1)})):
        data = body if isinstance(body, bytes) else json.dumps(
            {"writer": name, "hour": hour, "fields": list(usage.FIELDS), **body}).encode()
        store.put(f"usage/{hour}/{name}.json", data)
    store.put(f"usage/{hour}/notes.txt", b"not usage")
    store.put("usage/not-an-hour/x.json", json.dumps({"rows": [good]}).encode())
    rows = usage.read(store)
    assert [(u.requests, u.rows) for u in rows] == [(1, 2)]  # only the good writer's
    assert sum("skipping" in r.message for r in caplog.records) == 6
    for bad in ("yesterday", "5y", "2026-13"):
        with pytest.raises(RegistryError, match="--since"):
            usage.read(store, bad)
    with pytest.raises(RegistryError, match="writer id"):
        usage.UsageWriter(store, "../escape")


def test_a_meter_writes_off_the_request_path_and_keeps_what_the_store_refused(tmp_path):
    from maas.registry import usage
    from maas.serve.metering import UsageMeter, journal_dir
    from tests.waiting import wait_until

    meter = UsageMeter(str(tmp_path / "store"), interval_s=0.05, writer="r1")
    try:
        for _ in range(100):
            meter.add("team", "digits", "1", 200, 3)
        store = meter.writer.store
        assert wait_until(lambda: [u.requests for u in usage.read(store)] == [100], 5, every_s=0.02)
        put, refused = store.put, []

        def refuse(key, data):  # the store refuses writes for a while (a full disk, a lost network)
            refused.append(key)
            raise OSError(28, "No space left on device")

        store.put = refuse
        meter.add("team", "digits", "1", 500, 0)
        assert wait_until(lambda: refused, 5, every_s=0.02)
        assert [u.errors for u in usage.read(store)] == [0] and meter.writer.dirty  # kept, not lost
        store.put = put
        assert wait_until(lambda: [u.errors for u in usage.read(store)] == [1], 5, every_s=0.05)
        meter.add("team", "digits", "1", 200, 1)
    finally:
        meter.close()
    assert [(u.requests, u.errors, u.rows) for u in usage.read(meter.writer.store)] == [(102, 1, 301)]
    assert not os.path.exists(journal_dir(str(tmp_path / "store")))  # its journal and folder went with it


def test_token_limits_admit_while_tokens_are_left_and_a_replica_in_debt_pays_it_before_admitting_again():
    import asyncio

    from maas.serve.errors import ProtocolError
    from maas.serve.limits import Limiter, Limits
    from maas.serve.tenancy import Caller

    counts, now = Limiter(), [2_000_010.0]

    async def lease(bucket, window, limit, want):
        return counts.lease(bucket, window, limit, want)

    a, b = Limits(lease, clock=lambda: now[0]), Limits(lease, clock=lambda: now[0])
    team = Caller("team", (), "d", (("tpm", 100, "d:tpm"), ("rpm", 1000, "d:rpm")))
    asyncio.run(a.admit(team))  # admitted: tokens are left; it costs none until they are counted
    a.spend(team, 80)  # the answer: 80 tokens, 5 leased, so a is 75 in debt
    asyncio.run(b.admit(team))
    b.spend(team, 15)
    asyncio.run(a.admit(team))  # a's lease pays its debt of 75 first: admitted with 1 left
    a.spend(team, 30)
    with pytest.raises(ProtocolError) as err:
        asyncio.run(a.admit(team))
    assert err.value.status == 429 and "over its limit of 100 tokens per minute; retry after 30 s" in err.value.message
    assert counts.used[("d:tpm", int(now[0] // 60))] == 100  # never more leased than the limit
    now[0] += 60
    asyncio.run(a.admit(team))  # a new minute


def test_the_usage_command_prints_totals_per_key_or_per_hour_and_names_a_bad_since(tmp_path, capsys):
    from maas.cli import main
    from maas.registry import usage
    from maas.registry.objects import open_store

    store = str(tmp_path / "store")
    w = usage.UsageWriter(open_store(store), "r")
    for key, model, tokens in (("team-a", "tiny", 40), ("team-a", "tiny", 2), ("team-b", "digits", 0)):
        w.add(time.time(), key, model, "1", 200, 1, prompt_tokens=tokens, completion_tokens=tokens * 2)
    w.write()
    assert main(["usage", "--store", store]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split()[:4] == ["key", "model", "version", "requests"] and len(lines) == 4
    assert lines[2].split() == ["team-a", "tiny", "1", "2", "0", "42", "84", "2"]
    assert main(["usage", "--key", "team-b", "--json", "--store", store]) == 0
    assert json.loads(capsys.readouterr().out) == [{"key": "team-b", "model": "digits", "version": "1", "requests": 1,
                                                    "errors": 0, "prompt_tokens": 0, "completion_tokens": 0,
                                                    "rows": 1}]
    assert main(["usage", "--hourly", "--model", "tiny", "--store", store]) == 0
    assert capsys.readouterr().out.splitlines()[2].split()[0] == usage.hour_of(time.time())
    assert main(["usage", "--key", "nobody", "--store", store]) == 0
    assert "no usage" in capsys.readouterr().out
    assert main(["usage", "--since", "last week", "--store", store]) == 2
    assert "--since 'last week'" in capsys.readouterr().err


def test_a_killed_writers_journal_is_recovered_by_the_next_meter_once_and_never_counted_twice(tmp_path):
    """A process metering requests is killed (SIGKILL) after its store write and 99 more requests: the next
    meter of the store on the node adds those 99 from the journal, and nothing twice (a line cut short by the
    kill is not a request); the journal is gone after."""
    import os
    import signal
    import subprocess
    import sys

    from maas.registry import usage
    from maas.registry.objects import open_store
    from maas.serve.metering import UsageMeter, journal_dir
    from tests.waiting import wait_until

    store = str(tmp_path / "store")
    script = f"""
import sys, time
from maas.registry import usage
from maas.serve.metering import UsageMeter
m = UsageMeter({store!r}, interval_s=3600, writer="victim")
m.add("team", "tiny", "1", 200, 1, 5, 7)
while not usage.read(m.store):
    time.sleep(0.01)
for i in range(99):
    m.add("team", "tiny", "1", 200 if i % 3 else 429, 1, 5, 7)
m.journal.append(b"2026-12-07T10\\tteam\\ttiny")  # the start of a line the kill cuts short
print("ready", flush=True)
time.sleep(60)
"""
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "ready"
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
    folder = journal_dir(open_store(store).uri)
    assert [u.requests for u in usage.read(open_store(store))] == [1]
    for _ in range(2):  # a second meter finds nothing left to add
        meter = UsageMeter(store, writer="next")
        try:
            assert wait_until(lambda: not any(n.startswith("victim.") for n in os.listdir(folder)), 10, every_s=0.02)
        finally:
            meter.close()
        rows = usage.read(meter.store)
        assert [(u.key, u.requests, u.errors, u.prompt_tokens, u.completion_tokens) for u in rows] == \
            [("team", 100, 33, 500, 700)]


def test_a_batch_is_metered_a_line_a_request_under_its_key_and_once_however_often_it_ends(tmp_path):
    from maas.batch.openai_run import error_line, expired_line, meter
    from maas.registry import usage
    from maas.registry.objects import open_store
    from maas.serve.protocols.openai.files import BatchStore

    bs = BatchStore(str(tmp_path / "store"))
    obj = {"id": "batch_1", "created_at": int(time.time()) - 7200}  # metered in the hour it was made
    chat = {"response": {"status_code": 200, "body": {"model": "tiny", "system_fingerprint": "tiny/3",
                                                      "usage": {"prompt_tokens": 4, "completion_tokens": 6}}}}
    emb = {"response": {"status_code": 200, "body": {"model": "minilm/2", "data": [{}, {}],
                                                     "usage": {"prompt_tokens": 9, "total_tokens": 9}}}}
    errors = [error_line("x", 400, "bad"), expired_line("y")]
    for _ in range(2):  # a run launched again ends again: the same writer, the same object
        meter(bs, obj, [chat, chat, emb], errors, "team")  # the key's name from the run's file
    got = [(u.hour, u.key, u.model, u.version, u.requests, u.errors, u.prompt_tokens, u.completion_tokens, u.rows)
           for u in usage.read(open_store(bs.store), None)]
    hour = usage.hour_of(obj["created_at"])
    assert got == [(hour, "team", "-", "-", 2, 2, 0, 0, 0), (hour, "team", "minilm", "2", 1, 0, 9, 0, 2),
                   (hour, "team", "tiny", "3", 2, 0, 8, 12, 2)]


def test_a_limiter_that_does_not_answer_is_a_503_at_once_for_every_request_queued_behind_it():
    import asyncio

    from maas.serve.errors import ProtocolError
    from maas.serve.limits import UNCHECKED, Limits
    from maas.serve.tenancy import Caller

    now, asked = [1_000.0], []

    async def lease(*args):
        asked.append(args)
        raise ProtocolError(503, UNCHECKED, {"retry-after": "5"})  # what limiter_lease raises on its timeout

    limits = Limits(lease, clock=lambda: now[0])
    team = Caller("team", (), "d", (("rpm", 10, "d:rpm"),))

    async def many():
        return await asyncio.gather(*(limits.admit(team) for _ in range(5)), return_exceptions=True)

    answers = asyncio.run(many())
    assert all(isinstance(a, ProtocolError) and a.status == 503 for a in answers) and len(asked) == 1
    now[0] += 6  # asked again once the pause is over
    asyncio.run(many())
    assert len(asked) == 2
