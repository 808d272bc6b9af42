"""Champion/challenger: before ``deploy.alias`` moves, the version it points at now (the champion) is
evaluated on the new run's own data, with its own artifact, preprocessing and runtime, and every new version
must come within the spec's tolerance of it; one that does not is published as ``candidate`` and the alias
stays. The champion's stored metrics are never reused: they came from other rows.

Classifiers are compared on the run's test rows (``eval.max_accuracy_drop``), sentence encoders on the run's
STS-style pairs (``eval.max_sts_drop``), language models on the run's held-out text and tasks."""

from __future__ import annotations

from typing import Optional

from maas.compress.evaluate import accuracy
from maas.models import load_predictor
from maas.registry import Registry

SAME = ("features", "classes", "encoders")  # what must agree for both to read the same rows the same way


def evaluate_champion(registry: Registry, name: str, version: Optional[int], signature: dict, x, y) -> Optional[dict]:
    """{ref, comparable, test_accuracy | why} of ``name/version`` on the rows (x, y) of this run, or None when
    the model has no champion (its first version). A champion whose inputs or classes differ from this run's
    (another schema, other categories) cannot read these rows: it is ``comparable: False`` with the reason."""
    if version is None:
        return None
    mv = registry.get_version(name, version)
    differ = [k for k in SAME if mv.signature.get(k) != signature.get(k)]
    if differ:
        return {"ref": mv.ref, "comparable": False,
                "why": f"its {' and '.join(differ)} differ from this run's, so it cannot be scored on these rows"}
    folder, _ = registry.fetch(mv.ref)
    predictor = load_predictor(folder, mv.runtime, mv.task)
    return {"ref": mv.ref, "comparable": True, "test_accuracy": accuracy(predictor, x, y)}


def _not_compared(champion: Optional[dict]) -> Optional[tuple[bool, str]]:
    """(True, why) where there is nothing to compare with: no champion, or one that cannot be scored here."""
    if champion is None:
        return True, ""
    if not champion["comparable"]:
        return True, f"champion {champion['ref']} not compared: {champion['why']}"
    return None


# metric -> (how a figure is named, what it is measured on, its tolerance in the spec, how a shortfall reads)
COMPARED = {
    "test_accuracy": ("", "rows", "eval.max_accuracy_drop", lambda d: f"{d * 100:.2f} points"),
    "sts_spearman": ("STS-style rank correlation ", "pairs", "eval.max_sts_drop", lambda d: f"{d:.4f}"),
}


def versus(metrics: dict, champion: Optional[dict], max_drop: float,
           metric: str = "test_accuracy") -> tuple[bool, str]:
    """(holds its own, why) for a version with ``metrics`` against ``champion`` (``evaluate_champion`` or
    ``evaluate_encoder_champion``) on ``metric``, higher being better."""
    if (skip := _not_compared(champion)) is not None:
        return skip
    named, on, knob, shortfall = COMPARED[metric]
    mine, theirs = metrics[metric], champion[metric]
    if theirs - mine > max_drop + 1e-12:
        return False, (f"{named}{mine:.4f} is {shortfall(theirs - mine)} below champion {champion['ref']}'s "
                       f"{theirs:.4f} on the same {on} ({knob} {max_drop:g})")
    return True, f"vs champion {champion['ref']}: {named}{mine:.4f} against its {theirs:.4f} on the same {on}"


# ------------------------------------------------------------------------------------------- encoders

def evaluate_encoder_champion(registry: Registry, name: str, version: Optional[int], left: list[str],
                              right: list[str], labels) -> Optional[dict]:
    """{ref, comparable, sts_spearman | why} of the sentence encoder ``name/version`` on this run's STS-style
    pairs, embedded with its own files, tokenizer and runtime as the variants are (batches of 64), or None:
    no champion. A champion that is not a sentence encoder cannot read them: ``comparable: False``."""
    if version is None:
        return None
    import numpy as np

    from maas.compress.encoder_eval import sts_spearman

    mv = registry.get_version(name, version)
    if mv.task != "embed":
        return {"ref": mv.ref, "comparable": False,
                "why": f"it is a {mv.task} model, not a sentence encoder, so it cannot embed these pairs"}
    folder, _ = registry.fetch(mv.ref)
    predictor = load_predictor(folder, mv.runtime, mv.task)
    texts = list(left) + list(right)
    emb = np.concatenate([predictor(texts[i:i + 64]) for i in range(0, len(texts), 64)])
    return {"ref": mv.ref, "comparable": True,
            "sts_spearman": sts_spearman(emb[:len(left)], emb[len(left):], labels)}


# --------------------------------------------------------------------------------------- language models

def text_bits_per_byte(model, tokenizer, lines: list[str]) -> float:
    """Bits per UTF-8 byte of ``lines`` under ``model`` with its own ``tokenizer``: the sum of each line's
    next-token losses after its first token, over the bytes those tokens spell. Comparable across tokenizers
    (another run learns another vocabulary), so a retrained model and its champion read the same text."""
    import math

    import torch

    bits, nbytes = 0.0, 0
    with torch.inference_mode():
        for ids in line_ids(tokenizer, lines, getattr(model.config, "max_position_embeddings", None)):
            logits = model(input_ids=torch.tensor([ids])).logits[0, :-1].float()
            nll = torch.nn.functional.cross_entropy(logits, torch.tensor(ids[1:]), reduction="sum")
            bits += float(nll) / math.log(2)
            nbytes += len(tokenizer.decode(ids[1:]).encode())
    return bits / max(nbytes, 1)


