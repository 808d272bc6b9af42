"""`maas eval` on a real registry of two tiny Llamas, with lm-evaluation-harness itself (no Ray: lm-eval runs
in-process on each version's verified files; ~20 s)."""

import json


def test_maas_eval_scores_two_registered_versions_side_by_side(tmp_path, capsys):
    """`maas eval REF --against REF --task ...`: lm-eval in-process on each version's verified files; a table
    of both with the difference, and every score with the harness and hashes in --json."""
    from maas.cli import main
    from maas.models import make_tiny_llama
    from maas.registry import Registry
    from maas.registry.hf_import import import_hf_model

    reg = Registry(str(tmp_path / "store"))
    for seed in (0, 1):
        import_hf_model(reg, str(make_tiny_llama(tmp_path / f"tiny{seed}", seed=seed)), "tiny", by="test")
    (tmp_path / "mc.jsonl").write_text("\n".join(json.dumps(
        {"question": f"w{i} w{i + 1}", "choices": [f"w{i + 2}", f"w{i + 50}"], "answer": 0}) for i in range(1, 7)))
    store = ["--store", str(tmp_path / "store")]
    assert main(["eval", "tiny/1", "--against", "tiny", "--task", f"mc={tmp_path / 'mc.jsonl'}:multiple_choice",
                 "--json", str(tmp_path / "scores.json"), *store]) == 0
    out = capsys.readouterr().out
    header, _, row = out.splitlines()[-5:-2]
    assert "tiny/1" in header and "tiny/2" in header and "difference" in header
    assert row.split()[:3] == ["mc", "acc", "6"]
    kept = json.loads((tmp_path / "scores.json").read_text())
    assert set(kept) == {"tiny/1", "tiny/2"} and kept["tiny/1"]["harness"].startswith("lm-eval ")
    first, second = (kept[r]["tasks"]["mc"]["score"] for r in ("tiny/1", "tiny/2"))
    assert row.split()[3:] == [f"{first:.4f}", f"{second:.4f}", f"{first - second:+.4f}"]
    assert kept["tiny/1"]["tasks"]["mc"]["sha256"] == kept["tiny/2"]["tasks"]["mc"]["sha256"]

    assert main(["eval", "tiny/1", "--task", "mc=x.jsonl", *store]) == 2
    assert "write NAME=PATH:TYPE" in capsys.readouterr().err
    assert main(["eval", "tiny/1", *store]) == 2
    assert "no tasks: give --spec SPEC" in capsys.readouterr().err
    assert main(["eval", "tiny/9", "--task", f"mc={tmp_path / 'mc.jsonl'}:multiple_choice", *store]) == 2
    assert "model 'tiny' has no version 9; versions: [1, 2]" in capsys.readouterr().err
