"""The LLM quickstart notebook (examples/llm_quickstart.ipynb), executed as a reader runs it: its kernel starts
an embedded local Ray (no RAY_ADDRESS), imports a random tiny Llama, fine-tunes it with LoRA as a job, scores both
versions on a multiple-choice task with lm-evaluation-harness in an eval job, serves the adapter on a real vLLM
engine, chats with it through the `openai` client and reads the per-version token metrics with
``Client.metrics``. The stored notebook carries no outputs."""

from __future__ import annotations

import json
import re

import pytest

from tests.conftest import ROOT, free_port
from tests.llm_helpers import shared_memory_released

pytestmark = pytest.mark.slow


def test_the_stored_notebook_has_no_outputs():
    nb = json.loads((ROOT / "examples" / "llm_quickstart.ipynb").read_text())
    assert all(not c.get("outputs") for c in nb["cells"] if c["cell_type"] == "code")


def test_llm_quickstart_notebook_fine_tunes_serves_chats_and_reads_token_metrics(tmp_path, monkeypatch):
    import nbclient
    import nbformat

    from maas.serve.runtimes.vllm_config import shm_entries

    shm_before = shm_entries()
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    for key, value in {"MAAS_STORE": str(tmp_path / "store"), "MAAS_DEMO_PORT": str(free_port()),
                       "MAAS_DEMO_EPOCHS": "15", "HF_HUB_OFFLINE": "1"}.items():
        monkeypatch.setenv(key, value)
    nb = nbformat.read(ROOT / "examples" / "llm_quickstart.ipynb", as_version=4)
    try:
        nbclient.NotebookClient(nb, timeout=900, kernel_name="python3",
                                resources={"metadata": {"path": str(tmp_path)}}).execute()
    finally:
        nbformat.write(nb, tmp_path / "executed.ipynb")  # what each cell printed, for a failure's reader
    # a cell's stream outputs read as Jupyter shows them: one text (the kernel splits a print's writes into
    # messages as its flush timer falls: "w100 w101 ->" and the rest came as two outputs once)
    outputs = "\n".join("".join(o.get("text", "") if o.get("output_type") == "stream" else
                                 "\n" + json.dumps(o.get("data", {}).get("text/plain", "")) + "\n"
                                 for o in c.get("outputs", []))
                         for c in nb.cells if c.cell_type == "code")
    assert "llama/1: task generate, runtime vllm" in outputs
    losses = re.search(r"loss ([\d.]+) -> ([\d.]+) over 15 epochs; status: SUCCEEDED", outputs)
    first, last = float(losses[1]), float(losses[2])
    assert last < first - 0.5  # it learnt to count
    assert (tmp_path / "lora_loss.png").stat().st_size > 10_000
    assert "counter/1" in outputs and "llama/1" in outputs and "lora" in outputs  # the versions compared
    assert "served: ['counter']" in outputs
    # a chat run's held-out lines are its validation conversations' assistant turns (it read "accuracy 0.000 on 0
    # lines" once, then nothing): the adapter is scored on them
    held = re.search(r"\[evaluate\] next-word accuracy ([\d.]+) on (\d+) held-out lines, ([\d.]+) bits/byte", outputs)
    assert held and int(held[2]) > 10 and float(held[3]) > 0, outputs[-3000:]
    assert " on 0 held-out lines" not in outputs
    # lm-eval's log-likelihood scores, per version, from the eval job: the adapter learnt to count, the base
    # is a random model (a chance of 1 in 4 per question)
    accuracy = dict(re.findall(r"(\w+/1): next_word accuracy ([\d.]+) over 20 questions", outputs))
    assert set(accuracy) == {"llama/1", "counter/1"}, outputs[-3000:]
    assert float(accuracy["counter/1"]) >= 0.6 and float(accuracy["counter/1"]) > float(accuracy["llama/1"])
    assert re.search(r"usage: \d+ prompt \+ \d+ completion tokens", outputs)
    answer = re.search(r"w100 w101 -> (.*) \(answered by counter/1\)", outputs)[1].split()
    numbers = [int(w[1:]) for w in answer if re.fullmatch(r"w\d+", w)]
    # the adapter counts on, through the engine (a 0.4M-parameter model: not every step is exactly +1)
    assert numbers and 102 <= numbers[0] <= 105, answer
    assert sum(b - a == 1 for a, b in zip(numbers, numbers[1:])) >= (len(numbers) - 1) / 2, answer
    completions = re.findall(r"counter\s+1\s+completion\s+([\d.]+)", outputs)
    assert completions and float(completions[0]) > 0  # the token counter of version 1
    # the kernel's Ray and its engine are gone with the kernel: no vLLM shared memory of theirs is left
    shared_memory_released(shm_before)