def line_ids(tokenizer, lines: list[str], context: Optional[int]) -> list[list[int]]:
    """Each line's token ids, cut to fit the model's ``context`` with the one token an engine must generate
    after a prompt (it refuses a longer one; past its context a model reads positions it never trained on);
    lines of fewer than 2 tokens have nothing to score."""
    ids = (tokenizer(line, add_special_tokens=False)["input_ids"][:context - 1 if context else None] for line in lines)
    return [i for i in ids if len(i) >= 2]


def evaluate_lm_champion(registry: Registry, name: str, version: Optional[int], lines: list[str],
                         tasks: tuple = (), engine=None) -> Optional[dict]:
    """{ref, comparable, bits_per_byte, tasks | why} of the language model ``name/version`` on ``lines`` (this
    run's held-out text) and on ``tasks`` with lm-eval, or None: no champion. A Hugging Face folder or LoRA
    adapters on their base are read by transformers; a quantized folder (compressed-tensors, which only vLLM
    runs here) by a vLLM engine with ``engine``'s settings (``deploy.llm``), in a process of its own: its
    held-out text only (lm-eval's tasks need its served endpoint: ``maas eval --endpoint``)."""
    if version is None:
        return None
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from maas.eval.tasks import run_on_files, version_files

    mv = registry.get_version(name, version)
    folder, base_folder, quantized = version_files(registry, mv)
    if quantized:
        from maas.spec import LLMEngineSpec

        bits = vllm_bits_per_byte(folder, mv.signature, lines, engine or LLMEngineSpec()) if lines else None
        return {"ref": mv.ref, "comparable": True, "bits_per_byte": bits,
                "tasks_why": "a quantized champion's tasks are scored through its endpoint (maas eval --endpoint)"}
    model = AutoModelForCausalLM.from_pretrained(base_folder or folder)
    if base_folder is not None:
        from peft import PeftModel

        model = PeftModel.from_pretrained(model, folder)
    tokenizer = AutoTokenizer.from_pretrained(base_folder or folder)
    out = {"ref": mv.ref, "comparable": True,  # None: no held-out text to read
           "bits_per_byte": text_bits_per_byte(model.eval(), tokenizer, lines) if lines else None}
    if tasks:
        out["tasks"] = run_on_files(list(tasks), folder, base_folder).scores()
    return out


def vllm_bits_per_byte(folder, signature: dict, lines: list[str], engine) -> float:
    """``text_bits_per_byte`` of ``lines`` read by a vLLM engine (the only runtime of a quantized folder here):
    the same tokens, the same sum of next-token losses after each line's first token, over the same bytes.

    Raises:
        EvalError: the engine could not read them (its error).
    """
    import math
    import tempfile

    from transformers import AutoConfig, AutoTokenizer

    from maas.exceptions import EvalError
    from maas.pipelines.lm_compress import measure_folders
    from maas.serve.runtimes.vllm_config import engine_dtype

    tokenizer = AutoTokenizer.from_pretrained(folder)
    ids = line_ids(tokenizer, lines, AutoConfig.from_pretrained(folder).max_position_embeddings)
    nbytes = sum(len(tokenizer.decode(i[1:]).encode()) for i in ids)
    inputs = {"eval": ids, "prompts": [], "max_tokens": 1, "score_only": True}
    models = [{"key": "champion", "folder": str(folder), "dtype": engine_dtype(engine, signature)}]
    with tempfile.TemporaryDirectory(prefix="maas-champion-") as tmp:
        got = measure_folders(models, inputs, [1], engine, tmp)["champion"]
    if "error" in got:
        raise EvalError(f"the champion's vLLM engine could not read the held-out text: {got['error']}")
    return got["nll"] * got["eval_tokens"] / math.log(2) / max(nbytes, 1)


def versus_lm(bits_per_byte: Optional[float], champion: Optional[dict], max_increase: float) -> tuple[bool, str]:
    """(holds its own, why) for a language model scoring ``bits_per_byte`` against ``champion``; None on either
    side (no held-out lines: chat answers under 4 words) compares nothing: the version's eval.tasks decide."""
    if (skip := _not_compared(champion)) is not None:
        return skip
    theirs = champion["bits_per_byte"]
    if bits_per_byte is None or theirs is None:
        return True, f"champion {champion['ref']} not compared on held-out text: this run has none"
    if bits_per_byte - theirs > max_increase + 1e-12:
        return False, (f"{bits_per_byte:.4f} bits/byte on this run's held-out text, {bits_per_byte - theirs:.4f} "
                       f"more than champion {champion['ref']}'s {theirs:.4f} (eval.max_bits_per_byte_increase "
                       f"{max_increase:g})")
    return True, f"vs champion {champion['ref']}: {bits_per_byte:.4f} bits/byte against its {theirs:.4f}"


def versus_tasks(scores: dict, champion: Optional[dict], max_drop: float) -> tuple[bool, str]:
    """(holds its own, why) for a version's task ``scores`` against the champion's on the same tasks."""
    if not scores or _not_compared(champion) is not None:
        return True, ""
    theirs = champion.get("tasks", {})
    worse = [f"{n} {s:.3f} against its {theirs[n]:.3f}" for n, s in scores.items()
             if n in theirs and theirs[n] - s > max_drop + 1e-12]
    if worse:
        return False, (f"below champion {champion['ref']} on {', '.join(worse)} (eval.max_task_score_drop "
                       f"{max_drop:g})")
    return True, "tasks " + ", ".join(f"{n} {s:.3f} (champion {theirs[n]:.3f})" for n, s in scores.items()
                                      if n in theirs)
