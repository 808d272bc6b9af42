"""The getting-started pages run as a reader runs them: every ``bash`` and ``python`` block of
docs/getting-started/*.md, in order, in a fresh folder holding the repository's ``examples/`` and ``.venv``
(so ``. .venv/bin/activate`` and ``examples/digits.yaml`` work as written), each `maas` command starting its
own embedded Ray. A block must exit 0 (curl is written ``-f`` on these pages, so an HTTP error fails it).

An HTML comment right before a block steers it: ``<!-- snippet: skip REASON -->`` (a GPU, a cluster, or a
step the test command has already run: the reason is reported), ``<!-- snippet: background, ready when
"TEXT" -->`` (a server: started in its own session, the next blocks run once TEXT is in its output, and at the
page's end it gets Ctrl-C and must exit 0)."""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from tests.waiting import wait_until

ROOT = Path(__file__).resolve().parents[2]
PAGES = sorted((ROOT / "docs" / "getting-started").glob("*.md"))
BLOCK = re.compile(r"(?:<!-- snippet: (?P<directive>[^\n]*?) -->\n)?```(?P<lang>\w+)[^\n]*\n(?P<code>.*?)\n```", re.S)
READY = re.compile(r'background, ready when "(?P<text>[^"]+)"')

pytestmark = pytest.mark.slow


def blocks(page: Path) -> list[tuple[str, str, str]]:
    """(lang, code, directive) of every fenced block of ``page``, in order."""
    return [(m["lang"], m["code"], m["directive"] or "") for m in BLOCK.finditer(page.read_text())]


def test_the_snippet_reader_sees_every_block_and_directive(tmp_path):
    page = tmp_path / "probe.md"
    page.write_text('<!-- snippet: skip needs a GPU -->\n```bash\nmaas x\n```\n\n```python\nprint(1)\n```\n'
                    '<!-- snippet: background, ready when "up" -->\n```bash\nmaas serve\n```\n```yaml\na: 1\n```\n')
    assert blocks(page) == [("bash", "maas x", "skip needs a GPU"), ("python", "print(1)", ""),
                            ("bash", "maas serve", 'background, ready when "up"'), ("yaml", "a: 1", "")]


def _env() -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_ADDRESS")}
    env.update(PATH=f"{Path(sys.executable).parent}:{env['PATH']}", HF_HUB_OFFLINE="1", PYTHONUNBUFFERED="1")
    return env


def _command(lang: str, code: str) -> list[str]:
    return ["bash", "-euo", "pipefail", "-c", code] if lang == "bash" else [sys.executable, "-c", code]


def _start(lang: str, code: str, ready: str, folder: Path, log: Path) -> subprocess.Popen:
    out = log.open("w")
    proc = subprocess.Popen(_command(lang, code), cwd=folder, env=_env(), stdout=out, stderr=subprocess.STDOUT,
                            start_new_session=True)
    wait_until(lambda: ready in log.read_text() or proc.poll() is not None, timeout_s=600,
               what=f"{ready!r} from {code!r}")
    assert proc.poll() is None, f"{code!r} ended ({proc.returncode}) before it was ready:\n{log.read_text()[-3000:]}"
    return proc


def _stop(proc: subprocess.Popen, log: Path) -> None:
    proc.send_signal(signal.SIGINT)  # the reader's Ctrl-C
    try:
        code = proc.wait(timeout=120)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        raise AssertionError(f"still running 120 s after Ctrl-C:\n{log.read_text()[-3000:]}") from None
    assert code == 0, f"exit {code} after Ctrl-C:\n{log.read_text()[-3000:]}"


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.stem)
def test_a_getting_started_page_runs_as_written(page, tmp_path):
    shutil.copytree(ROOT / "examples", tmp_path / "examples")
    (tmp_path / ".venv").symlink_to(Path(sys.executable).parent.parent)
    servers: list[tuple[subprocess.Popen, Path]] = []
    ran = 0
    try:
        for i, (lang, code, directive) in enumerate(blocks(page)):
            if lang not in ("bash", "python") or directive.startswith("skip"):
                continue
            if (ready := READY.match(directive)) is not None:
                log = tmp_path / f"server-{i}.log"
                servers.append((_start(lang, code, ready["text"], tmp_path, log), log))
            else:
                done = subprocess.run(_command(lang, code), cwd=tmp_path, env=_env(), capture_output=True,
                                      text=True, timeout=900)
                assert done.returncode == 0, f"block {i} of {page.name} failed ({done.returncode}):\n{code}\n" \
                                             f"--- stdout\n{done.stdout[-3000:]}\n--- stderr\n{done.stderr[-3000:]}"
            ran += 1
    finally:
        for proc, log in reversed(servers):
            _stop(proc, log)
    assert ran, f"{page.name} has no block to run"
