"""The decoder maas trains: ``transformers``' ``LlamaForCausalLM`` with a byte-level BPE tokenizer trained with
``tokenizers`` on the training text. What a run publishes is a Hugging Face folder (config.json,
model.safetensors, tokenizer.json with a chat template, generation_config.json) that
``AutoModelForCausalLM.from_pretrained`` loads and vLLM serves with no conversion.

Sizes go from ``tiny`` (CPU tests) to ``1b`` (GPUs); every size has 64-wide attention heads (vLLM's CPU
kernels need 32 or more; GPU kernels are fastest at 64/128). The checkpoint a training run writes is the same
state dict (``model.safetensors`` + ``model.json``), so resume and publication need no key mapping.
"""

from __future__ import annotations

from pathlib import Path
from typing import Iterable, Optional

from torch import nn

# name -> (n_layer, n_head, n_embd, intermediate_size, block_size in tokens, vocab_size)
LLAMA_SIZES = {
    "tiny": (2, 2, 128, 384, 128, 1024),        # ~0.7M: CPU tests and the demo
    "small": (6, 6, 384, 1024, 256, 8192),      # ~17M: a laptop run
    "base": (12, 12, 768, 2048, 512, 8192),     # ~97M
    "125m": (12, 12, 768, 2560, 1024, 16384),   # ~124M: GPU runs
    "300m": (24, 16, 1024, 2048, 1024, 32000),  # ~317M
    "1b": (16, 32, 2048, 5632, 1024, 32000),    # ~0.95B: one GPU's worth
}

# special tokens, in id order: ids 0..6 in every tokenizer maas trains
PAD, BOS, EOS = "<pad>", "<s>", "</s>"
ROLES = ("system", "user", "assistant")
END_OF_TURN = "<|end|>"
SPECIAL_TOKENS = [PAD, BOS, EOS] + [f"<|{r}|>" for r in ROLES] + [END_OF_TURN]
CHAT_TEMPLATE = ("{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}<|end|>{% endfor %}"
                 "{% if add_generation_prompt %}<|assistant|>{% endif %}")


def llama_config(size: str = "tiny", **overrides) -> dict:
    """model.json's config of a named size with any of n_layer/n_head/n_kv_head/n_embd/intermediate_size/
    block_size/vocab_size/dropout changed."""
    if size not in LLAMA_SIZES:
        raise ValueError(f"unknown model size {size!r}; sizes: {', '.join(LLAMA_SIZES)}")
    n_layer, n_head, n_embd, inter, block, vocab = LLAMA_SIZES[size]
    config = {"arch": "llama", "n_layer": n_layer, "n_head": n_head, "n_kv_head": None, "n_embd": n_embd,
              "intermediate_size": inter, "block_size": block, "vocab_size": vocab, "dropout": 0.0}
    config.update({k: v for k, v in overrides.items() if v is not None})
    config["n_kv_head"] = config["n_kv_head"] or config["n_head"]
    return config


def hf_config(n_layer: int, n_head: int, n_embd: int, intermediate_size: int, block_size: int, vocab_size: int,
              n_kv_head: Optional[int] = None, dropout: float = 0.0):
    """The ``LlamaConfig`` of a maas config: the context is the training block, ids of the special tokens
    as ``train_tokenizer`` assigns them."""
    from transformers import LlamaConfig

    return LlamaConfig(vocab_size=vocab_size, hidden_size=n_embd, intermediate_size=intermediate_size,
                       num_hidden_layers=n_layer, num_attention_heads=n_head,
                       num_key_value_heads=n_kv_head or n_head, max_position_embeddings=block_size,
                       attention_dropout=dropout, pad_token_id=0, bos_token_id=1, eos_token_id=2,
                       tie_word_embeddings=False, use_cache=False)


def build_llama(**config) -> nn.Module:
    """A randomly initialised ``LlamaForCausalLM`` (SDPA attention) from a maas config."""
    from transformers import LlamaForCausalLM

    return LlamaForCausalLM._from_config(hf_config(**config), attn_implementation="sdpa")


def decoder_layers(model: nn.Module) -> Optional[list]:
    """A decoder's layers (the units FSDP2 shards and regional compilation compiles), or None."""
    if hasattr(model, "get_base_model"):  # peft: the layers of the model under the adapters
        model = model.get_base_model()
    inner = getattr(model, "model", None)
    layers = getattr(inner, "layers", None)
    return list(layers) if layers is not None else None


def train_flops_per_token(model: nn.Module, block_size: int) -> float:
    """Training FLOPs per token: 6N for the weights plus the attention scores (PaLM's appendix B)."""
    cfg = model.config
    n_params = sum(p.numel() for p in model.parameters())
    return 6 * n_params + 12 * cfg.num_hidden_layers * cfg.hidden_size * block_size


