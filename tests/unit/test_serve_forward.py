"""Where a replica runs a model's forward (ModelServer.forward, no Ray: the deployment's class on a local
registry): quick forwards inline on the event loop, slow ones in the replica's model thread, so the loop
keeps reading requests during a forward, and those requests fill the next batch."""

from __future__ import annotations

import asyncio
import json
import threading
import time

import pytest
import torch
from starlette.requests import Request

from maas.models import build_model
from maas.models.artifacts import save_torch_model
from maas.models.mlp import classifier_signature
from maas.registry import Registry
from maas.serve.app import OFFLOAD_MS, ModelServer
from tests.asgi import asgi_request

CONFIG = {"arch": "mlp", "input_dim": 4, "num_classes": 2, "hidden_sizes": [8], "dropout": 0.0}


@pytest.fixture
def server(tmp_path):
    reg = Registry(str(tmp_path / "store"))
    torch.manual_seed(0)
    reg.publish("m", save_torch_model(build_model(CONFIG), CONFIG, tmp_path / "v1"), runtime="torch",
                task="classify", signature=classifier_signature(4, [0, 1]))
    reg.set_alias("m", "production", 1)
    srv = ModelServer.func_or_class(reg.location, ["m@production"], max_batch_size=32, alias_poll_s=60)
    deadline = time.time() + 30
    while srv.host.models["m"].primary is None and time.time() < deadline:
        time.sleep(0.05)
    yield srv
    srv.__del__()


def request(rows: int) -> Request:
    body = json.dumps({"inputs": [{"name": "input", "datatype": "FP32", "shape": [rows, 4],
                                   "data": [0.5] * (4 * rows)}]}).encode()
    return asgi_request("POST", "/v2/models/m/infer", body)


def slow(loaded, seconds: float):
    """The version's model, made slow (a sleeping forward frees the GIL as ONNX Runtime and torch do);
    records each call's thread and rows."""
    real, calls = loaded.predictor, []

    def predictor(x):
        calls.append((threading.current_thread().name, len(x)))
        time.sleep(seconds)
        return real(x)

    loaded.predictor = predictor
    return calls


def test_quick_forwards_stay_on_the_loop_and_slow_ones_move_to_the_model_thread(server):
    loaded = server.host.models["m"].primary
    for _ in range(5):
        assert asyncio.run(server(request(1))).status_code == 200
    assert loaded.forward_ms < OFFLOAD_MS
    calls = slow(loaded, 0.02)

    async def go():
        first = await server(request(1))  # measured inline: now known to be slow
        ticks = 0

        async def count():
            nonlocal ticks
            while True:
                await asyncio.sleep(0.001)
                ticks += 1

        counter = asyncio.ensure_future(count())
        second = await server(request(1))
        counter.cancel()
        return first, second, ticks

    first, second, ticks = asyncio.run(go())
    assert first.status_code == second.status_code == 200
    assert calls[0][0] == threading.current_thread().name and calls[1][0].startswith("maas-forward")
    assert ticks >= 5  # the loop kept running during the 20 ms forward
    assert json.loads(second.body)["outputs"][0]["data"] == json.loads(first.body)["outputs"][0]["data"]


def test_requests_that_arrive_during_a_slow_forward_share_the_next_one(server):
    loaded = server.host.models["m"].primary
    calls = slow(loaded, 0.03)
    loaded.forward_ms = 30.0  # known to be slow (as the test above measures)

    async def go():
        return await asyncio.gather(*(server(request(1)) for _ in range(12)))

    answers = asyncio.run(go())
    assert all(a.status_code == 200 for a in answers)
    rows = [n for _, n in calls]
    assert sum(rows) == 12 and len(rows) <= 3 and max(rows) >= 10, rows  # the first alone, the rest fused
    assert all(name.startswith("maas-forward") for name, _ in calls)


def test_forwards_quicker_than_a_batch_costs_are_never_fused(server):
    """With other requests mid-flight, a version whose forwards take ~0.02 ms (the digits int8 model) runs
    straight: fusing it would cost more than the forwards it saves; a slower one goes through the batcher."""
    import numpy as np

    loaded = server.host.models["m"].primary
    submitted = []
    real_submit = server.batcher.submit

    async def counting(item):
        submitted.append(item)
        return await real_submit(item)

    server.batcher.submit = counting
    x = np.full((1, 4), 0.5, dtype=np.float32)
    server.active = 3  # three requests in this replica now: company to fuse with
    loaded.forward_ms = 0.02
    quick = asyncio.run(server.run(loaded, x))
    assert submitted == []
    loaded.forward_ms = 0.5
    fused = asyncio.run(server.run(loaded, x))
    assert len(submitted) == 1
    np.testing.assert_allclose(fused, quick)


def test_rows_per_request_are_capped_and_large_answers_are_rendered_off_the_loop(server):
    """deploy.max_rows_per_request: more rows are a 413 naming it; an answer of many rows is built in a worker
    thread (the loop keeps serving meanwhile)."""
    from maas.serve.errors import ProtocolError
    from maas.serve.protocols.oip.codec import MAX_TEXT_CHARS, parse_embeddings_request
    from maas.serve.protocols.oip.handlers import OFF_LOOP_ROWS

    server.max_rows = OFF_LOOP_ROWS + 10
    big = asyncio.run(server(request(OFF_LOOP_ROWS + 5)))
    assert big.status_code == 200 and len(json.loads(big.body)["outputs"][0]["data"]) == OFF_LOOP_ROWS + 5
    refused = asyncio.run(server(request(OFF_LOOP_ROWS + 11)))
    assert refused.status_code == 413 and "deploy.max_rows_per_request allows" in json.loads(refused.body)["error"]
    with pytest.raises(ProtocolError, match=r"'input'\[1\] holds 100001 characters") as err:
        parse_embeddings_request(json.dumps({"input": ["ok", "x" * (MAX_TEXT_CHARS + 1)]}).encode())
    assert err.value.status == 413
