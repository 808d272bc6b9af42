"""lm-evaluation-harness task YAMLs as data: what maas runs of a user's task file, and what it refuses.

A harness YAML can run code (``!function`` tags, ``process_docs`` / ``process_results`` hooks, ``include`` of
other files, Jinja templates that reach into Python objects) and can download data sets from the Hub. maas
specs are data, so a ``type: lm_eval`` task is loaded with ``yaml.safe_load`` (a ``!function`` tag does not
even parse) and kept only if it is data: known keys, templates that only name the line's fields
(``{{question}}``, ``{{choices[0]}}``), the harness's own metrics and filters by name, and JSON Lines, CSV or
Parquet files next to it or on object storage (copied into the run's folder, like a JSON Lines task's file).
Everything refused is named with its key and what to do instead.
"""

from __future__ import annotations

import re
from pathlib import Path

import yaml

from maas.eval.files import read_task_bytes
from maas.exceptions import EvalError

KEYS = {"task", "dataset_path", "dataset_kwargs", "test_split", "validation_split", "output_type", "doc_to_text",
        "doc_to_target", "doc_to_choice", "target_delimiter", "fewshot_delimiter", "generation_kwargs",
        "metric_list", "filter_list", "num_fewshot", "fewshot_split", "description", "tag", "metadata",
        "should_decontaminate"}
CODE_KEYS = {"process_docs", "process_results", "include", "custom_dataset", "doc_to_decontamination_query",
             "class", "fewshot_config"}
OUTPUT_TYPES = {"multiple_choice", "generate_until", "loglikelihood"}
METRICS = {"acc", "acc_norm", "exact_match"}
FILTERS = {"regex", "take_first", "lowercase", "uppercase", "remove_whitespace", "multi_choice_regex"}
FORMATS = {"json", "csv", "parquet"}
# a template may hold text and {{ field }}, {{ field[0] }} or {{ field.sub }}: nothing that calls or filters, and
# no name with a leading underscore (``__class__`` is how a Jinja template walks out into Python)
_TEMPLATE = re.compile(r"(?:[^{}]|\{\{\s*[A-Za-z]\w*(?:\[\d+\]|\.[A-Za-z]\w*)*\s*\}\})*")


def load_harness_task(name: str, uri: str, folder: Path) -> tuple[dict, bytes]:
    """The harness configuration of the task YAML at ``uri`` (named ``maas_<name>``), its data files copied
    into ``folder``; returns (config, the bytes that define the task: YAML and data, for its hash).

    Raises:
        EvalError: the YAML runs code, names an unknown key, a template that is more than field names, a
        metric or filter maas does not run, or data that is not a local or object-storage file.
    """
    raw = read_task_bytes(name, uri)
    try:
        config = yaml.safe_load(raw.decode("utf-8"))
    except yaml.constructor.ConstructorError as exc:
        tag = str(exc.problem).split(" ")[-1].strip("'")
        raise EvalError(f"eval task {name}: {uri} line {exc.problem_mark.line + 1}: {tag} tags run Python, which "
                        "maas does not run from a task file: use templates over the line's fields, or a "
                        "multiple_choice / generate JSON Lines task") from None
    except (yaml.YAMLError, UnicodeDecodeError) as exc:
        raise EvalError(f"eval task {name}: {uri} is not YAML ({exc})") from None
    if not isinstance(config, dict):
        raise EvalError(f"eval task {name}: {uri} must be a mapping of the harness's task keys")
    _check_keys(name, uri, config)
    data = _copy_data(name, uri, config, folder)
    return {**config, "task": f"maas_{name}"}, raw + data


def _check_keys(name: str, uri: str, config: dict) -> None:
    where = f"eval task {name}: {uri}"
    for key in config:
        if key in CODE_KEYS:
            raise EvalError(f"{where}: '{key}' runs code or reads other files, which maas does not run from a "
                            "task file")
        if key not in KEYS:
            raise EvalError(f"{where}: unknown key '{key}'; maas runs these harness keys: {', '.join(sorted(KEYS))}")
    if config.get("output_type") not in OUTPUT_TYPES:
        raise EvalError(f"{where}: output_type must be one of {', '.join(sorted(OUTPUT_TYPES))}")
    for key in ("doc_to_text", "doc_to_target", "doc_to_choice"):
        for text in _strings(config.get(key)):
            if not _TEMPLATE.fullmatch(text):
                raise EvalError(f"{where}: {key} {text!r}: a template may only name the line's fields, e.g. "
                                "'{{question}}' or '{{choices[0]}}' (no filters, calls or statements)")
    metrics = [m.get("metric") if isinstance(m, dict) else m for m in config.get("metric_list") or []]
    if not metrics or any(m not in METRICS for m in metrics):
        raise EvalError(f"{where}: metric_list must name metrics maas runs: {', '.join(sorted(METRICS))}")
    for group in config.get("filter_list") or []:
        for step in (group.get("filter") if isinstance(group, dict) else None) or []:
            if not isinstance(step, dict) or step.get("function") not in FILTERS:
                raise EvalError(f"{where}: filter {step!r}: maas runs the harness's {', '.join(sorted(FILTERS))}")


def _strings(value) -> list:
    if isinstance(value, str):
        return [value]
    if isinstance(value, list):
        return [v for v in value if isinstance(v, str)]
    return []


def _copy_data(name: str, uri: str, config: dict, folder: Path) -> bytes:
    """Copy the task's data files (beside the YAML, or URIs) into ``folder`` and point the config at them."""
    where = f"eval task {name}: {uri}"
    if config.get("dataset_path") not in FORMATS:
        raise EvalError(f"{where}: dataset_path must be one of {', '.join(sorted(FORMATS))} with "
                        "dataset_kwargs.data_files (maas downloads no data sets at run time)")
    files = (config.get("dataset_kwargs") or {}).get("data_files")
    if not isinstance(files, dict) or not files:
        raise EvalError(f"{where}: dataset_kwargs.data_files must map splits to files, e.g. {{test: items.jsonl}}")
    base = uri.rsplit("/", 1)[0] if "/" in uri else "."
    copied, data = {}, b""
    for split, file in files.items():
        if not isinstance(file, str) or not file or ".." in Path(file).parts:
            raise EvalError(f"{where}: data_files.{split} must be a file name beside the YAML or a URI")
        source = file if "://" in file or file.startswith("/") else f"{base}/{file}"
        body = read_task_bytes(name, source)
        target = folder / f"{name}-{split}{Path(file).suffix}"
        target.write_bytes(body)
        copied[split], data = str(target), data + body
    config["dataset_kwargs"] = {**config["dataset_kwargs"], "data_files": copied}
    return data

