"""Task evaluations through EleutherAI's lm-evaluation-harness (``lm-eval``).

A task is the user's JSON Lines file (``maas.spec.evaluation.EvalTaskSpec``): multiple choice scored by
log-likelihood, or generation scored by exact or pattern match. Each becomes an lm-eval task configuration
(plain data: templates that only read the line's fields, no ``!function``), and lm-eval runs it against

- the endpoint that serves a version (lm-eval's ``local-completions`` model through maas's
  ``/v1/completions``: token-id prompts, ``echo`` and ``logprobs`` for the log-likelihoods, greedy generation),
  so the score is the served engine's own; or
- a Hugging Face folder in-process (lm-eval's ``hf`` model), the reference the endpoint is held to.

Every task's result names the harness version and a sha256 of its configuration and data, so two scores
are known to come from the same evaluation.
"""

from __future__ import annotations

import hashlib
import json
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional

from maas.eval.files import read_task_bytes
from maas.exceptions import EvalError
from maas.spec.evaluation import EvalTaskSpec


@dataclass
class TaskScore:
    name: str
    metric: str              # acc | exact_match | contains
    score: float             # mean over the scored lines, 0..1
    items: int               # lines scored
    sha256: str              # of the task's configuration and its data: equal hashes, the same evaluation
    answers: list = field(default_factory=list)  # per line: the log-likelihoods of the choices, or the text


@dataclass
class TaskResults:
    harness: str             # "lm-eval 0.4.13"
    model: str               # what was evaluated: an endpoint's model or a folder
    tasks: dict              # name -> TaskScore

    def scores(self) -> dict:
        """{task name: score}: what a manifest's metrics and a comparison read."""
        return {name: t.score for name, t in self.tasks.items()}

    def record(self) -> dict:
        """What a manifest keeps: the harness, and per task its metric, score, lines and hash."""
        return {"harness": self.harness, "tasks": {n: {"metric": t.metric, "score": t.score, "items": t.items,
                                                       "sha256": t.sha256} for n, t in self.tasks.items()}}

    def full_record(self) -> dict:
        """``record`` with what was evaluated and each line's answers (log-likelihoods of the choices, or the
        generated text), for whoever reads why two versions differ (``maas eval --json``, an eval job)."""
        record = self.record()
        for name, task in self.tasks.items():
            record["tasks"][name]["answers"] = task.answers
        return {**record, "model": self.model}


def _check_line(task: EvalTaskSpec, where: str, line: dict) -> None:
    def need(key: str, kind, what: str):
        if not isinstance(line.get(key), kind) or isinstance(line.get(key), bool):
            raise EvalError(f"{where}: '{key}' must be {what} (got {json.dumps(line.get(key))[:60]})")

    if task.type == "multiple_choice":
        need("question", str, "a string")
        need("choices", list, "a list of at least two strings")
        if len(line["choices"]) < 2 or not all(isinstance(c, str) and c for c in line["choices"]):
            raise EvalError(f"{where}: 'choices' must be a list of at least two non-empty strings")
        need("answer", int, f"the index of the right choice (0..{len(line['choices']) - 1})")
        if not 0 <= line["answer"] < len(line["choices"]):
            raise EvalError(f"{where}: 'answer' {line['answer']} is not an index of 'choices' "
                            f"(0..{len(line['choices']) - 1})")
    else:
        need("prompt", str, "a string")
        need("answer", str, "a string")


def read_task_file(task: EvalTaskSpec, folder: Path) -> tuple[Path, bytes]:
    """The task's lines (its first ``limit``), checked, copied into ``folder`` (object storage included);
    returns (path, the bytes written).

    Raises:
        EvalError: the file cannot be read, a line is not a JSON object, or a field is missing or mistyped.
    """
    data = read_task_bytes(task.name, task.path)
    lines = [(i, text) for i, text in enumerate(data.decode("utf-8", errors="replace").splitlines(), 1)
             if text.strip()]
    if not lines:
        raise EvalError(f"eval task {task.name}: {task.path} has no lines")
    lines = lines[: task.limit] if task.limit else lines
    for number, text in lines:
        where = f"eval task {task.name}: {task.path} line {number}"
        try:
            line = json.loads(text)
        except ValueError as exc:
            raise EvalError(f"{where}: not JSON ({exc})") from None
        if not isinstance(line, dict):
            raise EvalError(f"{where}: each line must be a JSON object")
        _check_line(task, where, line)
    local = folder / f"{task.name}.jsonl"
    kept = "\n".join(text for _, text in lines).encode() + b"\n"
    local.write_bytes(kept)
    return local, kept


