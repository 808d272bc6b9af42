"""The decoder (transformers' Llama), its BPE tokenizer, the published Hugging Face folder, token packing and
the lm spec: no Ray."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from maas.data.blocks import _pack
from maas.data.corpus import english_corpus
from maas.exceptions import MaasError, SpecError
from maas.models import build_model, load_predictor
from maas.models.artifacts import load_torch_model, save_torch_model
from maas.models.llama import (
    CHAT_TEMPLATE,
    LLAMA_SIZES,
    SPECIAL_TOKENS,
    greedy_text,
    llama_config,
    next_word_accuracy,
    save_hf_folder,
    train_flops_per_token,
    train_tokenizer,
)
from maas.spec import spec_from_dict


@pytest.fixture(scope="module")
def tokenizer():
    return train_tokenizer(english_corpus(limit=1500), 400)


def _tiny(vocab: int, seed: int = 0, **over):
    torch.manual_seed(seed)
    return build_model(llama_config("tiny", vocab_size=vocab, **over)).eval()


def test_sizes_span_tiny_to_1b_parameters_with_64_wide_heads():
    counts = {}
    for size in LLAMA_SIZES:
        with torch.device("meta"):  # counted from the shapes: nothing allocated
            model = build_model(llama_config(size))
        counts[size] = sum(p.numel() for p in model.parameters())
        assert model.config.hidden_size // model.config.num_attention_heads == 64
    assert counts["tiny"] < 1e6 < counts["small"] < 20e6 < counts["base"] < counts["125m"]
    assert 120e6 < counts["125m"] < 130e6 and 300e6 < counts["300m"] < 330e6 and 0.9e9 < counts["1b"] < 1.0e9
    model = _tiny(512)
    assert train_flops_per_token(model, 128) == 6 * sum(p.numel() for p in model.parameters()) + 12 * 2 * 128 * 128


def test_tokenizer_round_trips_any_text_and_carries_the_chat_template(tokenizer):
    assert len(tokenizer) <= 400 and tokenizer.convert_ids_to_tokens(list(range(7))) == SPECIAL_TOKENS
    for text in ("The function returns the sum.", "naïve café — 東京 🙂\ttabs\n", "\x01 bytes outside the corpus"):
        ids = tokenizer(text, add_special_tokens=False)["input_ids"]
        assert tokenizer.decode(ids) == text  # byte-level: nothing is unknown
    common = tokenizer("the function returns the value", add_special_tokens=False)["input_ids"]
    assert len(common) < 20  # merges learnt from the corpus: fewer tokens than bytes
    chat = tokenizer.apply_chat_template([{"role": "system", "content": "Be brief."},
                                          {"role": "user", "content": "Hi"}], tokenize=False,
                                         add_generation_prompt=True)
    assert chat == "<|system|>Be brief.<|end|><|user|>Hi<|end|><|assistant|>"
    assert tokenizer.chat_template == CHAT_TEMPLATE


def test_forward_is_causal_and_the_checkpoint_round_trips(tmp_path):
    model = _tiny(300)
    x = torch.randint(0, 300, (2, 20))
    y = x.clone()
    y[:, 12:] = torch.randint(0, 300, (2, 8))  # the future changes...
    with torch.no_grad():
        a, b = model(x).logits, model(y).logits
    assert torch.allclose(a[:, :12], b[:, :12], atol=1e-5)  # ...the past's predictions do not
    assert not torch.allclose(a[:, 12:], b[:, 12:])
    save_torch_model(model, llama_config("tiny", vocab_size=300), tmp_path)
    loaded, config = load_torch_model(tmp_path)
    with torch.no_grad():
        assert torch.equal(model(x).logits, loaded(x).logits)
    assert config["arch"] == "llama" and config["n_kv_head"] == 2


def test_published_folder_loads_with_transformers_and_generates_the_same(tokenizer, tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer, GenerationConfig

    from maas.registry.hf_import import check_hf_folder

    model = _tiny(len(tokenizer), seed=4)
    save_hf_folder(model, tokenizer, tmp_path, {"temperature": 0.7, "top_k": 20, "max_tokens": 33})
    files, signature, skipped = check_hf_folder(tmp_path)  # what `maas models import` accepts, vLLM loads
    assert {"config.json", "model.safetensors", "tokenizer.json", "generation_config.json"} <= set(files)
    assert signature["architecture"] == "LlamaForCausalLM" and signature["chat_template"] and not skipped
    again = AutoModelForCausalLM.from_pretrained(tmp_path).eval()
    tok = AutoTokenizer.from_pretrained(tmp_path)
    prompt = "The function returns"
    assert greedy_text(again, tok, prompt, 12) == greedy_text(model, tokenizer, prompt, 12)
    g = GenerationConfig.from_pretrained(tmp_path)
    assert (g.temperature, g.top_k, g.max_new_tokens) == (0.7, 20, 33) and g.eos_token_id == [2, 6]
    assert json.loads((tmp_path / "config.json").read_text())["max_position_embeddings"] == 128
    with pytest.raises(MaasError, match="vLLM engines serve it"):
        load_predictor(tmp_path, "vllm", "generate")
    with pytest.raises(MaasError, match="no longer serves"):
        load_predictor(tmp_path, "torch", "generate")


def test_next_word_accuracy_scores_the_first_word_written(tokenizer):
    model = _tiny(len(tokenizer), seed=1)
    lines = ["the value of the array", "too short", "returns a copy of the input"]
    check = next_word_accuracy(model, tokenizer, lines, max_new_tokens=4)
    assert check["n"] == 2 and 0 <= check["accuracy"] <= 1
    assert check["examples"][0]["prefix"] == "the value" and check["examples"][0]["expected"] == "of"
    guess = greedy_text(model, tokenizer, "the value", 4).split()
    assert check["examples"][0]["predicted"] == (guess[0] if guess else "")


def test_pack_token_blocks_split_count_and_quarantine(tokenizer):
    doc = b"first good line\n\xff\xfe broken\nmiddle \x00 nul\n" + b"the rest of the text. " * 30
    tj, eos = tokenizer.backend_tokenizer.to_str(), tokenizer.eos_token_id
    out = _pack({"name": np.array(["doc.txt"]), "data": np.array([doc], dtype=object)}, 16, 0.2, 0, tj, eos)
    splits = list(out["split"])
    assert splits.count("reject") == 2  # not UTF-8, and the NUL line: both named with their line
    reasons = [json.loads(r) for r, s in zip(out["reason"], splits) if s == "reject"]
    assert [r["line"] for r in reasons] == [2, 3] and "UTF-8" in reasons[0]["reason"]
    kept = "first good line\n" + "the rest of the text. " * 30 + "\n"
    ids = tokenizer(kept, add_special_tokens=False)["input_ids"] + [eos]
    assert [int(out["reason"][i]) for i, s in enumerate(splits) if s == "count"] == [len(ids)]
    blocks = out["tokens"][[s in ("train", "val") for s in splits]]
    assert blocks.shape[1] == 17 and len(blocks) == (len(ids) - 17) // 16 + 1
    assert list(blocks[0]) == ids[:17] and blocks[1][0] == ids[16]  # stride 16: overlap 1
    assert {"train", "val"} >= set(s for s in splits if s not in ("reject", "count"))
    again = _pack({"name": np.array(["doc.txt"]), "data": np.array([doc], dtype=object)}, 16, 0.2, 0, tj, eos)
    assert list(again["split"]) == splits  # the split is a content hash


def test_lm_spec_defaults_and_errors():
    spec = spec_from_dict({"kind": "lm", "model": {"name": "lm", "size": "small", "block_size": 128}})
    assert spec.model.config() == {**llama_config("small"), "block_size": 128}
    assert spec.train.lr_schedule == "cosine" and spec.train.max_grad_norm == 1.0
    partial = spec_from_dict({"kind": "lm", "model": {"name": "lm"}, "train": {"epochs": 2, "max_grad_norm": 0.5}})
    assert (partial.train.epochs, partial.train.max_grad_norm, partial.train.lr_schedule) == (2, 0.5, "cosine")
    with pytest.raises(SpecError) as err:
        spec_from_dict({"kind": "lm", "model": {"name": "lm", "size": "huge", "n_embd": 65, "n_head": 2},
                        "data": {"source": "files"}, "generate": {"temprature": 1}})
    text = str(err.value)
    assert "model.size" in text and "needs `path`" in text and "did you mean 'temperature'" in text
    for model, message in [({"n_embd": 66, "n_head": 4}, "multiple of n_head"),
                           ({"n_head": 4, "n_kv_head": 3}, "multiple of n_kv_head"),
                           ({"n_embd": 128, "n_head": 8}, "too narrow"),
                           ({"arch": "gpt"}, "Input should be 'llama'")]:
        with pytest.raises(SpecError, match=message):
            spec_from_dict({"kind": "lm", "model": {"name": "lm", **model}})


def test_chat_lines_become_rows_learnt_on_the_assistant_turns_and_bad_lines_are_quarantined(tokenizer):
    from maas.data.chat import IGNORE, chat_spec

    good = {"messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "What is numpy?"},
                         {"role": "assistant", "content": "An array library."}]}
    lines = [json.dumps(good).encode(), b"\xff\xfe not UTF-8", b"{not json", json.dumps({"messages": []}).encode(),
             json.dumps({"messages": [{"role": "robot", "content": "x"}]}).encode(),
             json.dumps({"messages": [{"role": "user", "content": "only a question"}]}).encode(),
             json.dumps({"messages": [{"role": "user", "content": "long " * 200},
                                      {"role": "assistant", "content": "ok"}]}).encode(), b""]
    chat = chat_spec(tokenizer)
    out = _pack({"name": np.array(["c.jsonl"]), "data": np.array([b"\n".join(lines)], dtype=object)}, 63, 0.0, 0,
                tokenizer.backend_tokenizer.to_str(), tokenizer.eos_token_id, chat)
    splits = list(out["split"])
    reasons = {json.loads(r)["line"]: json.loads(r)["reason"] for r, s in zip(out["reason"], splits) if s == "reject"}
    assert sorted(reasons) == [2, 3, 4, 5, 6, 7]  # the empty last line is no conversation, and not a mistake
    assert "UTF-8" in reasons[2] and "not JSON" in reasons[3] and "non-empty" in reasons[4]
    assert "'robot'" in reasons[5] and "no assistant" in reasons[6] and "over the context" in reasons[7]
    (row,) = [i for i, s in enumerate(splits) if s == "train"]
    tokens, targets = out["tokens"][row], out["targets"][row]
    rendered = tokenizer.apply_chat_template(good["messages"], tokenize=False)
    ids = tokenizer(rendered, add_special_tokens=False)["input_ids"]
    assert list(tokens[:len(ids)]) == ids and set(tokens[len(ids):]) == {chat["pad_id"]}
    learnt = [int(t) for t in targets if t != IGNORE]
    answer = tokenizer.decode(learnt)
    assert answer == "An array library.<|end|>"  # the assistant's words and its end of turn, nothing else
    counts = [int(r) for r, s in zip(out["reason"], splits) if s == "count"]
    assert counts == [len(learnt)]


def test_held_out_lines_of_chat_rows_are_the_assistant_turns_read_without_their_prompts(tokenizer):
    """Chat validation rows hold whole conversations: their held-out lines (for bits/byte, next-word accuracy,
    the cloze task and the champion) are the assistant's turns of 4 words or more, each turn on its own."""
    from maas.data.chat import chat_spec
    from maas.pipelines.lm import held_out_lines

    talk = {"messages": [{"role": "user", "content": "What does numpy give us?"},
                         {"role": "assistant", "content": "It gives arrays and fast maths.\nShort one."},
                         {"role": "user", "content": "And scipy?"},
                         {"role": "assistant", "content": "Scientific routines built on those arrays."}]}
    short = {"messages": [{"role": "user", "content": "Hi there, how are you?"},
                          {"role": "assistant", "content": "Fine."}]}
    lines = [json.dumps(talk).encode(), json.dumps(short).encode()]
    out = _pack({"name": np.array(["c.jsonl"]), "data": np.array([b"\n".join(lines)], dtype=object)}, 127, 0.0, 0,
                tokenizer.backend_tokenizer.to_str(), tokenizer.eos_token_id, chat_spec(tokenizer))

    class Rows:  # what the run's validation dataset answers to take()
        def take(self, n):
            return [{"tokens": t, "targets": g} for t, g, s in zip(out["tokens"], out["targets"], out["split"])
                    if s == "train"][:n]

    assert held_out_lines(Rows(), tokenizer) == ["It gives arrays and fast maths.",
                                                "Scientific routines built on those arrays."]
