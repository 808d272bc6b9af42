"""A random tiny Llama in Hugging Face format, built locally (no download): what the LLM demo, tests and
benchmarks serve where no real model can be fetched. A word-level fast tokenizer (``w0`` ... ``wN`` plus role
markers) with a chat template, weights in safetensors; vLLM and transformers load it like any Llama."""

from __future__ import annotations

from pathlib import Path

# role markers before each turn, </s> after the assistant's (where generation stops), the prompt when asked
CHAT_TEMPLATE = ("{% for m in messages %}<{{ m['role'] }}>{{ m['content'] }}{% if m['role'] == 'assistant' %}</s>"
                 "{% endif %}{% endfor %}{% if add_generation_prompt %}<assistant>{% endif %}")
SPECIAL = ["<unk>", "<s>", "</s>", "<system>", "<user>", "<assistant>"]


def make_tiny_llama(folder, *, seed: int = 0, layers: int = 2, width: int = 128, words: int = 250,
                    max_positions: int = 512) -> Path:
    """Write the model to ``folder`` and return it. Heads are 64 wide (vLLM's CPU attention kernels need a
    head size of 32 or more)."""
    import torch
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    vocab = SPECIAL + [f"w{i}" for i in range(words)]
    tok = Tokenizer(models.WordLevel({w: i for i, w in enumerate(vocab)}, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.add_special_tokens(SPECIAL)  # matched whole before the pre-tokenizer: '<user>' is one token, not 3 <unk>
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>", bos_token="<s>", eos_token="</s>")
    fast.chat_template = CHAT_TEMPLATE
    fast.save_pretrained(folder)
    torch.manual_seed(seed)
    heads = max(width // 64, 1)
    config = LlamaConfig(vocab_size=len(vocab), hidden_size=width, intermediate_size=2 * width,
                         num_hidden_layers=layers, num_attention_heads=heads, num_key_value_heads=max(heads // 2, 1),
                         max_position_embeddings=max_positions, bos_token_id=1, eos_token_id=2)
    LlamaForCausalLM(config).save_pretrained(folder, safe_serialization=True)
    return folder
