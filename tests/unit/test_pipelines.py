"""The pipeline-kind table, the stage guard every entrypoint shares, and the package layering (no Ray here)."""

import ast
import json
import subprocess
import sys
from pathlib import Path

import pytest

from maas.exceptions import JobError
from maas.pipelines import KINDS, STAGES, check_stage, implementation, kind_of
from maas.spec import load_spec

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = {"classifier": "examples/digits.yaml", "encoder": "examples/minilm.yaml", "lm": "examples/lm.yaml",
            "llm": "examples/llm.yaml"}


def test_every_kind_implements_the_protocol_and_its_example_spec_selects_it():
    assert set(KINDS) == set(EXAMPLES)
    for name, kind in KINDS.items():
        module = kind.implementation()
        for attr in ("SPEC", "run", "summary", "try_it", "JOB_STAGES"):
            assert hasattr(module, attr), f"{kind.module} lacks {attr}"
        assert tuple(module.JOB_STAGES) == kind.stages and set(kind.stages) <= set(STAGES)
        assert kind.stages[0] == "pipeline" and "deploy" in kind.stages  # every kind runs whole and serves
        spec = load_spec(str(ROOT / EXAMPLES[name]))
        assert spec.kind == name and isinstance(spec, module.SPEC)
        assert kind_of(spec) is kind and implementation(spec) is module


def test_the_stage_guard_names_the_stages_a_kind_has():
    lm = load_spec(str(ROOT / "examples/lm.yaml"))
    check_stage(lm, "pipeline")
    check_stage(lm, "deploy")
    check_stage(lm, "compress")
    with pytest.raises(JobError, match=r"kind=lm spec runs as stage pipeline or compress or deploy, not 'preprocess'"):
        check_stage(lm, "preprocess")
    encoder = load_spec(str(ROOT / "examples/minilm.yaml"))
    with pytest.raises(JobError, match=r"pipeline or compress or deploy, not 'train'"):
        check_stage(encoder, "train")
    with pytest.raises(JobError, match=r"unknown stage 'serve'; stages: pipeline, preprocess"):
        check_stage(encoder, "serve")
    with pytest.raises(JobError, match=r"unknown pipeline kind 'vision'"):
        kind_of("vision")


