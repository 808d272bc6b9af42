"""Bringing a Hugging Face-format causal LM into the registry (``maas models import``).

A folder (local, or any pyarrow.fs URI such as ``s3://bucket/models/llama``) with ``config.json``,
safetensors weights and a fast tokenizer (``tokenizer.json``) is checked, then published as a version whose
every file is checksummed, with the source in its lineage, ``task: generate`` and ``runtime: vllm`` (the
engine that serves it). A folder an engine could not load is refused before anything is published, naming
what is wrong and the fix: pickled weights only (``pytorch_model.bin``: never loaded, by policy), no
``tokenizer.json``, an architecture neither vLLM (when installed) nor transformers knows, a damaged
safetensors header, or sub-folders (artifacts are plain file names).
"""

from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path
from typing import Optional

from maas.exceptions import RegistryError
from maas.registry.model_version import ARTIFACT, ModelVersion
from maas.spec.llm import hub_hint

PICKLED = (".bin", ".pt", ".pth", ".pkl", ".ckpt")
SKIPPED_NAMES = {".gitattributes", "README.md", "LICENSE", "LICENSE.txt"}


def known_architectures() -> tuple[set[str], str]:
    """Causal-LM architectures the serving engine can load: vLLM's registry when vLLM is installed, else
    transformers' causal-LM classes (what vLLM falls back to)."""
    try:
        from vllm import ModelRegistry

        return set(ModelRegistry.get_supported_archs()), "vLLM"
    except Exception:  # not installed here (CPU test machines install it for serving only)
        from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

        return set(MODEL_FOR_CAUSAL_LM_MAPPING_NAMES.values()), "transformers"


def _fetch_source(source: str, dest: Path) -> Path:
    """A local folder as is; a URI copied into ``dest`` (top-level files only: sub-folders are refused)."""
    if "://" not in source or source.startswith("file://"):
        folder = Path(source.removeprefix("file://")).expanduser()
        if not folder.is_dir():
            raise RegistryError(hub_hint(source) or f"import: {source} is not a folder (give the folder holding "
                                                     "config.json)")
        return folder
    import pyarrow.fs as pafs

    try:
        fs, root = pafs.FileSystem.from_uri(source)
        infos = fs.get_file_info(pafs.FileSelector(root.rstrip("/"), recursive=True))
    except (OSError, ValueError) as exc:
        raise RegistryError(f"import: cannot list {source}: {exc}") from None
    dest.mkdir(parents=True, exist_ok=True)
    for info in infos:
        rel = info.path[len(root.rstrip("/")) + 1:]
        if info.type == pafs.FileType.Directory or "/" in rel:
            raise RegistryError(f"import: {source} has a sub-folder ({rel.split('/')[0]}); a model version holds "
                                "plain files: flatten it, or import the folder that holds config.json")
        with fs.open_input_stream(info.path) as fin, open(dest / rel, "wb") as fout:
            shutil.copyfileobj(fin, fout, 1 << 20)
    return dest


def check_hf_folder(folder: Path) -> tuple[dict[str, Path], dict, list[str]]:
    """({artifact name: path} to publish, the signature, names skipped) for a Hugging Face causal-LM folder.

    Raises:
        RegistryError: naming what an engine could not load and how to fix it.
    """
    entries = sorted(folder.iterdir())
    nested = [p.name for p in entries if p.is_dir() and not p.name.startswith(".")]
    if nested:
        raise RegistryError(f"import: {folder} has sub-folder(s) {nested}; a model version holds plain files: "
                            "import the folder that holds config.json")
    files = {p.name: p for p in entries if p.is_file()}
    if "config.json" not in files:
        raise RegistryError(f"import: {folder} has no config.json: not a Hugging Face model folder")
    try:
        config = json.loads(files["config.json"].read_text())
    except ValueError as exc:
        raise RegistryError(f"import: {folder}/config.json is not JSON ({exc})") from None
    archs = config.get("architectures") or []
    known, by = known_architectures()
    if not archs or not all(a in known for a in archs):
        close = sorted(a for a in known if a.lower().startswith(str((archs or ['?'])[0])[:4].lower()))[:5]
        raise RegistryError(f"import: architecture {archs or 'missing'} (config.json 'architectures') is not one "
                            f"{by} can load as a causal LM" + (f"; similar: {', '.join(close)}" if close else ""))
    weights = [n for n in files if n.endswith(".safetensors")]
    pickled = [n for n in files if n.endswith(PICKLED)]
    if not weights:
        why = f"only pickled weights ({', '.join(pickled)})" if pickled else "no weights"
        raise RegistryError(f"import: {folder} has {why}; maas never loads pickles. Convert with transformers: "
                            "AutoModelForCausalLM.from_pretrained(dir).save_pretrained(dir, safe_serialization=True)")
    from safetensors import safe_open

    for name in weights:
        try:
            with safe_open(str(files[name]), framework="np"):
                pass
        except Exception as exc:
            raise RegistryError(f"import: {name} is not a readable safetensors file ({exc})") from None
    index = files.get("model.safetensors.index.json")
    if index is not None:
        shards = set(json.loads(index.read_text()).get("weight_map", {}).values())
        missing = sorted(shards - set(weights))
        if missing:
            raise RegistryError(f"import: model.safetensors.index.json names missing shard(s) {missing}")
    if "tokenizer.json" not in files:
        raise RegistryError(f"import: {folder} has no tokenizer.json (a fast tokenizer): save one with "
                            "AutoTokenizer.from_pretrained(dir).save_pretrained(dir)")
    tok_config = json.loads(files["tokenizer_config.json"].read_text()) if "tokenizer_config.json" in files else {}
    chat = bool(tok_config.get("chat_template")) or "chat_template.jinja" in files
    bad = [n for n in files if not ARTIFACT.fullmatch(n)]
    if bad:
        raise RegistryError(f"import: file name(s) {bad} are not plain file names")
    skipped = sorted(n for n in files if n in SKIPPED_NAMES or n.endswith(PICKLED) or n.startswith("."))
    publish = {n: p for n, p in files.items() if n not in skipped}
    signature = {"task": "generate", "format": "huggingface", "architecture": archs[0],
                 "model_type": config.get("model_type"), "chat_template": chat,
                 "max_position_embeddings": config.get("max_position_embeddings"),
                 "vocab_size": config.get("vocab_size"),
                 "inputs": [{"name": "text_input", "datatype": "BYTES", "shape": [1]}],
                 "outputs": [{"name": "text_output", "datatype": "BYTES", "shape": [1]}]}
    return publish, signature, skipped


def import_hf_model(registry, source: str, name: str, by: Optional[str] = None) -> tuple[ModelVersion, list]:
    """Check and publish the Hugging Face causal LM at ``source`` as the next version of ``name``.
    Returns (the version, names skipped)."""
    ModelVersion.check_name(name)
    with tempfile.TemporaryDirectory(prefix="maas-import-") as tmp:
        folder = _fetch_source(source, Path(tmp) / "src")
        files, signature, skipped = check_hf_folder(folder)
        mv = registry.publish(name, files, runtime="vllm", task="generate", signature=signature,
                              lineage={"method": "import", "source": source, "imported_by": by, "parent": None,
                                       "skipped": skipped})
    return mv, skipped
