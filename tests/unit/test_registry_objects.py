"""The registry on object storage (a real S3 API: moto's server) and on a local disk: atomic publication,
alias compare-and-swap with history, hostile manifests and names, the fetch cache."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import boto3
import pytest

from maas.exceptions import IntegrityError, RegistryError
from maas.registry import Registry
from tests.conftest import ROOT


@pytest.fixture(params=["local", "s3"])
def store(request, tmp_path):
    """A registry URI on each kind of store."""
    if request.param == "local":
        return str(tmp_path / "store")
    return request.getfixturevalue("s3_bucket") + "/maas"


def _artifact(folder: Path, name: str, data: bytes) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / name).write_bytes(data)
    return folder / name


def _s3(uri: str):
    return boto3.client("s3", endpoint_url=os.environ["AWS_ENDPOINT_URL"]), uri[5:].split("/")[0]


PUBLISHER = r"""
import sys, pathlib
from maas.registry import Registry
store, who, n, folder = sys.argv[1], sys.argv[2], int(sys.argv[3]), pathlib.Path(sys.argv[4])
folder.mkdir(parents=True, exist_ok=True)
for i in range(n):
    a, b = folder / "model.onnx", folder / "model.json"
    a.write_bytes((who * 2000 + str(i)).encode())
    b.write_text('{"who": "%s", "i": %d}' % (who, i))
    mv = Registry(store, cache_dir=str(folder / "cache")).publish(
        "m", {"model.onnx": a, "model.json": b}, runtime="onnxruntime", lineage={"who": who, "i": i})
    print(mv.version, flush=True)
"""


def test_publish_fetch_and_concurrent_publisher_processes(store, tmp_path):
    """4 processes publish 3 versions each at once: 12 distinct numbers, each version's files all its own."""
    procs = [subprocess.Popen([sys.executable, "-c", PUBLISHER, store, who, "3", str(tmp_path / who)],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT)
             for who in ("a", "b", "c", "d")]
    got = []
    for p in procs:
        out, err = p.communicate(timeout=300)
        assert p.returncode == 0, err[-2000:]
        got += [int(x) for x in out.split()]
    assert sorted(got) == list(range(1, 13))
    reg = Registry(store, cache_dir=str(tmp_path / "cache"))
    assert [v.version for v in reg.list_versions("m")] == list(range(1, 13))
    for v in range(1, 13):
        folder, mv = reg.fetch(f"m/{v}")
        who, i = mv.lineage["who"], mv.lineage["i"]
        assert json.loads((folder / "model.json").read_text()) == {"who": who, "i": i}
        assert (folder / "model.onnx").read_bytes() == (who * 2000 + str(i)).encode()
        assert sorted(p.name for p in folder.iterdir() if not p.name.startswith(".")) == ["model.json", "model.onnx"]


KILLED = r"""
import sys, pathlib
from maas.registry import Registry
store, folder = sys.argv[1], pathlib.Path(sys.argv[2])
folder.mkdir(parents=True, exist_ok=True)
files = {}
for i in range(40):
    files[f"part{i:02d}.bin"] = folder / f"part{i:02d}.bin"
    files[f"part{i:02d}.bin"].write_bytes(bytes([i]) * 2_000_000)
print("ready", flush=True)
Registry(store).publish("m", files, runtime="torch")
print("published", flush=True)
"""


def test_a_publisher_killed_mid_upload_leaves_no_version_and_gc_waits_out_the_grace(store, tmp_path):
    reg = Registry(store, cache_dir=str(tmp_path / "cache"))
    base = reg.publish("m", {"a.bin": _artifact(tmp_path / "src", "a.bin", b"x" * 100)}, runtime="torch")
    proc = subprocess.Popen([sys.executable, "-c", KILLED, store, str(tmp_path / "big")], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, cwd=ROOT)
    assert proc.stdout.readline().strip() == "ready"
    deadline = time.time() + 120
    while time.time() < deadline:  # kill -9 once a few of its 40 uploads have landed
        uploads = [i for i in reg.store.list("models/m/objects") if "part" in i.key]
        if len(uploads) >= 3:
            break
        time.sleep(0.05)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(timeout=30)
    assert 3 <= len([i for i in reg.store.list("models/m/objects") if "part" in i.key]) < 40
    assert [v.version for v in reg.list_versions("m")] == [base.version]  # nothing visible
    assert reg.resolve("m").version == base.version
    assert reg.gc() == 0  # younger than the grace period: could be a publish in progress
    assert reg.gc(grace_s=0) == 0  # its lease has not expired yet
    assert reg.gc(grace_s=0, lease_s=0) == 1  # the killed one's debris; the committed version's objects stay
    assert not [i for i in reg.store.list("models/m/objects") if "part" in i.key]
    folder, _ = reg.fetch("m/1")
    assert (folder / "a.bin").read_bytes() == b"x" * 100
    assert reg.publish("m", {"a.bin": tmp_path / "src" / "a.bin"}, runtime="torch").version == 2