def test_a_job_entrypoint_refuses_a_stage_its_kind_lacks_with_a_result_line_not_a_traceback():
    """Used to die with an AttributeError (`python -m jobs.preprocess --spec examples/lm.yaml`)."""
    proc = subprocess.run([sys.executable, "-m", "jobs.preprocess", "--spec", "examples/lm.yaml"], cwd=ROOT,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 1
    assert "Traceback" not in proc.stderr
    assert "runs as stage pipeline or compress or deploy, not 'preprocess'" in proc.stderr
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result["maas_result"] == "preprocess" and result["status"] == "failed"
    assert result["error_type"] == "JobError"


# the layers, bottom up: a module may import only from a lower layer (or its own package)
LAYERS = [("maas.exceptions", "maas.storage", "maas.version", "maas.progress", "maas.ports"), ("maas.models",),
          ("maas.spec",),
          ("maas.data", "maas.registry"), ("maas.train",),
          ("maas.compress", "maas.eval", "maas.serve", "maas.report", "maas.runtime"),
          ("maas.pipelines", "maas.batch"), ("maas.submit",), ("maas.doctor",), ("maas.cli",), ("maas",)]


def _imports() -> dict:
    """{module: {maas modules it imports, at the top or inside a function}} for every module of maas."""
    root = ROOT / "platform"
    mods = {}
    for f in root.rglob("*.py"):
        name = ".".join(f.relative_to(root).with_suffix("").parts).removesuffix(".__init__")
        mods[name] = f

    def known(name: str) -> str:
        while name not in mods:
            name = name.rpartition(".")[0]
        return name

    graph = {}
    for name, f in mods.items():
        out = set()
        for node in ast.walk(ast.parse(f.read_text())):
            if isinstance(node, ast.Import):
                out |= {known(a.name) for a in node.names if a.name.startswith("maas")}
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and (node.module or "").startswith("maas"):
                out |= {known(f"{node.module}.{a.name}") for a in node.names}
        graph[name] = out - {name}
    return graph


def _layer(module: str) -> int:
    package = ".".join(module.split(".")[:2])
    return next(i for i, names in enumerate(LAYERS) if package in names)


def test_no_import_cycles_and_every_import_goes_down_a_layer():
    graph = _imports()
    wrong = [(a, b) for a, targets in graph.items() for b in targets
             if _layer(b) >= _layer(a) and ".".join(a.split(".")[:2]) != ".".join(b.split(".")[:2])]
    assert not wrong, f"imports that go up or sideways between layers: {wrong}"
    state: dict = {}

    def visit(node: str, path: list) -> None:  # depth-first: a grey node met again closes a cycle
        state[node] = "grey"
        for nxt in sorted(graph[node]):
            if state.get(nxt) == "grey":
                raise AssertionError(f"import cycle: {' -> '.join(path[path.index(nxt):] + [nxt])}")
            if nxt not in state:
                visit(nxt, path + [nxt])
        state[node] = "black"

    for module in sorted(graph):
        if module not in state:
            visit(module, [module])


def test_kind_is_compared_in_one_module_only():
    import re

    names = "|".join(KINDS)
    compared = re.compile(rf"""kind\S*\s*(==|!=)\s*["']({names})["']""")
    offenders = [f.name for f in (ROOT / "platform" / "maas").rglob("*.py")
                 if f.relative_to(ROOT).as_posix() != "platform/maas/pipelines/__init__.py"
                 and compared.search(f.read_text())]
    assert not offenders


def test_no_module_of_the_library_is_over_400_lines():
    long = {f.relative_to(ROOT).as_posix(): n for f in (ROOT / "platform" / "maas").rglob("*.py")
            if (n := len(f.read_text().splitlines())) > 400}
    assert not long, f"split these by concern: {long}"


def test_engine_runtimes_are_told_apart_in_one_place():
    """Whether a version runs on a vLLM engine is asked through maas.serve.runtimes.on_engine; only the
    runtime tables (serve/runtimes, models/tasks: the in-process predictors) name a runtime."""
    import re

    tables = {"platform/maas/serve/runtimes/__init__.py", "platform/maas/models/tasks.py"}
    compared = re.compile(r"""(==|!=)\s*["']vllm["']|["']vllm["']\s*(==|!=|in\b)""")
    found = [str(f.relative_to(ROOT)) for f in (ROOT / "platform").rglob("*.py")
             if str(f.relative_to(ROOT)) not in tables and compared.search(f.read_text())]
    assert not found, found


def _record(ref: str, size: int, speed: float, low: float = None, high: float = None, passed: bool = True) -> dict:
    metrics = {"size_bytes": size, "rows_s": speed}
    if low is not None:
        metrics.update(rows_s_min=low, rows_s_max=high)
    return {"ref": ref, "passed": passed, "metrics": metrics}


def test_fastest_needs_a_margin_beyond_the_spread_of_its_measurements_and_a_tie_goes_to_the_smaller():
    from maas.exceptions import RegistryError
    from maas.pipelines.base import select

    fp32, int8 = _record("d/1", 68_000, 984_691, 900_000, 1_010_000), _record("d/2", 27_000, 932_903, 880_000, 990_000)
    assert select([fp32, int8], "fastest", "rows_s")["ref"] == "d/2"  # within each other's noise: the smaller
    assert select([int8, fp32], "fastest", "rows_s")["ref"] == "d/2"  # whatever the order
    clear = _record("d/1", 68_000, 1_500_000, 1_400_000, 1_600_000)  # its slowest window beat int8's fastest
    assert select([clear, int8], "fastest", "rows_s")["ref"] == "d/1"
    once = [_record("d/1", 68_000, 984_691), _record("d/2", 27_000, 932_903)]  # measured once: no spread known
    assert select(once, "fastest", "rows_s")["ref"] == "d/1"
    assert select([clear, int8], "smallest", "rows_s")["ref"] == "d/2"
    rejected = _record("d/3", 1_000, 9e9, 9e9, 9e9, passed=False)
    assert select([clear, int8, rejected], "fastest", "rows_s")["ref"] == "d/1"  # never a version that failed
    with pytest.raises(RegistryError, match="no version passed"):
        select([rejected], "fastest", "rows_s")


def test_a_language_model_without_held_out_text_is_not_compared_on_it_as_if_it_were_perfect():
    """Chat data holds no whole lines of text: no bits/byte is measured on either side (it used to read as 0.0
    for both, a comparison that always held and said it had compared)."""
    from maas.pipelines.champion import versus_lm

    champion = {"ref": "lm/1", "comparable": True, "bits_per_byte": 1.5}
    assert versus_lm(1.6, champion, 0.05)[0] is False and versus_lm(1.52, champion, 0.05)[0] is True
    for mine, theirs in ((None, 1.5), (1.6, None), (None, None)):
        holds, why = versus_lm(mine, {**champion, "bits_per_byte": theirs}, 0.05)
        assert holds and why == "champion lm/1 not compared on held-out text: this run has none"


def test_a_version_below_the_champion_on_the_same_rows_is_a_candidate_and_the_alias_stays(tmp_path):
    from maas.pipelines.base import promote, status_of
    from maas.pipelines.champion import versus
    from maas.registry import Registry

    champion = {"ref": "d/1", "comparable": True, "test_accuracy": 0.97}
    assert versus({"test_accuracy": 0.965}, champion, 0.01)[0]  # within the tolerance: holds
    holds, why = versus({"test_accuracy": 0.91}, champion, 0.01)
    assert not holds and "6.00 points below champion d/1's 0.9700" in why and "eval.max_accuracy_drop 0.01" in why
    assert versus({"test_accuracy": 0.1}, None, 0.01) == (True, "")  # the first version: nothing to beat
    other = {"ref": "d/1", "comparable": False, "why": "its features differ from this run's"}
    assert versus({"test_accuracy": 0.1}, other, 0.01) == (True, "champion d/1 not compared: its features differ "
                                                                 "from this run's")
    encoder = {"ref": "e/2", "comparable": True, "sts_spearman": 0.80}  # encoders: the rank correlation on pairs
    assert versus({"sts_spearman": 0.79}, encoder, 0.02, "sts_spearman") == (
        True, "vs champion e/2: STS-style rank correlation 0.7900 against its 0.8000 on the same pairs")
    holds, why = versus({"sts_spearman": 0.70}, encoder, 0.02, "sts_spearman")
    assert not holds and why == ("STS-style rank correlation 0.7000 is 0.1000 below champion e/2's 0.8000 on the "
                                 "same pairs (eval.max_sts_drop 0.02)")
    assert [status_of(True, True), status_of(True, False), status_of(False, True)] == ["ready", "candidate",
                                                                                        "rejected"]
    reg = Registry(str(tmp_path / "store"))
    (tmp_path / "a.bin").write_bytes(b"1")
    for status in ("ready", "candidate", "candidate"):
        reg.publish("d", {"a.bin": tmp_path / "a.bin"}, runtime="torch", status=status)
    reg.set_alias("d", "production", 1)
    lost = [_record("d/2", 10, 5.0) | {"status": "candidate"}, _record("d/3", 5, 9.0) | {"status": "candidate"}]
    assert promote(reg.location, "production", lost, "fastest", "rows_s", expected=1) is None
    assert reg.aliases("d") == {"production": 1}


def test_task_scores_against_the_champion_and_two_decisions_as_one():
    from maas.pipelines.champion import versus_tasks
    from maas.pipelines.lm import _both

    champion = {"ref": "lm/1", "comparable": True, "tasks": {"mc": 0.80, "gen": 0.50}}
    assert versus_tasks({}, champion, 0.02) == (True, "")  # no tasks: nothing to say
    assert versus_tasks({"mc": 0.9}, None, 0.02) == (True, "")  # the first version
    holds, why = versus_tasks({"mc": 0.79, "gen": 0.6}, champion, 0.02)
    assert holds and why == "tasks mc 0.790 (champion 0.800), gen 0.600 (champion 0.500)"
    holds, why = versus_tasks({"mc": 0.70, "gen": 0.5}, champion, 0.02)
    assert not holds and why == "below champion lm/1 on mc 0.700 against its 0.800 (eval.max_task_score_drop 0.02)"
    assert versus_tasks({"mc": 0.1}, {"ref": "lm/1", "comparable": False, "why": "quantized"}, 0.02)[0]
    assert _both((True, "a"), (True, "b")) == (True, "a; b")
    assert _both((True, "a"), (False, "b")) == (False, "b")
    assert _both((False, "a"), (False, "b")) == (False, "a; b")
    assert _both((True, ""), (True, "")) == (True, "")