def task_config(task: EvalTaskSpec, data_file: Path) -> dict:
    """The lm-eval configuration of ``task`` reading ``data_file``."""
    config = {"task": f"maas_{task.name}", "dataset_path": "json", "test_split": "test",
              "dataset_kwargs": {"data_files": {"test": str(data_file)}}}
    if task.type == "multiple_choice":
        return {**config, "output_type": "multiple_choice", "doc_to_text": "{{question}}",
                "doc_to_choice": "{{choices}}", "doc_to_target": "{{answer}}", "target_delimiter": " ",
                "metric_list": [{"metric": "acc", "aggregation": "mean", "higher_is_better": True}]}
    config.update(output_type="generate_until", doc_to_text="{{prompt}}", doc_to_target="{{answer}}",
                  generation_kwargs={"until": task.stop, "max_gen_toks": task.max_tokens, "do_sample": False,
                                     "temperature": 0.0},
                  metric_list=[{"metric": "exact_match", "aggregation": "mean", "higher_is_better": True,
                                "regexes_to_ignore": [r"^\s+", r"\s+$"]}])
    if task.match == "regex":
        config["filter_list"] = [{"name": "match", "filter": [
            {"function": "regex", "regex_pattern": task.pattern, "group_select": 0, "fallback": ""},
            {"function": "take_first"}]}]
    return config


def _model(endpoint: Optional[str], model: Optional[str], tokenizer: Optional[str], pretrained: Optional[str],
           peft: Optional[str], api_key: Optional[str], concurrency: int, max_length: int) -> tuple[str, dict, str]:
    if pretrained:
        args = {"pretrained": pretrained, "dtype": "float32", "device": "cpu", "max_length": max_length}
        return "hf", {**args, "peft": peft} if peft else args, f"{pretrained}" + (f" + {peft}" if peft else "")
    if not (endpoint and model and tokenizer):
        raise EvalError("evaluate either a folder (pretrained) or an endpoint with its model name and a "
                        "tokenizer folder")
    args = {"base_url": f"{endpoint.rstrip('/')}/v1/completions", "model": model, "tokenizer": tokenizer,
            "tokenizer_backend": "huggingface", "tokenized_requests": True, "num_concurrent": concurrency,
            "max_retries": 2, "max_length": max_length, "timeout": 120}
    if api_key:
        args["header"] = {"Authorization": f"Bearer {api_key}"}
    return "local-completions", args, f"{model} at {endpoint}"


def run_tasks(tasks: list[EvalTaskSpec], *, endpoint: Optional[str] = None, model: Optional[str] = None,
              tokenizer: Optional[str] = None, pretrained: Optional[str] = None, peft: Optional[str] = None,
              api_key: Optional[str] = None, concurrency: int = 4, max_length: int = 512,
              batch_size: int = 1) -> TaskResults:
    """Run ``tasks`` with lm-eval against ``endpoint`` (serving ``model``; ``tokenizer`` is the version's
    folder, for the token ids lm-eval sends) or in-process on the folder ``pretrained`` (with the LoRA
    adapters in the folder ``peft`` on it, ``batch_size`` sequences per forward pass).

    Raises:
        EvalError: a task file is unreadable or malformed, or neither target is given.
    """
    import lm_eval
    from lm_eval import simple_evaluate

    kind, args, what = _model(endpoint, model, tokenizer, pretrained, peft, api_key, concurrency, max_length)
    with tempfile.TemporaryDirectory(prefix="maas-eval-") as tmp:
        configs, hashes = {}, {}
        for task in tasks:
            config, data = _config(task, Path(tmp))
            configs[task.name] = config
            stable = {**config, "dataset_kwargs": None}  # the temp path is not the task
            hashes[task.name] = hashlib.sha256(json.dumps(stable, sort_keys=True).encode() + data).hexdigest()
        out = simple_evaluate(model=kind, model_args=args, tasks=list(configs.values()), log_samples=True,
                              bootstrap_iters=0, batch_size=batch_size if kind == "hf" else 1, verbosity="ERROR",
                              task_manager=task_manager())
    return TaskResults(f"lm-eval {lm_eval.__version__}", what,
                       {t.name: _score(t, out, hashes[t.name], configs[t.name]) for t in tasks})


def task_manager():
    """lm-eval's task manager without the harness's built-in tasks: maas hands it every task as a whole
    configuration (``include`` is refused), and indexing the ~27,000 built-in YAML files took 27 s of every
    evaluation on 2 cores (26,619 YAML loads a call; docs/design/compression.md)."""
    from lm_eval.tasks import TaskManager

    return TaskManager(include_defaults=False)


def _config(task: EvalTaskSpec, folder: Path) -> tuple[dict, bytes]:
    """(the harness configuration of ``task``, the bytes that define it besides the configuration)."""
    if task.type == "lm_eval":
        from maas.eval.harness_yaml import load_harness_task

        return load_harness_task(task.name, task.path, folder)
    path, data = read_task_file(task, folder)
    return task_config(task, path), data


def metric_of(config: dict) -> str:
    """The metric a task's score is read from: the first of its harness configuration's."""
    first = config["metric_list"][0]
    return first["metric"] if isinstance(first, dict) else first