def test_a_failed_publish_removes_its_own_uploads(store, tmp_path):
    reg = Registry(store)
    a = _artifact(tmp_path / "src", "a.bin", b"1" * 10)
    with pytest.raises(RegistryError, match="stopped before committing"):
        reg.publish("m", {"a.bin": a, "b.bin": a}, runtime="torch", _stop_after_files=1)
    assert len(reg.store.list("models/m/objects")) == 1  # a killed publisher's debris, for gc
    with pytest.raises(RegistryError, match="unknown task"):
        reg.publish("m", {"a.bin": a}, runtime="torch", task="regress")
    import maas.registry.objects as objects

    real = objects.Store.upload if not reg.store.local else objects.LocalStore.upload
    calls = []

    def failing(self, src, key):
        calls.append(key)
        if len(calls) == 2:
            raise OSError("disk full")
        return real(self, src, key)

    cls = type(reg.store)
    cls.upload = failing
    try:
        with pytest.raises(OSError, match="disk full"):
            reg.publish("m", {"a.bin": a, "b.bin": a}, runtime="torch")
    finally:
        cls.upload = real
    assert len(reg.store.list("models/m/objects")) == 1  # the failed one cleaned up after itself
    assert reg.list_versions("m") == []


def test_alias_moves_are_compare_and_swap_with_history(store, tmp_path):
    reg = Registry(store)
    a = _artifact(tmp_path / "src", "a.bin", b"1")
    for _ in range(6):
        reg.publish("m", {"a.bin": a}, runtime="torch")
    reg.set_alias("m", "production", 1, expected=None, by="run:first")
    # a slower, older run that read 'nothing' at its start cannot demote what a newer run promoted
    with pytest.raises(RegistryError, match=r"points at 1, not nothing.*--expect 1"):
        reg.set_alias("m", "production", 2, expected=None, by="run:slow")
    outcomes = []

    def mover(v):
        try:
            reg.set_alias("m", "production", v, expected=1, by=f"mover-{v}")
            outcomes.append(v)
        except RegistryError as exc:
            outcomes.append(str(exc))

    threads = [threading.Thread(target=mover, args=(v,)) for v in (2, 3, 4, 5)]
    [t.start() for t in threads]
    [t.join() for t in threads]
    winners = [o for o in outcomes if isinstance(o, int)]
    assert len(winners) == 1, outcomes
    assert all("not 1" in o or "moved by someone else" in o for o in outcomes if isinstance(o, str))
    assert reg.resolve("m@production").version == winners[0]
    reg.delete_alias("m", "production", expected=winners[0], by="cli:test")
    history = reg.alias_history("m")
    assert [(h["previous"], h["version"], h["by"]) for h in history] == [
        (None, 1, "run:first"), (1, winners[0], f"mover-{winners[0]}"), (winners[0], None, "cli:test")]
    assert "production" not in reg.aliases("m")
    reg.set_alias("m", "production", 6)  # unchecked: from whatever it is now (nothing)
    assert reg.resolve("m@production").version == 6 and reg.alias_history("m", "production")[-1]["previous"] is None


