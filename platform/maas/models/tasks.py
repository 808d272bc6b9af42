"""The task vocabulary: what a model version does, recorded in its manifest (``ModelVersion.task``), picking
its predictor here and its routes in serving. Nothing looks at files to guess it."""

from __future__ import annotations

from pathlib import Path
from typing import Literal, Optional

from maas.exceptions import MaasError

Task = Literal["classify", "classify_text", "embed", "generate"]
TASKS: tuple[str, ...] = Task.__args__

# what signatures written before tasks were recorded called them (and still say, for readers of signatures)
_SIGNATURE_WORDS = {"embedding": "embed", "generation": "generate", "text-classification": "classify_text"}


def task_from_signature(signature: Optional[dict]) -> str:
    """The task a signature describes: its own words mapped to the vocabulary; a feature classifier otherwise.
    Used for versions published before manifests recorded a task."""
    word = (signature or {}).get("task")
    if word in TASKS:
        return word
    return _SIGNATURE_WORDS.get(word, "classify")


def load_predictor(folder: str | Path, runtime: str, task: str):
    """The predictor of a ``task`` artifact in ``folder`` for ``runtime`` ('torch', 'torchao', 'onnxruntime').

    classify: float rows -> logits; classify_text / embed: texts -> logits / unit vectors (tokenizer in the
    folder). Language models (``generate``) have no predictor here: vLLM engines serve them."""
    from maas.models.predictor import EncoderPredictor, OnnxPredictor, TorchPredictor

    folder = Path(folder)
    if task in ("embed", "classify_text"):
        return EncoderPredictor(folder, runtime)
    if task == "generate":
        if runtime == "vllm":
            raise MaasError(f"{folder} is a Hugging Face causal LM: vLLM engines serve it "
                            "(maas.serve.runtimes.vllm)")
        raise MaasError(f"{folder} is a byte-level GPT (runtime {runtime!r}), which maas no longer serves: "
                        "retrain it with kind: lm, which publishes a Hugging Face folder that vLLM serves")
    if task != "classify":
        raise MaasError(f"unknown task {task!r}; known: {', '.join(TASKS)}")
    if runtime == "torch":
        return TorchPredictor.from_dir(folder)
    if runtime == "onnxruntime":
        return OnnxPredictor(folder / "model.onnx")
    raise MaasError(f"unknown runtime {runtime!r} for a classifier: expected 'torch' or 'onnxruntime'")
