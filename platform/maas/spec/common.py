"""What every pipeline kind's spec shares: strict models (unknown keys refused), the name rule, training,
serving, and the spec hash."""

from __future__ import annotations

import hashlib
import json
from typing import Any, Literal, NamedTuple, Optional, Union

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

NAME_PATTERN = r"^[a-z0-9][a-z0-9_.-]{0,62}$"
_NAME_PATTERN = NAME_PATTERN


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class InputPath(NamedTuple):
    """A file, folder or glob a spec reads: ``field`` (its path in the spec), ``uri``, ``format`` (a data format,
    ``json`` for JSON Lines, or ``model`` for a Hugging Face folder), and whether a missing one is ``written``
    on the first run (``data.bootstrap``)."""

    field: str
    uri: str
    format: str
    written: bool = False


class _Pipeline(_Strict):
    """A whole pipeline's spec: the top of one kind's configuration."""

    def inputs(self) -> list[InputPath]:
        """What this spec reads from files (``maas validate`` checks they are there)."""
        return []

    def spec_hash(self) -> str:
        """sha256 of the canonical JSON form: the same configuration always hashes the same."""
        canonical = json.dumps(self.model_dump(mode="json"), sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(canonical.encode()).hexdigest()


class TrainSpec(_Strict):
    num_workers: int = Field(2, ge=1, description="Ray Train workers (data-parallel ranks).")
    strategy: Literal["ddp", "fsdp"] = Field(
        "ddp", description="'ddp': a full replica per worker, gradients all-reduced. 'fsdp': PyTorch FSDP2 "
                           "fully_shard per block (gloo on CPU, NCCL on GPU): parameters, gradients and optimizer "
                           "state sharded across workers; checkpoints are written as per-rank shards.")
    placement_strategy: Literal["PACK", "SPREAD", "STRICT_SPREAD"] = Field(
        "PACK", description="How workers are placed on nodes: PACK fills a node first, SPREAD prefers distinct "
                            "nodes, STRICT_SPREAD requires one node per worker.")
    device: Literal["auto", "cpu", "cuda"] = Field(
        "auto", description="'auto' trains on GPUs when the cluster has enough of them, else on CPUs.")
    cpus_per_worker: float = Field(1, gt=0, description="CPUs reserved per training worker.")
    epochs: int = Field(20, ge=1, description="Passes over the train split.")
    batch_size: int = Field(64, ge=1, description="Per-worker batch size.")
    precision: Literal["fp32", "bf16"] = Field(
        "fp32", description="'bf16': forward and loss under bfloat16 autocast (on GPUs with bf16 support, and "
                            "on CPUs); weights, optimizer state and checkpoints stay fp32.")
    learning_rate: float = Field(2e-3, gt=0, description="AdamW learning rate.")
    weight_decay: float = Field(1e-4, ge=0, description="AdamW weight decay.")
    seed: int = Field(0, description="Seed for weights and shuffling.")
    checkpoints_to_keep: int = Field(2, ge=1, description="Best checkpoints kept, ranked by validation accuracy.")
    checkpoint_every_epochs: int = Field(
        5, ge=0, description="Also checkpoint every N epochs (0: never), bounding what a failure can cost; a "
                             "checkpoint is always written when validation accuracy improves and at the end.")
    cache_shard_mb: float = Field(
        256, ge=0, description="A worker's shard smaller than this is cut on the driver, held in the worker's "
                               "memory and reshuffled each epoch; larger shards stream through Ray Data's split "
                               "every epoch (0: always stream).")
    max_failures: int = Field(1, ge=0, description="Worker-group restarts (from the last checkpoint) on failure.")
    grad_accumulation_steps: int = Field(1, ge=1, description="Micro-batches per optimizer step (gradients are "
                                                             "synchronised once per step).")
    max_grad_norm: float = Field(0.0, ge=0, description="Clip the global gradient norm to this (0: no clipping).")
    lr_schedule: Literal["constant", "cosine"] = Field("constant", description="Learning rate after warmup: "
                                                                             "constant, or cosine decay to zero.")
    warmup_fraction: float = Field(0.0, ge=0, lt=1, description="Share of the optimizer steps spent ramping the "
                                                               "learning rate up linearly from zero.")
    early_stopping_patience: int = Field(0, ge=0, description="Stop after this many epochs without a better "
                                                             "validation accuracy (0: never stop early).")
    log_every_steps: int = Field(10, ge=1, description="Record loss, learning rate, gradient norm and throughput "
                                                      "every N optimizer steps (train_metrics.jsonl, PNG).")
    compile: bool = Field(False, description="torch.compile each transformer block (regional compilation: one "
                                             "compiled graph shared by identical blocks; the whole model when it "
                                             "names no blocks). Fuses the elementwise work between matrix "
                                             "products; pays off on GPUs, costs a compile at start.")


class AutoscalingSpec(_Strict):
    min_replicas: int = Field(1, ge=0, description="Fewest replicas; 0 scales to zero when idle.")
    max_replicas: int = Field(4, ge=1, description="Most replicas.")
    target_ongoing_requests: float = Field(8, gt=0, description="Requests in flight per replica to aim for.")
    initial_replicas: Optional[int] = Field(None, ge=0, description="Replicas at start (default: min_replicas).")

    @model_validator(mode="after")
    def _bounds(self) -> "AutoscalingSpec":
        if self.min_replicas > self.max_replicas:
            raise ValueError(f"min_replicas ({self.min_replicas}) must be <= max_replicas ({self.max_replicas})")
        if self.initial_replicas is not None and not self.min_replicas <= self.initial_replicas <= self.max_replicas:
            raise ValueError("initial_replicas must lie between min_replicas and max_replicas")
        return self


class CanarySpec(_Strict):
    alias: str = Field(..., pattern=_NAME_PATTERN, description="Alias of the candidate version, e.g. 'candidate'.")
    percent: float = Field(..., ge=0, le=100, description="Share of unpinned requests sent to the candidate.")


GRPC_DEFAULT_MESSAGE_BYTES = 4 * 1024 * 1024


class LLMEngineSpec(_Strict):
    """How a generative model (runtime vllm) is served: a vLLM engine (Ray Serve LLM's LLMServer) per served
    version in each replica of the application, which takes its requests itself (maas.serve.runtimes.vllm)."""

    num_gpus: Union[Literal["auto"], int] = Field(
        "auto", description="GPUs per engine: 'auto' one when the Ray cluster has a GPU, else vLLM on CPUs (an "
        "autoscaling cluster whose GPU nodes are not up yet counts as none: give N there); 0 runs vLLM on CPUs; "
        "N > 0 places its workers on N GPUs of a placement group of its own (tensor parallel over N).")
    num_cpus: float = Field(1, gt=0, description="CPUs reserved for the engine on CPUs (in its replica's bundle).")
    num_replicas: int = Field(1, ge=1, description="Engines per served version: an application serving generative "
                              "versions runs at least this many replicas, each with its own engine per version.")
    max_model_len: Optional[int] = Field(None, ge=16, description="Context window the engine admits (default: "
                                                                  "the model's max_position_embeddings).")
    max_num_seqs: int = Field(64, ge=1, description="Sequences the engine batches at once (continuous batching).")
    kv_cache_gib: float = Field(1.0, gt=0, description="KV cache size on CPU (VLLM_CPU_KVCACHE_SPACE, GiB).")
    gpu_memory_utilization: float = Field(0.9, gt=0, le=1, description="Share of GPU memory vLLM may take.")
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = Field(
        "auto", description="Weights and activations dtype ('auto': the model's; float32 on CPUs without bf16).")
    enforce_eager: bool = Field(True, description="Skip graph capture/compilation: starts in seconds on CPU; set "
                                                  "false on GPUs for CUDA graphs.")
    stream_interval_ms: float = Field(0, ge=0, le=1000, description="A stream waits this long after each event it "
                                      "sends; vLLM merges the tokens made meanwhile into the next (0: every "
                                      "token as soon as it is made; the first is never held back).")
    start_timeout_s: float = Field(900, gt=0, description="How long an engine may take to start (fetch, verify, "
                                   "load, profile, compile) before it is reported failed; deploys wait this long.")
    max_tokens: int = Field(4096, ge=1, description="Largest max_tokens a request may ask for (400 above); also "
                            "the answer's length limit when a request sets none (the context's rest otherwise).")
    max_n: int = Field(8, ge=1, description="Largest n / best_of a request may ask for (400 above).")
    max_sequences: int = Field(16, ge=1, description="Most sequences one request makes: its prompts times its n "
                               "(or best_of); 400 above.")
    allow_forced_length: bool = Field(False, description="Let requests force an answer's length past the model's "
                                      "end of text (ignore_eos, min_tokens); off: a 400 naming the field.")
    allowed_media_domains: list[str] = Field(default_factory=list, description="Hosts (and their subdomains) "
                                             "the engine may fetch images, audio or video from for multimodal "
                                             "requests; other remote media URLs get a 400 (data: URLs are "
                                             "always allowed).")
    enable_lora: bool = Field(False, description="Start base versions' engines with LoRA enabled too, so a base "
                              "and its adapters served together share one engine (adapters always run on "
                              "their base's LoRA-enabled engine).")
    max_loras: int = Field(4, ge=1, description="LoRA adapter versions one base engine holds at once (adapters "
                                                "are served by their base's engine, loaded on first use).")
    max_lora_rank: int = Field(16, ge=1, le=512, description="Largest adapter rank the base engine admits "
                                                             "(raised to the served adapter's rank when higher).")

    engine_kwargs: dict[str, Any] = Field(default_factory=dict, description="More of vLLM's engine arguments "
                                          "(quantization, pipeline_parallel_size, speculative_config, ...), by "
                                          "their vLLM names; checked against the installed vLLM's when an engine "
                                          "starts. What a field above sets is refused here: set the field.")

    @field_validator("num_gpus", mode="before")
    @classmethod
    def _auto_or_count(cls, value: Any) -> Any:
        if value == "auto" or (isinstance(value, int) and not isinstance(value, bool) and value >= 0):
            return value
        raise ValueError("'auto' or a whole number of GPUs >= 0 (0: CPUs)")

    @field_validator("engine_kwargs")
    @classmethod
    def _not_owned_by_maas(cls, kwargs: dict) -> dict:
        problems = []
        for key in kwargs:
            if not isinstance(key, str) or not key.isidentifier():
                problems.append(f"{key!r} is not an engine argument name")
            elif key in MAAS_ENGINE_ARGS:
                problems.append(f"{key}: maas sets it from {MAAS_ENGINE_ARGS[key]}; set that instead")
        if problems:
            raise ValueError("; ".join(problems))
        return kwargs

    def gpus(self, cluster_gpus: Optional[float] = None) -> int:
        """GPUs per engine, 'auto' resolved: 1 when ``cluster_gpus`` (default: the connected Ray cluster's GPUs,
        else this machine's) is at least one, else 0 (vLLM on CPUs)."""
        if self.num_gpus != "auto":
            return self.num_gpus
        return 1 if (visible_gpus() if cluster_gpus is None else cluster_gpus) >= 1 else 0

    def placement(self) -> str:
        gpus = self.gpus()
        return f"{gpus} GPU(s)" if gpus else f"CPU ({self.num_cpus} CPU, {self.kv_cache_gib} GiB KV)"


# vLLM engine arguments maas sets itself, and the deploy.llm field (or what) each comes from
MAAS_ENGINE_ARGS = {"max_num_seqs": "deploy.llm.max_num_seqs", "enforce_eager": "deploy.llm.enforce_eager",
                    "dtype": "deploy.llm.dtype", "max_model_len": "deploy.llm.max_model_len",
                    "gpu_memory_utilization": "deploy.llm.gpu_memory_utilization",
                    "tensor_parallel_size": "deploy.llm.num_gpus", "enable_lora": "deploy.llm.enable_lora",
                    "max_loras": "deploy.llm.max_loras", "max_lora_rank": "deploy.llm.max_lora_rank",
                    "allowed_media_domains": "deploy.llm.allowed_media_domains",
                    "override_generation_config": "deploy.llm.max_tokens",
                    "model": "the served version's verified files", "tokenizer": "the served version's files",
                    "served_model_name": "the registry name"}


def visible_gpus() -> float:
    """GPUs of the Ray cluster this process is connected to; without one, the GPUs torch sees here."""
    import ray

    if ray.is_initialized():
        return float(ray.cluster_resources().get("GPU", 0))
    try:
        import torch
    except ImportError:
        return 0.0
    return float(torch.cuda.device_count()) if torch.cuda.is_available() else 0.0


EVERY_INTERFACE = ("0.0.0.0", "::", "")


class DeploySpec(_Strict):
    enabled: bool = Field(True, description="Deploy `<model>@<alias>` with Ray Serve at the end of the pipeline.")
    alias: str = Field("production", pattern=_NAME_PATTERN, description="Alias that is promoted and served.")
    host: str = Field("127.0.0.1", description="HTTP bind address of Serve's proxy.")
    port: int = Field(8000, ge=1, le=65535, description="HTTP port of Serve's proxy.")
    grpc_port: int = Field(9000, ge=0, le=65535, description="Port of Serve's gRPC proxy: the Open Inference "
                           "Protocol over gRPC (inference.GRPCInferenceService) on deploy.host. 0: no gRPC.")
    proxy: Literal["throughput", "default"] = Field(
        "throughput", description="Serve's ingress when maas starts Serve: 'throughput' (Ray's high-throughput "
        "mode: HAProxy in front of replicas that take HTTP and gRPC directly) or 'default' (Serve's Python "
        "proxy). Fixed when Serve starts on a cluster.")
    num_replicas: Optional[int] = Field(None, ge=1, description="Fixed replica count (default 1); exclusive "
                                                                "with `autoscaling`.")
    autoscaling: Optional[AutoscalingSpec] = Field(None, description="Scale replicas with load; exclusive with "
                                                                     "`num_replicas`.")
    num_cpus: float = Field(0.25, ge=0, description="CPUs reserved per replica.")
    num_gpus: float = Field(0, ge=0, description="GPUs per replica (fractions share one GPU).")
    max_batch_size: int = Field(32, ge=1, description="Dynamic batching: most requests fused into one forward.")
    batch_wait_timeout_s: float = Field(0.0, ge=0, description="Dynamic batching: longest wait for a batch to fill. "
                                        "0 (greedy): no added wait; requests that queue during a forward are "
                                        "fused into the next. Raise it when the model's forward dominates.")
    max_request_bytes: int = Field(4 * 1024 * 1024, ge=1024, description="Bodies over this size get HTTP 413.")
    max_batch_file_bytes: int = Field(100 * 1024 * 1024, ge=1024, description="OpenAI batch input files "
                                      "(POST /v1/files) over this size get HTTP 413.")
    max_rows_per_request: int = Field(65536, ge=1, description="Rows (or texts) one inference request may hold; "
                                      "more get HTTP 413 (RESOURCE_EXHAUSTED over gRPC): a small binary body can "
                                      "hold a million tiny rows and ask for an answer a hundred times its size.")
    canary: Optional[CanarySpec] = Field(None, description="Send `percent`% of requests to `<model>@<alias>` "
                                                           "while it exists (a candidate under trial).")
    alias_poll_s: float = Field(2.0, ge=0, description="How often replicas check the registry for alias moves "
                                                       "(0: never; the alias is then fixed at deploy time).")
    max_pinned_versions: int = Field(2, ge=0, le=64, description="Versions a replica keeps loaded for requests "
                                     "that pin one (/versions/{v}, model 'name/v'); the least recent goes first.")
    pinned_loads_per_minute: int = Field(10, ge=1, description="Most pinned-version loads a replica starts per "
                                         "minute (more: HTTP 429); concurrent requests for one version share "
                                         "one load.")
    serve_access_log: bool = Field(False, description="Serve's own access-log line per request as well (maas "
                                   "writes one JSON line per model request itself; Serve's costs ~5% of a "
                                   "small request). true also leaves the deployment's logging to a Serve "
                                   "config's application-level logging_config.")
    llm: LLMEngineSpec = Field(default_factory=LLMEngineSpec, description="Engines for generative models "
                                                                         "(runtime vllm): placement and limits.")

    @model_validator(mode="after")
    def _replicas_xor_autoscaling(self) -> "DeploySpec":
        if self.num_replicas is not None and self.autoscaling is not None:
            raise ValueError("set either num_replicas or autoscaling, not both")
        return self

    @model_validator(mode="after")
    def _grpc_on_the_host(self) -> "DeploySpec":
        if self.proxy == "default" and self.grpc_port and self.host not in EVERY_INTERFACE:
            raise ValueError(f"deploy.proxy 'default' with deploy.grpc_port {self.grpc_port}: Serve's Python gRPC "
                             f"proxy listens on every interface, whatever deploy.host ({self.host!r}) says. Set "
                             "deploy.grpc_port: 0 (no gRPC), deploy.proxy: throughput (gRPC on deploy.host), or "
                             "deploy.host: 0.0.0.0 (every interface, knowingly)")
        return self

    def grpc_message_limit(self) -> int:
        """The size Serve's gRPC servers take as their message limit (Serve's default: 2 GiB): the body limit,
        or gRPC's own default of 4 MiB when that is larger, since the same setting bounds the answers they send
        (which clients take up to 4 MiB by default). A larger message is refused by the transport before it is
        in memory, a compressed one as it inflates past the limit; maas refuses one over the body limit."""
        return max(self.max_request_bytes, GRPC_DEFAULT_MESSAGE_BYTES)

    def serve_options(self, generative: bool = False) -> dict:
        """The deployment options Ray Serve takes (replicas or autoscaling, replica resources, and Serve's
        access log off unless ``serve_access_log``: maas writes its own line per model request). ``generative``:
        the replicas run vLLM engines (one per served generative version), so they take the engines' placement:
        on CPUs the engine's cores in the replica's own bundle (its engines run there), at least
        ``llm.num_replicas`` replicas; on GPUs each engine makes its own placement group for its GPU workers."""
        # the replicas' own gRPC servers (the high-throughput mode) refuse a message past the limit as it
        # arrives, a compressed one as it inflates past it (gRPC's limit is on the decompressed size)
        env = {"RAY_SERVE_GRPC_MAX_MESSAGE_SIZE": str(self.grpc_message_limit())}
        opts: dict = {"ray_actor_options": {"num_cpus": self.num_cpus, "num_gpus": self.num_gpus,
                                            "runtime_env": {"env_vars": env}}}
        if not self.serve_access_log:
            opts["logging_config"] = {"enable_access_log": False}
        if self.autoscaling is not None:
            opts["autoscaling_config"] = self.autoscaling.model_dump(exclude_none=True)
        else:
            opts["num_replicas"] = max(self.num_replicas or 1, self.llm.num_replicas if generative else 1)
        if generative and not self.llm.gpus():
            opts["placement_group_bundles"] = [{"CPU": self.num_cpus + self.llm.num_cpus}]
            env["VLLM_CPU_KVCACHE_SPACE"] = f"{self.llm.kv_cache_gib:g}"
        return opts
