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

from maas.spec.classifier import ClassifierSpec, ColumnSchema, CompressSpec, DataSpec, ModelSpec, SplitSpec
from maas.spec.common import NAME_PATTERN, AutoscalingSpec, CanarySpec, DeploySpec, LLMEngineSpec, TrainSpec
from maas.spec.encoder import (
                           CorpusSpec,
                           EncoderCompressSpec,
                           EncoderGateSpec,
                           EncoderModelSpec,
                           EncoderPipelineSpec,
                           VariantSpec,
)
from maas.spec.llm import LLMModelSpec, LLMPipelineSpec
from maas.spec.lm import (
                           LLM_COMPRESS_METHODS,
                           LM_SIZE_NAMES,
                           LM_TRAIN_DEFAULTS,
                           GenerateSpec,
                           LLMGateSpec,
                           LMCompressSpec,
                           LMModelSpec,
                           LMPipelineSpec,
                           LoRASpec,
                           TextDataSpec,
)
from maas.spec.loading import (
                           SPEC_CLASSES,
                           PipelineSpec,
                           apply_overrides,
                           deploy_spec_from_dict,
                           load_spec,
                           parse_override,
                           spec_from_dict,
)
from maas.spec.ops import (
                           DATA_OPS,
                           ENCODER_FINAL_STEPS,
                           ENCODER_MODEL_STEPS,
                           FITTED_OPS,
                           OPS,
                           CastOp,
                           CustomOp,
                           DataOp,
                           DedupeOp,
                           DistillStep,
                           DropNullOp,
                           EncodeOp,
                           EncoderStep,
                           FillNullOp,
                           FilterOp,
                           FinalStep,
                           FinetuneStep,
                           ImageOp,
                           PruneStructuredStep,
                           PruneUnstructuredStep,
                           RenameOp,
                           ScaleOp,
                           SelectOp,
                           TokenizeOp,
)

__all__ = [
    "CastOp", "CustomOp", "DATA_OPS", "DataOp", "DedupeOp", "DistillStep", "DropNullOp", "EncodeOp", "EncoderStep",
    "FillNullOp", "FilterOp", "FinalStep", "FinetuneStep", "ImageOp", "PruneStructuredStep",
    "PruneUnstructuredStep", "RenameOp", "ScaleOp", "SelectOp", "TokenizeOp", "AutoscalingSpec", "CanarySpec",
    "ClassifierSpec", "ColumnSchema", "CompressSpec", "CorpusSpec", "DataSpec", "DeploySpec", "LLMEngineSpec",
    "ENCODER_FINAL_STEPS", "ENCODER_MODEL_STEPS", "EncoderCompressSpec", "EncoderGateSpec", "EncoderModelSpec",
    "EncoderPipelineSpec", "FITTED_OPS", "LMModelSpec", "LM_SIZE_NAMES", "LoRASpec", "GenerateSpec", "LLMModelSpec",
    "LLMPipelineSpec", "LLM_COMPRESS_METHODS", "LLMGateSpec", "LMCompressSpec", "LMPipelineSpec",
    "LM_TRAIN_DEFAULTS", "ModelSpec", "NAME_PATTERN", "OPS", "PipelineSpec", "SPEC_CLASSES", "SplitSpec",
    "TextDataSpec", "TrainSpec", "VariantSpec", "apply_overrides", "deploy_spec_from_dict", "load_spec",
    "parse_override", "spec_from_dict",
]
