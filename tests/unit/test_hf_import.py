"""`maas models import`: a Hugging Face causal LM folder (local or in S3) becomes a checksummed registry
version; a folder an engine could not load is refused before anything is published."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import boto3
import pytest

from maas.cli import main
from maas.exceptions import MaasError, RegistryError
from maas.registry import Registry
from maas.registry.hf_import import import_hf_model


@pytest.fixture(scope="module")
def tiny_llama(tmp_path_factory) -> Path:
    """A random 2-layer Llama with a word-level fast tokenizer and a chat template: no download."""
    from maas.models import make_tiny_llama

    folder = make_tiny_llama(tmp_path_factory.mktemp("tiny-llama"))
    (folder / "README.md").write_text("a model card")
    return folder


def _variant(src: Path, dest: Path, drop=(), add=None) -> Path:
    shutil.copytree(src, dest)
    for name in drop:
        (dest / name).unlink()
    for name, data in (add or {}).items():
        (dest / name).write_bytes(data)
    return dest


def test_a_local_folder_is_imported_checksummed_with_its_source(tiny_llama, tmp_path, capsys):
    store = str(tmp_path / "store")
    assert main(["models", "import", str(tiny_llama), "--name", "tiny-llama", "--store", store]) == 0
    out = capsys.readouterr().out
    assert "imported" in out and "tiny-llama/1" in out and "LlamaForCausalLM" in out and "README.md" in out
    reg = Registry(store)
    mv = reg.resolve("tiny-llama/1")
    assert mv.task == "generate" and mv.runtime == "vllm" and mv.lineage["source"] == str(tiny_llama)
    assert {"config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json"} <= set(mv.files)
    assert "README.md" not in mv.files and mv.signature["chat_template"] is True
    folder, _ = reg.fetch("tiny-llama/1")  # every file verified against its sha256
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(folder)  # what was published loads back as the model
    tok = AutoTokenizer.from_pretrained(folder)
    assert model.config.num_hidden_layers == 2 and "<assistant>" in tok.apply_chat_template(
        [{"role": "user", "content": "w1 w2"}], tokenize=False, add_generation_prompt=True)
    with pytest.raises(MaasError, match="vLLM engines serve it"):
        from maas.models import load_predictor

        load_predictor(folder, mv.runtime, mv.task)


def test_a_folder_in_s3_is_imported(tiny_llama, s3_bucket, tmp_path):
    s3 = boto3.client("s3", endpoint_url=os.environ["AWS_ENDPOINT_URL"])
    for p in tiny_llama.iterdir():
        s3.put_object(Bucket=s3_bucket[5:], Key=f"hf/tiny/{p.name}", Body=p.read_bytes())
    reg = Registry(f"{s3_bucket}/maas", cache_dir=str(tmp_path / "cache"))
    mv, skipped = import_hf_model(reg, f"{s3_bucket}/hf/tiny", "tiny")
    assert mv.ref == "tiny/1" and skipped == ["README.md"]
    folder, _ = reg.fetch("tiny/1")
    assert json.loads((folder / "config.json").read_text())["architectures"] == ["LlamaForCausalLM"]


def test_folders_an_engine_could_not_load_are_refused_before_anything_is_published(tiny_llama, tmp_path):
    import torch

    reg = Registry(str(tmp_path / "store"))
    pickled = _variant(tiny_llama, tmp_path / "pickled", drop=["model.safetensors"])
    torch.save({"w": torch.zeros(2)}, pickled / "pytorch_model.bin")
    config = json.loads((tiny_llama / "config.json").read_text())
    cases = {
        "only pickled weights.*safe_serialization=True": pickled,
        "no tokenizer.json": _variant(tiny_llama, tmp_path / "notok", drop=["tokenizer.json"]),
        "no config.json": _variant(tiny_llama, tmp_path / "noconf", drop=["config.json"]),
        r"architecture \['FooForCausalLM'\].*not one": _variant(
            tiny_llama, tmp_path / "arch", add={"config.json": json.dumps({**config, "architectures":
                                                                            ["FooForCausalLM"]}).encode()}),
        "not a readable safetensors file": _variant(tiny_llama, tmp_path / "corrupt",
                                                    add={"model.safetensors": b"\xff" * 64}),
        "not a folder": tmp_path / "missing",
    }
    nested = _variant(tiny_llama, tmp_path / "nested")
    (nested / "sub").mkdir()
    cases["sub-folder"] = nested
    for message, folder in cases.items():
        with pytest.raises(RegistryError, match=message):
            import_hf_model(reg, str(folder), "m")
    with pytest.raises(RegistryError, match="invalid model name"):
        import_hf_model(reg, str(tiny_llama), "../m")
    assert reg.list_models() == []  # nothing was published, not even partly
    assert not (tmp_path / "store" / "models").exists() or not any((tmp_path / "store" / "models").rglob("*.json"))


def test_a_hub_id_is_refused_with_the_commands_that_work(tmp_path, monkeypatch, capsys):
    """`model.source: meta-llama/Llama-3.2-1B-Instruct` validated before and failed at run time: maas serves
    checksummed files, so a Hub id (ORG/NAME that is no folder here, or hf://) is refused up front, saying how to
    get the files; a folder of that shape that does exist is a folder."""
    from maas.exceptions import SpecError
    from maas.spec import spec_from_dict

    monkeypatch.chdir(tmp_path)
    for source in ("meta-llama/Llama-3.2-1B-Instruct", "hf://Qwen/Qwen2.5-0.5B"):
        with pytest.raises(SpecError, match=r"model.source: .* is no folder here and maas does not download from "
                                            r"the Hugging Face Hub.*huggingface-cli download .* --local-dir"):
            spec_from_dict({"kind": "llm", "model": {"name": "x", "source": source}})
    (tmp_path / "meta-llama" / "Llama-3.2-1B-Instruct").mkdir(parents=True)
    spec = spec_from_dict({"kind": "llm", "model": {"name": "x", "source": "meta-llama/Llama-3.2-1B-Instruct"}})
    assert spec.model.source == "meta-llama/Llama-3.2-1B-Instruct"
    assert main(["models", "import", "Qwen/Qwen2.5-0.5B", "--name", "q", "--store", str(tmp_path / "s")]) == 2
    assert "huggingface-cli download Qwen/Qwen2.5-0.5B --local-dir Qwen2.5-0.5B" in capsys.readouterr().err
