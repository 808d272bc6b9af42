"""The pipeline spec: the single source of configuration for every stage, one module per kind.

One pydantic model per kind (``classifier``, ``encoder``, ``lm``, ``llm``; ``kind:`` in a spec picks it) serves YAML
files, CLI ``key=value`` overrides, the SDK and job payloads. Unknown keys are refused with a "did you mean",
and every problem is reported at once with its field path. ``common`` holds what every kind shares (training,
serving, the spec hash), ``loading`` the YAML/overrides/error formatting.

Example:
    >>> spec = load_spec("examples/digits.yaml", overrides=["train.epochs=3"])
    >>> spec.train.epochs
    3
"""

from maas.spec.common import (NAME_PATTERN, TrainSpec, AutoscalingSpec, CanarySpec, DeploySpec, LLMEngineSpec)
from maas.spec.ops import (OPS, FITTED_OPS, DATA_OPS, DataOp, SelectOp, RenameOp, CastOp, FillNullOp, DropNullOp,
                           DedupeOp, FilterOp, CustomOp, ImageOp, TokenizeOp, ScaleOp, EncodeOp, ENCODER_FINAL_STEPS,
                           ENCODER_MODEL_STEPS, EncoderStep, PruneStructuredStep, PruneUnstructuredStep, DistillStep,
                           FinetuneStep, FinalStep)
from maas.spec.classifier import (SplitSpec, ColumnSchema, DataSpec, ModelSpec, CompressSpec, ClassifierSpec)
from maas.spec.encoder import (EncoderModelSpec, CorpusSpec, EncoderGateSpec, VariantSpec, EncoderCompressSpec,
                               EncoderPipelineSpec)
from maas.spec.lm import (LM_SIZE_NAMES, TextDataSpec, LMModelSpec, LoRASpec, GenerateSpec, LM_TRAIN_DEFAULTS,
                          LLM_COMPRESS_METHODS, LLMGateSpec, LMCompressSpec, LMPipelineSpec)
from maas.spec.llm import LLMModelSpec, LLMPipelineSpec
from maas.spec.loading import (SPEC_CLASSES, PipelineSpec, parse_override, apply_overrides, spec_from_dict,
                               load_spec, deploy_spec_from_dict)

__all__ = [
    "CastOp", "CustomOp", "DATA_OPS", "DataOp", "DedupeOp", "DistillStep", "DropNullOp", "EncodeOp", "EncoderStep",
    "FillNullOp", "FilterOp", "FinalStep", "FinetuneStep", "ImageOp", "PruneStructuredStep", "PruneUnstructuredStep",
    "RenameOp", "ScaleOp", "SelectOp", "TokenizeOp",
    "AutoscalingSpec", "CanarySpec", "ClassifierSpec", "ColumnSchema", "CompressSpec", "CorpusSpec", "DataSpec",
    "DeploySpec", "LLMEngineSpec", "ENCODER_FINAL_STEPS", "ENCODER_MODEL_STEPS", "EncoderCompressSpec", "EncoderGateSpec",
    "EncoderModelSpec", "EncoderPipelineSpec", "FITTED_OPS", "LMModelSpec", "LM_SIZE_NAMES", "LoRASpec", "GenerateSpec",
    "LLMModelSpec", "LLMPipelineSpec", "LLM_COMPRESS_METHODS", "LLMGateSpec", "LMCompressSpec", "LMPipelineSpec", "LM_TRAIN_DEFAULTS", "ModelSpec", "NAME_PATTERN", "OPS", "PipelineSpec", "SPEC_CLASSES",
    "SplitSpec", "TextDataSpec", "TrainSpec", "VariantSpec", "apply_overrides", "deploy_spec_from_dict", "load_spec", "parse_override",
    "spec_from_dict",
]
