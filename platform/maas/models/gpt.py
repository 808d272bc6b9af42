"""A GPT-style decoder over bytes: pre-norm transformer blocks, causal attention, tied embeddings.

Byte-level (vocabulary 256) so any text trains and generates with no tokenizer to ship or download. Sizes
go from ``tiny`` (CPU tests, ~0.1M parameters) to ``1b`` (GPU runs). ``blocks`` names the units that
FSDP2 shards one at a time. Generation keeps a key/value cache per block, so each new token costs one
position's forward, not the whole context's.
"""

from __future__ import annotations

import math
from typing import Iterator, Optional

import torch
import torch.nn.functional as F
from torch import nn

VOCAB = 256  # bytes

# name -> (n_layer, n_head, n_embd, block_size)
GPT_SIZES = {
    "tiny": (2, 2, 64, 64),        # ~0.1M: CPU tests
    "small": (6, 6, 384, 256),     # ~10.7M: a laptop run
    "base": (12, 12, 768, 512),    # ~85M
    "125m": (14, 12, 864, 1024),   # ~127M: GPU runs
    "300m": (24, 16, 1024, 1024),  # ~304M: GPT-2 medium's shape
    "1b": (20, 16, 2048, 1024),    # ~1.0B: one GPU's worth (head width 128)
}