def _score(task: EvalTaskSpec, out: dict, sha256: str, config: dict) -> TaskScore:
    """``task``'s score and answers from the harness's output, read as its configuration ``config`` says."""
    key, metric, output = f"maas_{task.name}", metric_of(config), config["output_type"]
    samples = sorted(out["samples"][key], key=lambda s: s["doc_id"])
    if output in ("multiple_choice", "loglikelihood"):
        answers = [[round(float(r[0]), 6) for r in s["filtered_resps"]] for s in samples]
    else:
        answers = [s["filtered_resps"][0] if isinstance(s["filtered_resps"], list) else s["filtered_resps"]
                   for s in samples]
    if task.match == "contains":  # scored here from the harness's own samples: its config stays data
        hits = [str(s["target"]).strip() in str(answer) for s, answer in zip(samples, answers)]
        return TaskScore(task.name, "contains", sum(hits) / max(len(hits), 1), len(samples), sha256, answers)
    value = next(v for k, v in out["results"][key].items() if k.startswith(f"{metric},"))
    return TaskScore(task.name, metric, float(value), len(samples), sha256, answers)


def version_files(registry, mv) -> tuple[Path, Optional[Path], bool]:
    """(folder, base folder or None, quantized) of the registered language model ``mv``, fetched and verified:
    LoRA adapters come with their base's folder; ``quantized``: a compressed-tensors folder, which only its
    vLLM engine runs here."""
    folder, _ = registry.fetch(mv.ref)
    if mv.signature.get("format") == "peft-lora":
        base, _ = registry.fetch(mv.signature["base"])
        return folder, base, False
    return folder, None, "quantization_config" in json.loads((folder / "config.json").read_text())


def run_on_files(tasks: list[EvalTaskSpec], folder, base_folder=None, **kwargs) -> TaskResults:
    """``tasks`` with lm-eval in-process on a Hugging Face ``folder``, or on LoRA adapters in ``folder`` over
    ``base_folder``."""
    if base_folder is None:
        return run_tasks(tasks, pretrained=str(folder), **kwargs)
    return run_tasks(tasks, pretrained=str(base_folder), peft=str(folder), **kwargs)


def evaluate_refs(registry, refs: list[str], tasks: list[EvalTaskSpec],
                  progress: Callable[[str], None] = lambda line: None) -> dict:
    """{version ref: TaskResults} of each of ``refs`` (``name@alias``, ``name/version``, ``name``) on ``tasks``,
    with lm-eval in-process on its verified files (an adapter as peft on its base). What ``maas eval`` runs
    here and an eval job runs on a cluster.

    Raises:
        EvalError: a task file is malformed, a version is not a language model or only runs in vLLM.
    """
    results = {}
    for ref in refs:
        folder, base, resolved = version_target(registry, ref)
        progress(f"{resolved}: {len(tasks)} task(s) with lm-eval ...")
        results[resolved] = run_on_files(tasks, folder, base)
    return results


def version_target(registry, ref: str, served: bool = False) -> tuple[Path, Optional[Path], str]:
    """(folder, base folder or None, the version's ref) of a registered language model, for ``run_on_files``;
    ``served``: only its tokenizer will be read (the base's, for adapters), to score its endpoint.

    Raises:
        EvalError: the version is not a language model, or is quantized (its files only run in vLLM here:
            serve it and evaluate through the endpoint).
    """
    mv = registry.resolve(ref)
    if mv.task != "generate":
        raise EvalError(f"{mv.ref} is a '{mv.task}' model: task evaluations need a language model (task generate)")
    folder, base, quantized = version_files(registry, mv)
    if quantized and not served:
        raise EvalError(f"{mv.ref} is quantized and runs only in its vLLM engine here: serve it (maas serve "
                        f"{mv.ref}) and evaluate the endpoint (maas eval {mv.ref} --endpoint URL)")
    return folder, base, mv.ref


def cloze_task(lines: list[str], folder: str, choices: int = 4, seed: int = 0) -> EvalTaskSpec:
    """A multiple-choice task made from held-out text, so every language model run has a task score with no
    extra data: each line (4 words or more) cut before its middle word; the choices are that word and
    ``choices - 1`` other words of the same text, in a seeded order. Written to ``folder`` (the run's, local
    or object storage) as ``cloze.jsonl``; the same lines give the same task, for the champion too."""
    import random

    from maas.storage import put_bytes

    rng = random.Random(seed)
    cut = [(w[: len(w) // 2], w[len(w) // 2]) for w in (line.split() for line in lines) if len(w) >= 4]
    vocabulary = sorted({w for line in lines for w in line.split()})
    rows = []
    for prefix, word in cut:
        others = rng.sample([w for w in vocabulary if w != word], min(choices - 1, len(vocabulary) - 1))
        options = [word, *others]
        rng.shuffle(options)
        rows.append({"question": " ".join(prefix), "choices": options, "answer": options.index(word)})
    if not rows or len(rows[0]["choices"]) < 2:
        raise EvalError("the held-out text is too short for a cloze task (lines of 4 words or more, 2 distinct "
                        "words); set eval.cloze: false")
    path = put_bytes(folder, "cloze.jsonl", "\n".join(json.dumps(r) for r in rows).encode() + b"\n")
    return EvalTaskSpec(name="cloze", path=path, type="multiple_choice")