def test_a_deleted_version_on_either_store_is_a_tombstone_that_gc_honours(store, tmp_path):
    """The same deletion on S3 (create-only tombstone by If-None-Match, taken back by a single-object delete)
    and on a disk: the version is gone from reads, its number stays taken, gc removes its upload only."""
    reg = Registry(store, cache_dir=str(tmp_path / "cache"))
    for i in range(2):
        reg.publish("m", {"model.onnx": _artifact(tmp_path / f"v{i}", "model.onnx", b"w" * (100 + i))},
                    runtime="onnxruntime")
    tombstone = "models/m/versions/2/deleted.json"
    reg.delete_version("m", 2, by="test")
    assert reg.store.read_bytes(tombstone) is not None and [v.version for v in reg.list_versions("m")] == [1]
    reg.store.delete_key(tombstone)  # what a deletion that lost a race to an alias move does
    reg.store.delete_key(tombstone)  # and again: nothing there is no error
    assert [v.version for v in reg.list_versions("m")] == [1, 2] and reg.fetch("m/2")[1].version == 2
    reg.delete_version("m", 2, by="test")
    assert reg.gc(grace_s=0, lease_s=0) == 1 and reg.fetch("m/1")[1].version == 1
    v3 = reg.publish("m", {"model.onnx": _artifact(tmp_path / "v3", "model.onnx", b"x")}, runtime="onnxruntime")
    assert v3.version == 3


@pytest.mark.parametrize("bad", ["../versions/2/manifest", "m\n", "M", "a/b", "", ".hidden", "x" * 64])
def test_every_public_method_refuses_path_climbing_or_malformed_names(tmp_path, bad):
    reg = Registry(str(tmp_path / "store"))
    a = _artifact(tmp_path / "src", "a.bin", b"1")
    reg.publish("m", {"a.bin": a}, runtime="torch")
    reg.set_alias("m", "production", 1)
    calls = [lambda: reg.delete_alias("m", bad), lambda: reg.set_alias("m", bad, 1), lambda: reg.aliases(bad),
             lambda: reg.get_version(bad, 1), lambda: reg.list_versions(bad), lambda: reg.alias_history("m", bad),
             lambda: reg.publish(bad, {"a.bin": a}, runtime="torch"), lambda: reg.resolve(f"m@{bad}")]
    if bad in ("../versions/2/manifest", "m\n", "a/b", "", ".hidden"):  # not a plain file name either
        calls.append(lambda: reg.publish("m", {bad: a}, runtime="torch"))
    for call in calls:
        with pytest.raises(RegistryError):
            call()
    assert reg.get_version("m", 1).files and reg.aliases("m") == {"production": 1}  # nothing was touched


def test_hostile_manifests_planted_in_the_bucket_are_refused_before_any_write(s3_bucket, tmp_path):
    store = s3_bucket + "/maas"
    cache = tmp_path / "cache"
    reg = Registry(store, cache_dir=str(cache))
    a = _artifact(tmp_path / "src", "model.json", b"{}")
    good = reg.publish("m", {"model.json": a}, runtime="torch")
    s3, bucket = _s3(s3_bucket)
    manifest = json.loads(s3.get_object(Bucket=bucket, Key="maas/models/m/versions/1/manifest.json")["Body"].read())
    sha = manifest["files"]["model.json"]["sha256"]
    hostile = {
        2: {**manifest, "version": 2, "files": {"../../../../escape.txt": {"sha256": sha, "size": 2}}},
        3: {**manifest, "version": 3, "name": "other"},  # claims to be another model
        4: {**manifest, "version": 4, "objects": "objects/../../../etc"},
        # a file the store does not list
        5: {**manifest, "version": 5, "files": {"tokenizer.json": {"sha256": "0" * 64, "size": 2}}},
        6: "{not json",
        7: "",
    }
    for v, body in hostile.items():
        s3.put_object(Bucket=bucket, Key=f"maas/models/m/versions/{v}/manifest.json",
                      Body=(body if isinstance(body, str) else json.dumps(body)).encode())
    expect = {2: "not a plain file name", 3: "claims to be other/3", 4: "objects", 5: "cannot be read",
              6: "damaged or invalid manifest", 7: "damaged or invalid manifest"}
    for v, message in expect.items():
        with pytest.raises(RegistryError, match=message):
            reg.fetch(f"m/{v}")
    assert not (tmp_path / "escape.txt").exists() and not list(tmp_path.rglob("escape.txt"))
    leftovers = [p for p in cache.rglob("*") if p.is_dir() and p.name.startswith(".")]
    assert not leftovers, leftovers  # failed downloads are cleaned up
    # a tampered object: the cache never keeps it, and the good version still loads
    s3.put_object(Bucket=bucket, Key=f"maas/models/m/{good.objects}/model.json", Body=b"[]")
    with pytest.raises(IntegrityError, match="sha256"):
        reg.fetch("m/1")
    s3.put_object(Bucket=bucket, Key=f"maas/models/m/{good.objects}/model.json", Body=b"{}")
    folder, _ = reg.fetch("m/1")
    assert (folder / "model.json").read_bytes() == b"{}"