class CausalSelfAttention(nn.Module):
    def __init__(self, n_embd: int, n_head: int, dropout: float):
        super().__init__()
        if n_embd % n_head:
            raise ValueError(f"n_embd ({n_embd}) must be a multiple of n_head ({n_head})")
        self.n_head, self.dropout = n_head, dropout
        self.qkv = nn.Linear(n_embd, 3 * n_embd)
        self.proj = nn.Linear(n_embd, n_embd)

    def forward(self, x: torch.Tensor, cache: Optional[list] = None) -> torch.Tensor:
        b, t, c = x.shape
        q, k, v = self.qkv(x).split(c, dim=2)
        q, k, v = (z.view(b, t, self.n_head, c // self.n_head).transpose(1, 2) for z in (q, k, v))
        if cache is not None:  # generation: append this step's keys/values to the cache
            if cache:
                k, v = torch.cat([cache[0], k], dim=2), torch.cat([cache[1], v], dim=2)
            cache[:] = [k, v]
        causal = cache is None or t > 1  # a single new position may attend to every cached one
        y = F.scaled_dot_product_attention(q, k, v, is_causal=causal,
                                           dropout_p=self.dropout if self.training else 0.0)
        return self.proj(y.transpose(1, 2).contiguous().view(b, t, c))


class Block(nn.Module):
    def __init__(self, n_embd: int, n_head: int, dropout: float):
        super().__init__()
        self.ln1, self.ln2 = nn.LayerNorm(n_embd), nn.LayerNorm(n_embd)
        self.attn = CausalSelfAttention(n_embd, n_head, dropout)
        self.mlp = nn.Sequential(nn.Linear(n_embd, 4 * n_embd), nn.GELU(), nn.Linear(4 * n_embd, n_embd))
        self.drop = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor, cache: Optional[list] = None) -> torch.Tensor:
        x = x + self.drop(self.attn(self.ln1(x), cache))
        return x + self.drop(self.mlp(self.ln2(x)))


class GPT(nn.Module):
    """bytes [B, T] (int64) -> next-byte logits [B, T, 256]."""

    def __init__(self, n_layer: int, n_head: int, n_embd: int, block_size: int, dropout: float = 0.0):
        super().__init__()
        self.block_size = block_size
        self.tok = nn.Embedding(VOCAB, n_embd)
        self.pos = nn.Embedding(block_size, n_embd)
        self.drop = nn.Dropout(dropout)
        self.blocks = nn.ModuleList(Block(n_embd, n_head, dropout) for _ in range(n_layer))
        self.ln_f = nn.LayerNorm(n_embd)
        self.head = nn.Linear(n_embd, VOCAB, bias=False)
        self.apply(self._init)
        for name, p in self.named_parameters():  # GPT-2: residual projections scaled by depth
            if name.endswith(("attn.proj.weight", "mlp.2.weight")):
                nn.init.normal_(p, 0.0, 0.02 / math.sqrt(2 * n_layer))
        # tied input/output embeddings would share one tensor across FSDP units; kept separate, the model
        # shards cleanly block by block and the head costs 256 x n_embd parameters only

    @staticmethod
    def _init(m: nn.Module) -> None:
        if isinstance(m, nn.Linear):
            nn.init.normal_(m.weight, 0.0, 0.02)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.Embedding):
            nn.init.normal_(m.weight, 0.0, 0.02)

    def forward(self, idx: torch.Tensor, caches: Optional[list] = None, start: int = 0) -> torch.Tensor:
        t = idx.shape[1]
        if start + t > self.block_size:
            raise ValueError(f"sequence of {start + t} bytes is over the model's block_size {self.block_size}")
        pos = torch.arange(start, start + t, device=idx.device)
        x = self.drop(self.tok(idx) + self.pos(pos))
        for i, block in enumerate(self.blocks):
            x = block(x, None if caches is None else caches[i])
        return self.head(self.ln_f(x))

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())

    def flops_per_token(self) -> float:
        """Training FLOPs per token: 6N for the weights plus the attention scores (PaLM's appendix B)."""
        n_layer, n_embd, t = len(self.blocks), self.tok.embedding_dim, self.block_size
        return 6 * self.num_parameters() + 12 * n_layer * n_embd * t

    @torch.inference_mode()
    def stream(self, prompt: bytes, max_new_tokens: int, temperature: float = 1.0, top_k: int = 0,
               seed: Optional[int] = None) -> Iterator[int]:
        """Yield up to ``max_new_tokens`` generated bytes after ``prompt`` (its last ``block_size - 1``
        bytes are the context). ``temperature`` 0 is greedy. The window slides when it fills: the cache is
        rebuilt from the last half of the context."""
        gen = torch.Generator().manual_seed(seed) if seed is not None else None
        device = self.head.weight.device  # the model runs where its weights are; sampling runs on the CPU,
        # from the 256 logits of each step, so a seed gives the same text on any device

        def step(ids: list, start: int) -> torch.Tensor:
            return self(torch.tensor([ids], device=device), caches, start)[0, -1].float().cpu()

        context = list(prompt[-(self.block_size - 1):]) or [10]  # an empty prompt starts after a newline
        caches = [[] for _ in self.blocks]
        logits = step(context, 0)
        for _ in range(max_new_tokens):
            if temperature <= 0:
                nxt = int(logits.argmax())
            else:
                scaled = logits.float() / temperature
                if 0 < top_k < VOCAB:
                    kth = torch.topk(scaled, top_k).values[-1]
                    scaled = scaled.masked_fill(scaled < kth, float("-inf"))
                nxt = int(torch.multinomial(torch.softmax(scaled, -1), 1, generator=gen))
            yield nxt
            context.append(nxt)
            if len(context) >= self.block_size:  # full: keep the last half, re-encode it
                context = context[-(self.block_size // 2):]
                caches = [[] for _ in self.blocks]
                logits = step(context, 0)
            else:
                logits = step([nxt], len(context) - 1)


def gpt_config(size: str = "tiny", **overrides) -> dict:
    """The model.json config of a named size with any of n_layer/n_head/n_embd/block_size/dropout changed."""
    if size not in GPT_SIZES:
        raise ValueError(f"unknown GPT size {size!r}; sizes: {', '.join(GPT_SIZES)}")
    n_layer, n_head, n_embd, block_size = GPT_SIZES[size]
    config = {"arch": "gpt", "n_layer": n_layer, "n_head": n_head, "n_embd": n_embd, "block_size": block_size,
              "dropout": 0.0}
    config.update({k: v for k, v in overrides.items() if v is not None})
    return config


def build_gpt(n_layer: int, n_head: int, n_embd: int, block_size: int, dropout: float = 0.0) -> GPT:
    return GPT(n_layer, n_head, n_embd, block_size, dropout)


def generation_signature(block_size: int, generate: dict) -> dict:
    """The registry signature of a byte-level text generator: text in, text out (OIP BYTES), with its
    sampling defaults (``generate``: max_tokens, temperature, top_k, max_tokens_limit)."""
    return {"task": "generation", "tokenizer": "bytes", "vocab_size": 256, "block_size": block_size,
            "generate": dict(generate),
            "inputs": [{"name": "text_input", "datatype": "BYTES", "shape": [1]}],
            "outputs": [{"name": "text_output", "datatype": "BYTES", "shape": [1]}]}
