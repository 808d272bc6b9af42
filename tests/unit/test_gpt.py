"""The byte-level GPT, its generation predictor, the generation request parsers and the lm spec: no Ray."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from maas.exceptions import SpecError
from maas.data.blocks import _pack
from maas.models import build_model
from maas.models.artifacts import load_torch_model, save_torch_model
from maas.models.gpt import GPT_SIZES, gpt_config
from maas.models import load_predictor
from maas.models.predictor import GeneratorPredictor
from maas.serve.oip import ProtocolError, json_object, parse_completion_request, parse_generate_request
from maas.spec import spec_from_dict


def _tiny(seed: int = 0, **over):
    torch.manual_seed(seed)
    return build_model(gpt_config("tiny", **over)).eval()


def test_sizes_span_tiny_to_1b_parameters():
    counts = {size: build_model(gpt_config(size)).num_parameters() if size in ("tiny", "small")
              else None for size in GPT_SIZES}
    assert counts["tiny"] < 200_000 < counts["small"]

    def params(size: str) -> int:  # counted from the shape, without building the big ones
        n_layer, n_head, n_embd, block = GPT_SIZES[size]
        assert n_embd % n_head == 0
        per_block = 12 * n_embd * n_embd + 13 * n_embd  # qkv + proj + 2 MLP matrices, biases and norms
        return n_layer * per_block + (256 + block) * n_embd + 256 * n_embd + 2 * n_embd

    assert params("small") == counts["small"]
    assert 120e6 < params("125m") < 130e6
    assert 295e6 < params("300m") < 310e6
    assert 0.98e9 < params("1b") < 1.03e9


def test_forward_is_causal_and_refuses_over_long_input():
    model = _tiny()
    x = torch.randint(0, 256, (2, 20))
    y = x.clone()
    y[:, 12:] = torch.randint(0, 256, (2, 8))  # the future changes...
    with torch.no_grad():
        a, b = model(x), model(y)
    assert torch.allclose(a[:, :12], b[:, :12], atol=1e-5)  # ...the past's predictions do not
    assert not torch.allclose(a[:, 12:], b[:, 12:])
    with pytest.raises(ValueError, match="block_size 64"):
        model(torch.zeros(1, 65, dtype=torch.long))


def test_cached_generation_equals_full_recompute():
    model = _tiny(3)
    prompt = b"Return the sum of"
    cached = list(model.stream(prompt, 40, temperature=0))  # fits the window: no slide
    context, full = list(prompt), []
    with torch.no_grad():
        for _ in range(40):
            nxt = int(model(torch.tensor([context]))[0, -1].argmax())
            full.append(nxt)
            context.append(nxt)
    assert cached == full
    # past the window it keeps going (the context slides), and seeded sampling repeats itself
    assert len(list(model.stream(prompt, 150, temperature=0))) == 150
    assert list(model.stream(prompt, 30, 1.0, 20, seed=7)) == list(model.stream(prompt, 30, 1.0, 20, seed=7))


def test_generator_predictor_stops_and_never_splits_a_character(tmp_path):
    model = _tiny(1)
    save_torch_model(model, gpt_config("tiny"), tmp_path)
    predictor = load_predictor(tmp_path, "torch", "generate")
    assert isinstance(predictor, GeneratorPredictor)
    text, finish, count = predictor.complete(b"abc", max_tokens=50, temperature=0)
    assert finish == "length" and count == 50
    # a stop string that the greedy continuation contains: the answer ends just before its first occurrence
    raw = bytes(model.stream(b"abc", 50, temperature=0))
    target = raw[10:13]
    first = raw.find(target)
    cut, why, count = predictor.complete(b"abc", max_tokens=50, temperature=0, stop=[target])
    assert (cut, why, count) == (raw[:first].decode("utf-8", "replace"), "stop", first + len(target))
    # random sampling emits invalid UTF-8 sometimes; streamed pieces always decode, and join to the whole
    pieces = [p for p, _, _ in predictor.pieces(b"\xc3", 80, 2.0, 0, seed=3)]
    whole, _, _ = predictor.complete(b"\xc3", max_tokens=80, temperature=2.0, top_k=0, seed=3)
    assert "".join(pieces) == whole and all(isinstance(p, str) for p in pieces)


def test_saved_model_round_trips(tmp_path):
    model = _tiny(2)
    save_torch_model(model, gpt_config("tiny"), tmp_path)
    loaded, config = load_torch_model(tmp_path)
    x = torch.randint(0, 256, (1, 16))
    with torch.no_grad():
        assert torch.equal(model(x), loaded(x))
    assert config["arch"] == "gpt" and config["block_size"] == 64


def test_pack_blocks_split_and_quarantine():
    doc = b"first good line\n\xff\xfe broken\nmiddle \x00 nul\n" + b"the rest of the text. " * 30
    out = _pack({"name": np.array(["doc.txt"]), "data": np.array([doc], dtype=object)}, 16, 0.2, 0)
    splits = list(out["split"])
    assert splits.count("reject") == 2  # not UTF-8, and the NUL line: both named with their line
    reasons = [json.loads(r) for r, s in zip(out["reason"], splits) if s == "reject"]
    assert [r["line"] for r in reasons] == [2, 3] and "UTF-8" in reasons[0]["reason"]
    blocks = out["tokens"][[s != "reject" for s in splits]]
    kept = b"first good line\n" + b"the rest of the text. " * 30 + b"\n"
    assert blocks.shape[1] == 17 and len(blocks) == (len(kept) - 17) // 16 + 1
    assert bytes(blocks[0]) == kept[:17] and bytes(blocks[1][:1]) == kept[16:17]  # stride 16: overlap 1
    assert {"train", "val"} >= set(s for s in splits if s != "reject")
    again = _pack({"name": np.array(["doc.txt"]), "data": np.array([doc], dtype=object)}, 16, 0.2, 0)
    assert list(again["split"]) == splits  # the split is a content hash


SIG = {"block_size": 64, "generate": {"max_tokens": 16, "max_tokens_limit": 100, "temperature": 0.8, "top_k": 40}}


def test_completion_request_parsing_and_errors():
    prompt, opts, stream = parse_completion_request({"prompt": "héllo", "max_tokens": 5, "stream": True,
                                                     "stop": ["\n"]}, SIG)
    assert prompt == "héllo".encode() and opts["max_tokens"] == 5 and stream and opts["stop"] == [b"\n"]
    _, opts, stream = parse_completion_request({"prompt": ["one"]}, SIG)
    assert opts["max_tokens"] == 16 and opts["temperature"] == 0.8 and not stream
    bad = [({}, "'prompt' is missing"), ({"prompt": 3}, "must be a string"),
           ({"prompt": "x", "max_tokens": 101}, "'max_tokens' must lie within"),
           ({"prompt": "x", "max_tokens": 2.5}, "'max_tokens' must be an integer"),
           ({"prompt": "x", "temperature": "hot"}, "'temperature' must be a number"),
           ({"prompt": "x", "stream": "yes"}, "'stream' must be true or false"),
           ({"prompt": "x", "n": 2}, "'n' and 'best_of'"), ({"prompt": "x", "stop": ["a"] * 5}, "'stop'"),
           ({"prompt": "x", "logprobs": 3}, "'echo' and 'logprobs'")]
    for req, message in bad:
        with pytest.raises(ProtocolError, match=message) as err:
            parse_completion_request(req, SIG)
        assert err.value.status == 400
    with pytest.raises(ProtocolError, match="not valid JSON"):
        json_object(b"{nope", "'prompt'")


def test_generate_request_parsing_and_errors():
    prompt, opts, rid = parse_generate_request(b'{"text_input": "hi", "id": "r1", "parameters": {"seed": 3}}', SIG)
    assert prompt == b"hi" and opts["seed"] == 3 and rid == "r1"
    for body, message in [(b'{"parameters": {}}', "'text_input' is missing"),
                          (b'{"text_input": "x", "parameters": [1]}', "'parameters' must be a JSON object"),
                          (b'{"text_input": "x", "parameters": {"top_k": 300}}', "'top_k' must lie within"),
                          (b'[1, 2]', "JSON object")]:
        with pytest.raises(ProtocolError, match=message):
            parse_generate_request(body, SIG)


def test_lm_spec_defaults_and_errors():
    spec = spec_from_dict({"kind": "lm", "model": {"name": "gpt", "size": "small", "block_size": 128}})
    assert spec.model.config() == {**gpt_config("small"), "block_size": 128}
    assert spec.train.lr_schedule == "cosine" and spec.train.max_grad_norm == 1.0
    partial = spec_from_dict({"kind": "lm", "model": {"name": "gpt"}, "train": {"epochs": 2, "max_grad_norm": 0.5}})
    assert (partial.train.epochs, partial.train.max_grad_norm, partial.train.lr_schedule) == (2, 0.5, "cosine")
    with pytest.raises(SpecError) as err:
        spec_from_dict({"kind": "lm", "model": {"name": "gpt", "size": "huge", "n_embd": 65, "n_head": 2},
                        "data": {"source": "files"}, "generate": {"temprature": 1}})
    text = str(err.value)
    assert "model.size" in text and "needs `path`" in text and "did you mean 'temperature'" in text
    with pytest.raises(SpecError, match="multiple of n_head"):
        spec_from_dict({"kind": "lm", "model": {"name": "gpt", "n_embd": 66, "n_head": 4}})