def test_damaged_local_manifest_and_alias_record_name_the_file_and_the_fix(tmp_path):
    reg = Registry(str(tmp_path / "store"))
    a = _artifact(tmp_path / "src", "a.bin", b"1")
    reg.publish("m", {"a.bin": a}, runtime="torch")
    reg.set_alias("m", "production", 1)
    manifest = tmp_path / "store" / "models" / "m" / "versions" / "1" / "manifest.json"
    infinite = json.loads(manifest.read_text())
    manifest.write_text(json.dumps({**infinite, "created_at": float("inf")}))  # "Infinity": GET /v1/models died
    with pytest.raises(RegistryError, match=r"versions/1/manifest.json: damaged or invalid manifest"):
        reg.resolve("m/1")
    manifest.write_bytes(b"")  # what a crash before fsync used to leave
    with pytest.raises(RegistryError, match=r"versions/1/manifest.json: damaged or invalid manifest.*Publish"):
        reg.resolve("m/1")
    record = next((tmp_path / "store" / "models" / "m" / "aliases" / "production").iterdir())
    record.write_text("{")
    with pytest.raises(RegistryError, match=r"production/0000000001.json: damaged alias record.*maas models alias"):
        reg.aliases("m")
    # a planted file beside a local version's artifacts is never loaded unchecked
    reg2 = Registry(str(tmp_path / "store2"))
    mv = reg2.publish("m", {"a.bin": a}, runtime="torch")
    (tmp_path / "store2" / "models" / "m" / mv.objects / "tokenizer.json").write_text("{}")
    with pytest.raises(IntegrityError, match="does not list.*tokenizer.json"):
        reg2.fetch("m/1")


def test_the_fetch_cache_downloads_once_under_concurrency_and_reuses_verified_copies(s3_bucket, tmp_path):
    store = s3_bucket + "/maas"
    reg = Registry(store, cache_dir=str(tmp_path / "cache"))
    big = _artifact(tmp_path / "src", "w.bin", os.urandom(3_000_000))
    reg.publish("m", {"w.bin": big}, runtime="torch")
    downloads = []
    real = type(reg.store).download

    def counting(self, key, dest):
        downloads.append(key)
        return real(self, key, dest)

    type(reg.store).download = counting
    try:
        results = []
        threads = [threading.Thread(target=lambda: results.append(Registry(store, cache_dir=str(tmp_path / "cache"))
                                                                  .fetch("m/1")[0])) for _ in range(4)]
        [t.start() for t in threads]
        [t.join() for t in threads]
        assert len(set(results)) == 1 and len(downloads) == 1  # one download, three waited and reused it
        reg.fetch("m/1")
        assert len(downloads) == 1
    finally:
        type(reg.store).download = real
    assert (results[0] / "w.bin").read_bytes() == big.read_bytes()


def test_the_fetch_cache_is_private_and_a_shared_one_is_verified_again(s3_bucket, tmp_path):
    """Copies are verified when written; the cache folder is made 0700 so nobody else writes beside them. A
    cache others can write to (another owner, or group/world-writable) is checked whole again on each fetch:
    a same-size file swapped in there is caught and fetched again, never served."""
    store = s3_bucket + "/maas"
    reg = Registry(store, cache_dir=str(tmp_path / "cache"))
    data = os.urandom(100_000)
    reg.publish("m", {"w.bin": _artifact(tmp_path / "src", "w.bin", data)}, runtime="torch")
    folder, _ = reg.fetch("m/1")
    assert os.stat(reg.cache.root).st_mode & 0o777 == 0o700 and reg.cache.private()
    shared = Registry(store, cache_dir=str(tmp_path / "cache"))
    os.chmod(shared.cache.root, 0o777)  # as a cache shared between users would be
    (folder / "w.bin").write_bytes(b"\0" * len(data))  # same size, other bytes
    folder2, _ = shared.fetch("m/1")
    assert not shared.cache.private() and (folder2 / "w.bin").read_bytes() == data


