"""The benchmark scripts are not run by the suite (they print tables, minutes each), so a rename in maas would
leave them broken until someone ran one (two did: `run_encoder_pipeline` was gone). Every name they import
from maas must exist."""

import ast
import importlib
import importlib.util
from pathlib import Path

import pytest

BENCHMARKS = sorted((Path(__file__).resolve().parents[2] / "benchmarks").glob("*.py"))


@pytest.mark.parametrize("script", BENCHMARKS, ids=lambda p: p.stem)
def test_every_name_a_benchmark_imports_from_maas_exists(script):
    missing = []
    for node in ast.walk(ast.parse(script.read_text())):
        if isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] == "maas":
            module = importlib.import_module(node.module)
            missing += [f"{node.module}.{a.name}" for a in node.names
                        if not hasattr(module, a.name) and importlib.util.find_spec(f"{node.module}.{a.name}") is None]
        elif isinstance(node, ast.Import):
            for a in node.names:
                if a.name.split(".")[0] == "maas":
                    importlib.import_module(a.name)
    assert not missing, f"{script.name} imports what maas no longer has: {missing}"
