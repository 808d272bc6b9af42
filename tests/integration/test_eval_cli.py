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


def test_lora_adapters_are_scored_on_their_base_and_a_quantized_version_is_sent_to_its_endpoint(tmp_path, capsys):
    """An adapter version is evaluated as peft on its registered base (its log-likelihoods are not the base's
    own); a quantized folder runs only in vLLM here, so `maas eval` says to score its endpoint."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    from maas.cli import main
    from maas.models import make_tiny_llama
    from maas.models.hf_lm import check_adapter_folder, save_adapter
    from maas.registry import Registry
    from maas.registry.hf_import import import_hf_model

    reg = Registry(str(tmp_path / "store"))
    base, _ = import_hf_model(reg, str(make_tiny_llama(tmp_path / "tiny", seed=0)), "tiny", by="test")
    lora = get_peft_model(AutoModelForCausalLM.from_pretrained(reg.fetch(base.ref)[0]),
                          LoraConfig(r=8, lora_alpha=64, target_modules=["q_proj", "v_proj"],
                                     init_lora_weights=False))  # random adapters: they move every score
    files, signature = check_adapter_folder(save_adapter(lora, tmp_path / "adapter"), base.signature, base.ref)
    adapter = reg.publish("counter", files, runtime="vllm", task="generate", signature=signature,
                          lineage={"parent": base.ref, "method": "lora"})
    (tmp_path / "mc.jsonl").write_text("\n".join(json.dumps(
        {"question": f"w{i} w{i + 1}", "choices": [f"w{i + 2}", f"w{i + 50}"], "answer": 0}) for i in range(1, 5)))
    task = ["--task", f"mc={tmp_path / 'mc.jsonl'}:multiple_choice", "--store", str(tmp_path / "store")]
    assert main(["eval", adapter.ref, "--against", base.ref, "--json", str(tmp_path / "s.json"), *task]) == 0
    kept = json.loads((tmp_path / "s.json").read_text())
    assert f"{reg.fetch(base.ref)[0]} + {reg.fetch(adapter.ref)[0]}" == kept[adapter.ref]["model"]
    ours, theirs = (kept[r]["tasks"]["mc"]["answers"] for r in (adapter.ref, base.ref))
    assert max(abs(a - b) for x, y in zip(ours, theirs) for a, b in zip(x, y)) > 1e-3

    config = json.loads((reg.fetch(base.ref)[0] / "config.json").read_text())
    (tmp_path / "q").mkdir()
    for name in ("config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json"):
        source = reg.fetch(base.ref)[0] / name
        if source.exists():
            (tmp_path / "q" / name).write_bytes(source.read_bytes())
    (tmp_path / "q" / "config.json").write_text(json.dumps({**config, "quantization_config": {"format": "x"}}))
    capsys.readouterr()
    quantized = reg.publish("tiny-q", {p.name: p for p in (tmp_path / "q").iterdir()}, runtime="vllm",
                            task="generate", signature=base.signature)
    assert main(["eval", quantized.ref, *task]) == 2
    assert f"maas eval {quantized.ref} --endpoint URL" in capsys.readouterr().err