def test_a_store_that_ignores_conditional_writes_is_refused_before_anything_is_committed(s3_bucket, tmp_path):
    """An S3-compatible store that drops If-None-Match (here: the header removed on its way, as such a store
    ignores it) would make create-only commits last-writer-wins: maas probes once and refuses to commit."""
    reg = Registry(s3_bucket + "/maas")

    def drop_condition(request, **_):
        request.headers.pop("If-None-Match", None)

    reg.store.client().meta.events.register("before-send.s3.PutObject", drop_condition)
    artifact = _artifact(tmp_path / "src", "a.bin", b"1")
    with pytest.raises(RegistryError, match="ignores conditional writes"):
        reg.publish("m", {"a.bin": artifact}, runtime="torch")
    assert Registry(s3_bucket + "/maas").list_versions("m") == []  # nothing committed, uploads removed
    assert not Registry(s3_bucket + "/maas").store.list("models/m/objects")


def test_a_store_written_before_objects_and_alias_logs_still_reads(tmp_path):
    """Layout of earlier releases: artifacts beside the manifest, aliases as one JSON file each."""
    from maas.registry.cache import sha256_file

    root = tmp_path / "store" / "models" / "old"
    (root / "versions" / "1").mkdir(parents=True)
    art = _artifact(root / "versions" / "1", "model.onnx", b"\x08\x01" * 10)
    (root / "versions" / "1" / "manifest.json").write_text(json.dumps({
        "name": "old", "version": 1, "created_at": 0, "runtime": "onnxruntime",
        "files": {"model.onnx": {"sha256": sha256_file(art), "size": 20}}, "signature": {"task": "embedding"}}))
    (root / "aliases").mkdir()
    (root / "aliases" / "production.json").write_text('{"version": 1}')
    reg = Registry(str(tmp_path / "store"))
    mv = reg.resolve("old@production")
    assert mv.version == 1 and mv.task == "embed" and mv.objects is None
    folder, _ = reg.fetch("old@production")
    assert (folder / "model.onnx").read_bytes() == b"\x08\x01" * 10
    reg.set_alias("old", "production", 1, expected=1, by="cli:test")
    assert [h["seq"] for h in reg.alias_history("old")] == [0, 1]


def test_serving_backs_off_a_version_that_fails_to_load(tmp_path):
    """A broken alias target is not fetched again on every poll: retries wait 2 s, then twice as long."""
    from maas.serve.hosting import ModelHost

    reg = Registry(str(tmp_path / "store"))
    mv = reg.publish("m", {"model.onnx": _artifact(tmp_path / "src", "model.onnx", b"not onnx")},
                     runtime="onnxruntime")
    reg.set_alias("m", "production", mv.version)
    host = ModelHost(str(tmp_path / "store"), [{"model": "m", "alias": "production"}])
    fetches = []
    real = host.registry.fetch_version
    host.registry.fetch_version = lambda mv: fetches.append(mv.ref) or real(mv)
    for _ in range(5):
        host.refresh()
    assert fetches == ["m/1"] and "next try in" in host.not_ready()["m"]
    key = ("m", 1)
    retry_at, delay, message = host._failures[key]
    host._failures[key] = (0.0, delay, message)  # the wait is over
    host.refresh()
    assert fetches == ["m/1", "m/1"] and host._failures[key][1] == 2 * delay


def test_reading_aliases_costs_one_record_per_alias_however_long_the_history(tmp_path):
    """The alias watcher of every replica reads aliases every poll: not the whole history each time."""
    import maas.registry.aliases as aliases

    reg = Registry(str(tmp_path / "store"))
    a = _artifact(tmp_path / "src", "a.bin", b"1")
    for _ in range(2):
        reg.publish("m", {"a.bin": a}, runtime="torch")
    for i in range(30):
        reg.set_alias("m", "production", 1 + i % 2)
    reg.set_alias("m", "candidate", 1)
    reads = []
    real = aliases._load
    aliases._load = lambda store, key: reads.append(key) or real(store, key)
    try:
        assert reg.aliases("m") == {"candidate": 1, "production": 2}
        assert len(reads) == 2
        reads.clear()
        assert [v.aliases for v in reg.list_versions("m")] == [["candidate"], ["production"]]
        assert len(reads) == 2  # once for the listing, not once per version
    finally:
        aliases._load = real
    assert len(reg.alias_history("m", "production")) == 30
