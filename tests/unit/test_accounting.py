"""Per-request accounting (maas.serve.accounting): access-log lines land in the replica's Serve log file in
Serve's own layout, in batches, off the request path; rotation and a missing file are handled."""

import asyncio
import json
import logging
import os
import re

import pytest

from maas.serve.accounting import Accounting, ReplicaLogSink

TAGS = {"model": "digits", "version": "3"}


@pytest.fixture
def serve_log(tmp_path):
    """The ``ray.serve`` logger configured the way Serve configures a replica's (file behind a buffer)."""
    from ray.serve._private.logging_utils import configure_component_logger
    from ray.serve.schema import LoggingConfig

    log = logging.getLogger("ray.serve")
    saved = (list(log.handlers), log.propagate, log.level)

    def configure(encoding="TEXT"):
        configure_component_logger(component_name="app_digits", component_id="r1",
                                   logging_config=LoggingConfig(logs_dir=str(tmp_path), encoding=encoding),
                                   max_bytes=1 << 20, backup_count=1, buffer_size=1)
        (path,) = tmp_path.glob("*.log")
        return path

    yield configure
    for handler in log.handlers:
        handler.close()
    log.handlers[:], log.propagate = saved[0], saved[1]
    log.setLevel(saved[2])


def access_lines(path):
    return [line for line in path.read_text().splitlines() if "maas_access" in line]


def test_lines_share_serves_layout_and_are_written_only_on_flush(serve_log):
    path = serve_log()
    logging.getLogger("ray.serve").info("a line of Serve's own")
    acc = Accounting(flush_s=60)

    async def requests():
        acc.request(TAGS, 200, "rid-1", "/v2/models/digits/infer", 3, 1.25)
        acc.request({"model": "-", "version": "-"}, 404, "rid-2", "/v2/models/nope/infer", 0, 0.1)
        acc.batch(TAGS, 3)
        assert access_lines(path) == []  # nothing written on the request path
        acc.flush()

    asyncio.run(requests())
    own = path.read_text().splitlines()[0]
    lines = access_lines(path)
    assert len(lines) == 2
    prefix = re.compile(r"^INFO \d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} app_digits r1 ")
    assert prefix.match(own) and all(prefix.match(line) for line in lines)
    first = json.loads(lines[0][lines[0].index("{"):])
    assert first == {"maas_access": True, "request_id": "rid-1", "model": "digits", "version": 3,
                     "path": "/v2/models/digits/infer", "status": 200, "rows": 3, "latency_ms": 1.25}
    assert json.loads(lines[1][lines[1].index("{"):])["version"] is None


def test_a_timer_flushes_within_flush_s_and_a_full_buffer_at_once(serve_log):
    path = serve_log()
    acc = Accounting(flush_s=0.05, max_pending=4)

    async def go():
        acc.request(TAGS, 200, "t-1", "/p", 1, 1.0)
        await asyncio.sleep(0.2)
        assert len(access_lines(path)) == 1
        for i in range(4):
            acc.request(TAGS, 200, f"t-{i + 2}", "/p", 1, 1.0)
        assert len(access_lines(path)) == 5  # max_pending reached: flushed without waiting

    asyncio.run(go())
    acc.request(TAGS, 200, "no-loop", "/p", 1, 1.0)  # outside an event loop: written at once
    assert "no-loop" in access_lines(path)[-1]


def test_json_logs_get_json_lines(serve_log):
    path = serve_log("JSON")
    acc = Accounting()
    acc.request(TAGS, 400, "j-1", "/p", 0, 2.0)
    entry = json.loads(access_lines(path)[0])
    assert entry["maas_access"] is True and entry["status"] == 400 and entry["levelname"] == "INFO"


def test_a_rotated_log_is_reopened(serve_log):
    path = serve_log()
    acc = Accounting()
    acc.request(TAGS, 200, "before", "/p", 1, 1.0)
    os.rename(path, str(path) + ".1")
    acc.request(TAGS, 200, "after", "/p", 1, 1.0)
    assert [json.loads(x[x.index("{"):])["request_id"] for x in access_lines(path)] == ["after"]
    acc.close()


def test_without_a_serve_log_file_lines_go_to_the_logger(caplog):
    sink = ReplicaLogSink()
    assert sink.path is None or os.path.exists(sink.path)
    sink.path = None
    log = logging.getLogger("ray.serve")
    propagate = log.propagate
    with caplog.at_level(logging.INFO, logger="ray.serve"):
        log.propagate = True
        try:
            sink.write([(0.0, {"maas_access": True, "request_id": "x"})])
        finally:
            log.propagate = propagate
    assert any('"request_id":"x"' in r.getMessage() for r in caplog.records)
