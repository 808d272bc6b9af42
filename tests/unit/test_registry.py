import threading

import pytest

from maas.exceptions import IntegrityError, RegistryError
from maas.registry import Registry, parse_ref


@pytest.fixture
def artifact(tmp_path):
    f = tmp_path / "src" / "model.onnx"
    f.parent.mkdir()
    f.write_bytes(b"\x08\x01" * 500)
    return f


@pytest.fixture
def reg(tmp_path):
    return Registry(str(tmp_path / "store"))


def test_publish_numbers_versions_and_records_checksums_and_lineage(reg, artifact):
    v1 = reg.publish("digits", {"model.onnx": artifact}, runtime="onnxruntime", metrics={"test_accuracy": 0.9},
                     lineage={"data_fingerprint": "abc", "parent": None})
    v2 = reg.publish("digits", {"model.onnx": artifact}, runtime="onnxruntime", lineage={"parent": v1.ref})
    assert (v1.version, v2.version) == (1, 2)
    assert [v.version for v in reg.list_versions("digits")] == [1, 2]
    assert reg.list_models() == ["digits"]
    got = reg.get_version("digits", 1)
    assert got.metrics == {"test_accuracy": 0.9}
    assert got.lineage["data_fingerprint"] == "abc"
    assert got.files["model.onnx"]["size"] == 1000 and len(got.files["model.onnx"]["sha256"]) == 64
    assert reg.resolve("digits").version == 2  # bare name = latest


def test_aliases_move_and_resolve(reg, artifact):
    for _ in range(2):
        reg.publish("m", {"model.onnx": artifact}, runtime="onnxruntime")
    reg.set_alias("m", "production", 1)
    assert reg.resolve("m@production").version == 1
    reg.set_alias("m", "production", 2)
    assert reg.resolve("m@production").version == 2
    assert reg.get_version("m", 2).aliases == ["production"]
    with pytest.raises(RegistryError, match="no alias 'staging'"):
        reg.resolve("m@staging")
    with pytest.raises(RegistryError, match="no version 9"):
        reg.set_alias("m", "production", 9)


def test_rejected_version_never_gets_an_alias(reg, artifact):
    reg.publish("m", {"model.onnx": artifact}, runtime="onnxruntime", status="rejected", description="too lossy")
    with pytest.raises(RegistryError, match="rejected.*too lossy"):
        reg.set_alias("m", "production", 1)


def test_crash_mid_publish_leaves_no_visible_version(reg, artifact, tmp_path):
    second = tmp_path / "src" / "model.json"
    second.write_text("{}")
    reg.publish("m", {"model.onnx": artifact}, runtime="onnxruntime")
    with pytest.raises(RegistryError, match="stopped before committing"):  # as a killed publisher stops
        reg.publish("m", {"model.onnx": artifact, "model.json": second}, runtime="torch", _stop_after_files=1)
    assert [v.version for v in reg.list_versions("m")] == [1]
    assert reg.resolve("m").version == 1
    assert reg.gc() == 0  # within the grace period it could be a publication in progress
    assert reg.gc(grace_s=0) == 0  # and the killed publisher's lease is fresh still
    assert reg.gc(grace_s=0, lease_s=0) == 1  # once it expired
    assert not reg.store.list("models/m/.leases")
    assert reg.publish("m", {"model.onnx": artifact}, runtime="onnxruntime").version == 2


def test_gc_during_a_publication_leaves_it_whole_and_a_publication_missing_files_commits_nothing(reg, artifact):
    """gc, even with no grace, keeps the uploads of a publication in progress (its lease), so the version
    commits whole; uploads that disappear anyway (a hand on the store) fail the publish before its commit."""
    mv = reg.publish("m", {"model.onnx": artifact}, runtime="onnxruntime",
                     _before_commit=lambda: reg.gc(grace_s=0))
    folder, _ = reg.fetch(mv.ref)  # every file there, every checksum right
    assert (folder / "model.onnx").read_bytes() == artifact.read_bytes()
    assert not reg.store.list("models/m/.leases")  # gone with the publication

    def lose_uploads():
        (upload,) = {i.key.rsplit("/", 1)[0] for i in reg.store.list("models/m/objects")} - {f"models/m/{mv.objects}"}
        reg.store.delete_prefix(upload)

    with pytest.raises(RegistryError, match=r"uploads \['model.onnx'\] of this publication disappeared"):
        reg.publish("m", {"model.onnx": artifact}, runtime="onnxruntime", _before_commit=lose_uploads)
    assert [v.version for v in reg.list_versions("m")] == [1]


def test_tampered_artifact_is_refused(reg, artifact):
    reg.publish("m", {"model.onnx": artifact}, runtime="onnxruntime")
    folder, mv = reg.fetch("m/1")
    assert (folder / "model.onnx").read_bytes() == artifact.read_bytes()
    data = bytearray((folder / "model.onnx").read_bytes())
    data[10] ^= 0xFF  # same size, one flipped byte
    (folder / "model.onnx").write_bytes(bytes(data))
    with pytest.raises(IntegrityError, match="sha256"):
        reg.fetch("m/1")
    (folder / "model.onnx").unlink()
    with pytest.raises(IntegrityError, match="missing"):
        reg.fetch("m/1")


def test_concurrent_publishers_get_distinct_versions(reg, artifact):
    errors = []

    def publish():
        try:
            reg.publish("m", {"model.onnx": artifact}, runtime="onnxruntime")
        except Exception as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=publish) for _ in range(6)]
    [t.start() for t in threads]
    [t.join() for t in threads]
    assert not errors
    assert [v.version for v in reg.list_versions("m")] == [1, 2, 3, 4, 5, 6]