# ---------------------------------------------------------------------------------------------- tokenizer

def train_tokenizer(texts: Iterable[str], vocab_size: int, *, min_frequency: int = 2):
    """A byte-level BPE tokenizer (``tokenizers``) learnt from ``texts``, as a transformers fast tokenizer with
    the special tokens (pad, bos, eos, role markers, end of turn) and the chat template. Every byte has a
    token, so any text encodes; ``vocab_size`` is an upper bound (a small corpus may learn fewer merges)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, min_frequency=min_frequency,
                                  special_tokens=SPECIAL_TOKENS, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(texts, trainer)
    return as_fast_tokenizer(tok.to_str())


def as_fast_tokenizer(tokenizer_json: str):
    """A transformers fast tokenizer from ``tokenizer.json``'s text, with maas's special tokens and template."""
    from tokenizers import Tokenizer
    from transformers import PreTrainedTokenizerFast

    fast = PreTrainedTokenizerFast(tokenizer_object=Tokenizer.from_str(tokenizer_json), pad_token=PAD,
                                   bos_token=BOS, eos_token=EOS, additional_special_tokens=SPECIAL_TOKENS[3:])
    fast.chat_template = CHAT_TEMPLATE
    return fast


def save_hf_folder(model: nn.Module, tokenizer, folder: str | Path, generate: Optional[dict] = None,
                   base_folder: Optional[str | Path] = None) -> Path:
    """Write the model as a Hugging Face folder: config.json and model.safetensors, the tokenizer files,
    generation_config.json (sampling defaults from ``generate``: temperature, top_k, top_p, max_tokens;
    generation ends at end of text or end of turn; a fine-tuned model keeps ``base_folder``'s). Returns the
    folder."""
    from transformers import GenerationConfig
    from transformers.utils import logging as hf_logging

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    model = getattr(model, "module", model)  # the plain model under a DDP wrapper
    hf_logging.disable_progress_bar()  # no "Writing model shards" bars in job logs
    model.config.use_cache = True  # what inference wants; training built it without the cache
    model.save_pretrained(folder, safe_serialization=True)
    tokenizer.save_pretrained(folder)
    base_generation = Path(base_folder or "-") / "generation_config.json"
    if base_generation.is_file():
        (folder / "generation_config.json").write_bytes(base_generation.read_bytes())
        return folder
    g = dict(generate or {})
    eos = [tokenizer.convert_tokens_to_ids(EOS), tokenizer.convert_tokens_to_ids(END_OF_TURN)]
    temperature = float(g.get("temperature", 1.0))
    GenerationConfig(bos_token_id=1, eos_token_id=eos, pad_token_id=0, do_sample=temperature > 0,
                     temperature=temperature if temperature > 0 else None, top_k=g.get("top_k") or None,
                     top_p=g.get("top_p"), max_new_tokens=g.get("max_tokens")).save_pretrained(folder)
    return folder


# ---------------------------------------------------------------------------------------------- evaluation

def greedy_text(model: nn.Module, tokenizer, prompt: str, max_new_tokens: int) -> str:
    """transformers' greedy continuation of ``prompt`` (the reference the served endpoint must match)."""
    import torch

    ids = tokenizer(prompt, return_tensors="pt", add_special_tokens=False)["input_ids"]
    with torch.inference_mode():
        out = model.generate(input_ids=ids, max_new_tokens=max_new_tokens, do_sample=False,
                             pad_token_id=tokenizer.pad_token_id)
    return tokenizer.decode(out[0, ids.shape[1]:], skip_special_tokens=True)


def next_word_accuracy(model: nn.Module, tokenizer, lines: list[str], max_new_tokens: int = 8) -> dict:
    """A check a reader can follow: each held-out line is cut before its middle word, the model continues it
    greedily, and it scores when the first word it writes is that word. -> {"accuracy", "n", "examples"}."""
    hits, examples = 0, []
    cases = [(" ".join(w[:len(w) // 2]), w[len(w) // 2]) for w in (line.split() for line in lines) if len(w) >= 4]
    for prefix, word in cases:
        said = greedy_text(model, tokenizer, prefix, max_new_tokens).split()
        guess = said[0] if said else ""
        hits += guess.strip(".,;:()") == word.strip(".,;:()")
        if len(examples) < 5:
            examples.append({"prefix": prefix[-60:], "expected": word, "predicted": guess})
    return {"accuracy": hits / max(len(cases), 1), "n": len(cases), "examples": examples}
