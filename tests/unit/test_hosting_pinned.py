"""Pinned-version loads in a replica's ModelHost (no Ray: torch classifiers from a local registry): one load per
version however many requests ask at once, a cap on loads per minute (429), version segments that are not
plain numbers refused as 404, the warning for an open address without keys, large bodies parsed off the loop."""

from __future__ import annotations

import asyncio
import logging

import pytest
import torch

from maas.models import build_model
from maas.models.artifacts import save_torch_model
from maas.models.mlp import classifier_signature
from maas.registry import Registry
from maas.serve.deploy import warn_if_open
from maas.serve.errors import ProtocolError
from maas.serve.hosting import ModelHost

CONFIG = {"arch": "mlp", "input_dim": 4, "num_classes": 2, "hidden_sizes": [8], "dropout": 0.0}


@pytest.fixture
def host(tmp_path):
    reg = Registry(str(tmp_path / "store"))
    for seed in range(4):  # m/1 .. m/4
        torch.manual_seed(seed)
        files = save_torch_model(build_model(CONFIG), CONFIG, tmp_path / f"v{seed}")
        reg.publish("m", files, runtime="torch", task="classify", signature=classifier_signature(4, [0, 1]))
    reg.set_alias("m", "production", 1)
    h = ModelHost(reg.location, ["m@production"], max_pinned_versions=2, pinned_loads_per_minute=3)
    h.refresh()
    loads = []
    real = h._load

    def counted(name, version):
        loads.append(version)
        return real(name, version)

    h._load = counted
    return h, loads


def test_concurrent_requests_for_one_unloaded_version_share_one_load(host):
    h, loads = host
    served = h.models["m"]

    async def many():
        return await asyncio.gather(*(h.resolve(served, "2") for _ in range(8)))

    got = asyncio.run(many())
    assert loads == [2] and len({id(x) for x in got}) == 1 and got[0].mv.ref == "m/2"
    assert list(served.pinned) == [2]
    assert asyncio.run(h.resolve(served, "2")) is got[0] and loads == [2]  # kept: no second load
    assert asyncio.run(h.resolve(served, "1")).mv.ref == "m/1" and loads == [2]  # the alias's: loaded already


def test_pinned_loads_per_minute_are_capped_and_unknown_versions_spend_nothing(host, tmp_path):
    h, loads = host
    served = h.models["m"]
    asyncio.run(h.resolve(served, "2"))                       # load 1
    for _ in range(3):                                         # no such version: a 404 that starts no load
        with pytest.raises(ProtocolError) as err:
            asyncio.run(h.resolve(served, "99"))
        assert err.value.status == 404 and "no version 99" in err.value.message
    asyncio.run(h.resolve(served, "3"))                       # load 2
    asyncio.run(h.resolve(served, "4"))                       # load 3
    with pytest.raises(ProtocolError) as err:
        asyncio.run(h.resolve(served, "2"))  # the cap (m/2 left the 2-version cache: a new load)
    assert err.value.status == 429 and "3 pinned-version loads in the last minute" in err.value.message
    assert loads == [2, 3, 4]


def test_a_pinned_version_whose_files_load_nowhere_is_a_404_not_a_500(host, tmp_path):
    h, loads = host
    served = h.models["m"]
    reg = h.registry
    bad = tmp_path / "broken" / "model.safetensors"
    bad.parent.mkdir()
    bad.write_bytes(b"not a safetensors file")
    (bad.parent / "model.json").write_text("{}")
    mv = reg.publish("m", {"model.safetensors": bad, "model.json": bad.parent / "model.json"}, runtime="torch",
                     task="classify", signature=classifier_signature(4, [0, 1]))
    with pytest.raises(ProtocolError) as err:
        asyncio.run(h.resolve(served, str(mv.version)))
    assert err.value.status == 404 and f"version '{mv.version}' is not served: it failed to load" in err.value.message
    assert asyncio.run(h.resolve(served, "1")).mv.ref == "m/1"  # the rest still answers


@pytest.mark.parametrize("segment", ["\u00b2", "\u0661", "9" * 5000, "1.0", "-1", "0x1", " 1"])
def test_version_segments_that_are_not_plain_numbers_are_404(host, segment):
    h, loads = host
    with pytest.raises(ProtocolError) as err:
        asyncio.run(h.resolve(h.models["m"], segment))
    assert err.value.status == 404 and "versions are numbers" in err.value.message and loads == []


def test_an_open_address_without_keys_is_warned_about(caplog):
    with caplog.at_level(logging.WARNING, logger="maas"):
        assert not warn_if_open("127.0.0.1", keys=False) and not warn_if_open("::1", keys=False)
        assert not warn_if_open("localhost", keys=False) and not warn_if_open("0.0.0.0", keys=True)
        assert not caplog.records
        assert warn_if_open("0.0.0.0", keys=False) and warn_if_open("my-host.internal", keys=False)
    assert "without API keys" in caplog.records[0].getMessage() and "MAAS_API_KEYS" in caplog.records[0].getMessage()


def test_large_bodies_are_parsed_off_the_event_loop():
    import threading

    from maas.serve.http import OFF_LOOP_BYTES, parse_off_loop

    def where(body, tag):
        return threading.get_ident(), tag

    loop_thread = threading.get_ident()
    small = asyncio.run(parse_off_loop(where, b"x" * 10, "s"))
    large = asyncio.run(parse_off_loop(where, b"x" * (OFF_LOOP_BYTES + 1), "l"))
    assert small == (loop_thread, "s") and large[0] != loop_thread and large[1] == "l"