def test_file_uri_store_works(tmp_path, artifact):
    reg = Registry(f"file://{tmp_path}/uri-store")
    reg.publish("m", {"model.onnx": artifact}, runtime="onnxruntime")
    folder, mv = reg.fetch("m/1")
    assert mv.version == 1 and (folder / "model.onnx").is_file()


@pytest.mark.parametrize("ref,expected", [("m@prod", ("m", None, "prod")), ("m/3", ("m", 3, None)),
                                          ("m", ("m", None, None))])
def test_parse_ref(ref, expected):
    assert parse_ref(ref) == expected


@pytest.mark.parametrize("ref", ["", "m/x", "m/0", "Bad@x", "m@", "../etc"])
def test_bad_refs_are_refused(ref):
    with pytest.raises(RegistryError):
        parse_ref(ref)


def test_unknown_model_and_bad_artifacts(reg, artifact, tmp_path):
    with pytest.raises(RegistryError, match="no model named 'ghost'"):
        reg.resolve("ghost@production")
    with pytest.raises(RegistryError, match="file not found"):
        reg.publish("m", {"model.onnx": tmp_path / "missing"}, runtime="onnxruntime")
    with pytest.raises(RegistryError, match="invalid artifact name"):
        reg.publish("m", {"../x": artifact}, runtime="onnxruntime")


def test_the_task_is_recorded_in_the_manifest_and_older_manifests_read_theirs_from_the_signature(reg, artifact):
    import json

    from maas.models import task_from_signature

    assert reg.publish("m", {"model.onnx": artifact}, runtime="onnxruntime").task == "classify"
    mv = reg.publish("e", {"model.onnx": artifact}, runtime="onnxruntime", task="embed")
    manifest = reg.fs.open_input_stream(f"{reg.root}/models/e/versions/1/manifest.json").read()
    assert json.loads(manifest)["task"] == "embed" and reg.get_version("e", 1).task == "embed" == mv.task
    with pytest.raises(RegistryError, match="unknown task 'regress'"):
        reg.publish("m", {"model.onnx": artifact}, runtime="onnxruntime", task="regress")
    # a version published before tasks were recorded: its signature's own word decides
    assert [task_from_signature(s) for s in ({"task": "generation"}, {"task": "embedding"},
                                             {"task": "text-classification"}, {"classes": [0, 1]}, None)] == \
        ["generate", "embed", "classify_text", "classify", "classify"]


def test_a_deleted_version_is_gone_from_reads_keeps_its_number_and_its_files_go_at_gc(reg, artifact):
    for _ in range(3):
        reg.publish("m", {"model.onnx": artifact}, runtime="onnxruntime")
    reg.set_alias("m", "production", 1)
    with pytest.raises(RegistryError, match=r"m/1 is what m@production points at.*--delete"):
        reg.delete_version("m", 1)
    assert reg.delete_version("m", 3, by="me", reason="wrong split").ref == "m/3"
    assert [mv.ref for mv in reg.list_versions("m")] == ["m/1", "m/2"] and reg.resolve("m").ref == "m/2"
    for read in (lambda: reg.resolve("m/3"), lambda: reg.get_version("m", 3), lambda: reg.fetch("m/3"),
                 lambda: reg.set_alias("m", "staging", 3), lambda: reg.delete_version("m", 3)):
        with pytest.raises(RegistryError, match=r"m/3 was deleted on .* by me \(wrong split\); versions: \[1, 2\]"):
            read()
    assert reg.publish("m", {"model.onnx": artifact}, runtime="onnxruntime").version == 4  # 3 stays taken
    assert reg.gc(grace_s=0, lease_s=0) == 1  # the deleted version's upload, and nothing else
    assert [reg.fetch(f"m/{v}")[1].version for v in (1, 2, 4)] == [1, 2, 4]


def test_a_deletion_and_an_alias_move_that_race_never_leave_an_alias_at_a_deleted_version(reg, artifact,
                                                                                          monkeypatch):
    """Two machines, one store: each side writes, then looks for the other's write; the alias loses."""
    from maas.registry import aliases as alias_log
    from maas.registry import deletion

    for _ in range(2):
        reg.publish("m", {"model.onnx": artifact}, runtime="onnxruntime")
    reg.set_alias("m", "production", 1)
    create, raced = reg.store.create, []

    def moved_before_the_tombstone(key, data):  # another machine moves the alias after the deleter looked
        if key.endswith(deletion.DELETED) and not raced:
            raced.append(alias_log.move(reg.store, "m", "production", 2, 1, "other"))
        return create(key, data)

    monkeypatch.setattr(reg.store, "create", moved_before_the_tombstone)
    with pytest.raises(RegistryError, match="m@production was moved to m/2 while it was being deleted"):
        reg.delete_version("m", 2)
    monkeypatch.setattr(reg.store, "create", create)
    assert raced and reg.resolve("m@production").version == 2 and reg.resolve("m/2").version == 2  # not deleted

    real_move = alias_log.move

    def deleted_during_the_move(store, name, alias, version, *args, **kwargs):
        if version == 1:  # another machine deletes m/1 after this move checked it, before it landed
            store.create(f"models/m/versions/1/{deletion.DELETED}", b'{"at": 0, "by": "other"}')
        return real_move(store, name, alias, version, *args, **kwargs)

    monkeypatch.setattr(alias_log, "move", deleted_during_the_move)
    with pytest.raises(RegistryError, match="m/1 was deleted while m@production moved to it; the alias is back at 2"):
        reg.set_alias("m", "production", 1)
    assert reg.aliases("m") == {"production": 2}
    assert reg.alias_history("m", "production")[-1]["reason"].startswith("undone: m/1 was deleted")
