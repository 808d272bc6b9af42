"""The per-worker training recipe: setup -> (resume) -> epochs of train + validate -> checkpoint.

Runs inside each Ray Train worker. Checkpoints hold ``model.safetensors`` + ``model.json`` (loadable by
serving without pickle), ``optimizer.pt`` (read back with ``torch.load(weights_only=True)``) and
``state.json`` (epoch and metric history), so a restarted worker group resumes where it stopped
(``maas.train.checkpoint``).
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import time
from typing import Iterator, Optional

import numpy as np
import torch
import torch.distributed as dist
from torch import nn

from maas import progress
from maas.data.chat import IGNORE  # a target position that is not learnt (cross-entropy's ignore_index)
from maas.models import build_model
from maas.train.checkpoint import as_dtensors, resume_state, write_checkpoint
from maas.train.config import LoopConfig
from maas.train.shards import DriverShard


class ShardBatches:
    """One worker's shard as (x, y) numpy batches, streamed from Ray Data every epoch or, when ``cache`` is
    set (the driver sets it for shards under ``train.cache_shard_mb``), read once and reshuffled in memory:
    each streamed epoch pays a fixed setup cost that dwarfs the compute of a small data set."""

    def __init__(self, shard, features: list[str], cache: bool, shuffle_buffer: int, task: str = "classify"):
        self.shard, self.features, self.cache, self.shuffle_buffer = shard, features, cache, shuffle_buffer
        self.task = task
        self._x: Optional[np.ndarray] = None
        self._y: Optional[np.ndarray] = None

    def _stream(self, batch_size: int, seed: Optional[int]) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        shuffle = {} if seed is None else dict(local_shuffle_buffer_size=self.shuffle_buffer,
                                               local_shuffle_seed=seed)
        for batch in self.shard.iter_batches(batch_size=batch_size, batch_format="numpy", **shuffle):
            if self.task == "lm":  # a row is block_size + 1 tokens: the inputs, and the same shifted by one
                tokens = np.asarray(batch["tokens"], dtype=np.int64)
                # chat rows say which of those are targets (the assistant's turns): IGNORE elsewhere
                targets = np.asarray(batch["targets"], dtype=np.int64) if "targets" in batch else tokens[:, 1:]
                yield tokens[:, :-1], targets
                continue
            if self.task == "classify_text":  # token ids stacked on the attention mask: [batch, 2, seq]
                x = np.stack([np.stack(batch["input_ids"]), np.stack(batch["attention_mask"])], axis=1)
                yield x.astype(np.int64, copy=False), batch["__y"]
                continue
            x = np.stack([batch[c] for c in self.features], axis=1).astype(np.float32, copy=False)
            yield x, batch["__y"]

    def epoch(self, batch_size: int, seed: Optional[int] = None) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        if not self.cache:
            yield from self._stream(batch_size, seed)
            return
        if self._x is None:
            parts = list(self._stream(4096, None))
            if not parts:
                raise RuntimeError("this worker's data shard is empty: fewer rows than train.num_workers?")
            self._x = np.concatenate([p[0] for p in parts])
            self._y = np.concatenate([p[1] for p in parts])
        order = np.arange(len(self._y)) if seed is None else np.random.default_rng(seed).permutation(len(self._y))
        for i in range(0, len(order), batch_size):
            idx = order[i:i + batch_size]
            yield self._x[idx], self._y[idx]


def _shard(config: LoopConfig, name: str, rank: int):
    """This worker's part of split ``name``: cut by the driver when small, else Ray Train's streaming split."""
    import ray.train

    if config.shards:
        return DriverShard(config.shards[name][rank])
    return ray.train.get_dataset_shard(name)


def _to(device: torch.device, x: np.ndarray, y: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
    """Host batch -> device. On CUDA through pinned memory, asynchronously: a copy from pageable memory
    would wait for the GPU to drain first, so the host could never queue the next step ahead of it."""
    if device.type != "cuda":
        return torch.from_numpy(x).to(device), torch.from_numpy(y).to(device)
    return (torch.from_numpy(np.ascontiguousarray(x)).pin_memory().to(device, non_blocking=True),
            torch.from_numpy(np.ascontiguousarray(y)).pin_memory().to(device, non_blocking=True))


def _all_sum(values: list[float], device: torch.device) -> list[float]:
    t = torch.tensor(values, dtype=torch.float64, device=device)
    if dist.is_available() and dist.is_initialized():
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t.tolist()


def _all_max(value: float, device: torch.device) -> float:
    t = torch.tensor([value], dtype=torch.float64, device=device)
    if dist.is_available() and dist.is_initialized():
        dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return float(t.item())


def _shard_fsdp(model: nn.Module, device: torch.device) -> nn.Module:
    """FSDP2: ``fully_shard`` each block (every layer with parameters), then the root. Ray Train has already
    initialised the process group (gloo on CPU, NCCL on GPU); ``prepare_model(parallel_strategy="fsdp")``
    refuses CPUs, so FSDP2 is driven directly."""
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard

    model.to(device)
    mesh = init_device_mesh(device.type, (dist.get_world_size(),))
    for block in blocks_of(model):
        fully_shard(block, mesh=mesh)
    fully_shard(model, mesh=mesh)
    return model


def _logits(out) -> torch.Tensor:
    """A model's logits: transformers' causal LMs answer an output object, maas's own models the tensor."""
    return getattr(out, "logits", out)


def _layers(model: nn.Module) -> Optional[list]:
    from maas.models.llama import decoder_layers

    blocks = getattr(model, "blocks", None)
    return list(blocks) if blocks is not None else decoder_layers(model)


def compile_blocks(model: nn.Module) -> None:
    """Regional compilation, in place: ``torch.compile`` each decoder layer (identical layers share one
    compiled graph, so the compile costs one layer, not the model), or the whole model when it has no
    layers. In place (``Module.compile``), so state-dict keys and checkpoints are unchanged; done before
    DDP/FSDP wrap the model, whose hooks stay outside the compiled regions."""
    for unit in _layers(model) or [model]:
        unit.compile()


def blocks_of(model: nn.Module) -> list[nn.Module]:
    """The units FSDP shards one at a time: a decoder's layers, an encoder's ``blocks``, else each direct
    child that holds parameters (the MLP's Linear layers)."""
    layers = _layers(model)
    if layers is not None:
        return layers
    return [m for m in model.children() if any(True for _ in m.parameters(recurse=True))]


def lr_at(step: int, total: int, warmup: int, base: float, schedule: str) -> float:
    """Linear warmup over ``warmup`` steps, then constant or cosine decay to zero at ``total``."""
    if warmup and step < warmup:
        return base * (step + 1) / warmup
    if schedule == "cosine":
        progress = (step - warmup) / max(1, total - warmup)
        return base * 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))
    return base


def train_loop_per_worker(config: LoopConfig) -> None:
    import ray.train
    import ray.train.torch

    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    if isinstance(config, dict):  # Ray Train hands over what the driver gave: the model, or its fields
        config = LoopConfig.model_validate(config)
    t = config.train
    torch.manual_seed(t.seed)
    # the train split's normalisation statistics initialise the model's Standardize buffers; they are then
    # part of the weights, so model.json (the architecture) does not need to repeat them
    init = dict(config.normalization)
    base = init.pop("base", None)
    if base is not None:  # fine-tuning: the base's weights, fetched (and checksummed) on this worker's node
        from maas.registry import Registry

        init["weights"] = str(Registry(base["store"]).fetch(base["ref"])[0])
    model = build_model({**config.architecture, **init})
    lm = config.task == "lm"
    # training FLOPs per row, counted on the whole model before any sharding: 6 x parameters per target,
    # plus attention for a language model (per token, times the block's tokens)
    # (a text classifier: 6 x its non-embedding parameters per token, times the tokens per row)
    if lm:
        from maas.models.llama import train_flops_per_token

        block = config.architecture["block_size"]
        flops_per_sample = train_flops_per_token(model, block) * block
    else:
        flops_per_sample = 6 * sum(p.numel() for n, p in model.named_parameters() if "embeddings" not in n) \
            * config.architecture.get("max_length", 1)
    model_state, state, opt_state = resume_state(rank, world)
    if model_state is not None:
        model.load_state_dict(model_state)
    start_epoch, step, history, steps_log = state["epoch"] + 1, state["step"], state["history"], state["steps"]
    if start_epoch and rank == 0:
        print(f"[train] resuming from the checkpoint of epoch {start_epoch} (step {step})", flush=True)
    device = ray.train.torch.get_device()
    cuda = device.type == "cuda"
    fsdp = t.strategy == "fsdp"
    if t.compile:
        compile_blocks(model)
    if fsdp:
        model = _shard_fsdp(model, device)
    else:
        model = ray.train.torch.prepare_model(model)  # DDP over gloo (CPU) or NCCL (GPU), moved to the device
    # on GPUs the fused AdamW kernel: one launch for every parameter's update instead of a loop of them
    trainable = [p for p in model.parameters() if p.requires_grad]  # LoRA: the adapters only
    optimizer = torch.optim.AdamW(trainable, lr=t.learning_rate,
                                  weight_decay=t.weight_decay, fused=cuda or None)
    if cuda:
        torch.cuda.reset_peak_memory_stats(device)
    if opt_state is not None:
        optimizer.load_state_dict(as_dtensors(optimizer, opt_state) if fsdp else opt_state)
    loss_fn = nn.CrossEntropyLoss(reduction="sum", ignore_index=IGNORE)
    bf16 = t.precision == "bf16"

    def autocast():
        return torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=bf16)

    compiled = t.compile

    def eager_unless(steady: bool):
        """Compiled runs compile the steady-state training step only: a ragged last batch and validation run
        eager instead of paying a recompile each (a new shape, a no-grad graph) for a step or two."""
        if not compiled or steady:
            return contextlib.nullcontext()
        return torch.compiler.set_stance("force_eager")

    def sync_grads(on: bool):
        if fsdp:
            model.set_requires_gradient_sync(on)
            return contextlib.nullcontext()
        return contextlib.nullcontext() if on or world == 1 else model.no_sync()

    features = list(config.features)
    cache, buffer = config.cache_shards, config.shuffle_buffer
    task = config.task
    train_batches = ShardBatches(_shard(config, "train", rank), features, cache, buffer, task)
    val_batches = ShardBatches(_shard(config, "val", rank), features, cache, buffer, task) \
        if config.has_val else None
    tokens_per_row = config.architecture["block_size"] if lm else 0
    accum = t.grad_accumulation_steps
    total_steps = config.total_steps
    warmup = int(total_steps * t.warmup_fraction)
    clip = t.max_grad_norm
    log_every = t.log_every_steps
    peak = config.peak_flops_per_worker

    worker_nodes = _worker_nodes(world)
    if rank == 0:
        print(f"[train] {world} worker(s) ({t.strategy}) on {len(set(worker_nodes))} node(s)", flush=True)
    best = max((h.get("val_accuracy", -h["epoch"]) for h in history), default=None)
    stale = history[-1].get("stale_epochs", 0) if history else 0
    for epoch in range(start_epoch, t.epochs):
        model.train()
        started = window_started = time.perf_counter()
        # sums stay on the device and are read at log points and at the epoch's end: a .item() per step
        # would make the host wait for every step, so it could never queue the next one ahead of the GPU
        loss_sum = torch.zeros((), dtype=torch.float64, device=device)
        correct = torch.zeros((), dtype=torch.int64, device=device)
        seen = torch.zeros((), dtype=torch.int64, device=device)  # targets that count (not IGNORE)
        rows = 0
        window_samples, micro, grad_norm = 0, 0, None
        optimizer.zero_grad(set_to_none=True)
        batches = train_batches.epoch(t.batch_size, seed=t.seed * 100003 + epoch * 101 + rank)
        if accum > 1:
            batches = list(batches)
        n_batches = len(batches) if accum > 1 else None
        for i, (xb, yb) in enumerate(batches):
            x, y = _to(device, xb, yb)
            last_micro = (micro + 1) == accum or (n_batches is not None and i == n_batches - 1)
            with sync_grads(last_micro), eager_unless(len(yb) == t.batch_size):
                with autocast():
                    logits = _logits(model(x))
                    loss = loss_fn(logits.float().reshape(-1, logits.shape[-1]), y.reshape(-1))
                valid = y.ne(IGNORE)  # a chat's padding and non-assistant tokens are no targets
                n_valid = valid.sum()
                (loss / (n_valid.clamp(min=1) * accum)).backward()
            micro += 1
            loss_sum += loss.detach()
            seen += n_valid  # targets: rows for a classifier, tokens for a language model
            rows += len(y)
            window_samples += len(y)
            correct += ((logits.detach().argmax(-1) == y) & valid).sum()
            if not last_micro:
                continue
            lr = lr_at(step, total_steps, warmup, t.learning_rate, t.lr_schedule)
            for group in optimizer.param_groups:
                group["lr"] = lr
            if clip:
                grad_norm = torch.nn.utils.clip_grad_norm_(trainable, clip)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            micro = 0
            step += 1
            if step % log_every == 0 and rank == 0:
                last_loss = loss.item() / max(int(n_valid), 1)  # waits for this step: the window's time is the GPU's
                now = time.perf_counter()
                rate = window_samples * world / max(now - window_started, 1e-9)
                entry = {"step": step, "epoch": epoch, "loss": last_loss, "lr": lr, "samples_per_s": rate}
                if lm:
                    entry["tokens_per_s"] = rate * tokens_per_row
                if clip:
                    entry["grad_norm"] = float(grad_norm.full_tensor() if hasattr(grad_norm, "full_tensor")
                                               else grad_norm)
                if peak:
                    entry["mfu"] = rate * flops_per_sample / (peak * world)
                steps_log.append(entry)
                window_started, window_samples = now, 0
        metrics = {"epoch": epoch, "step": step}
        if epoch == start_epoch:
            metrics["worker_nodes"] = worker_nodes  # where this (re)started worker group runs
            if start_epoch > 0:
                metrics["resumed_from_epoch"] = start_epoch  # this worker group restarted from a checkpoint
        loss_sum, correct, seen = loss_sum.item(), correct.item(), seen.item()  # waits for the epoch's last step
        train_seconds = time.perf_counter() - started
        t_loss, t_seen, t_correct, t_rows = _all_sum([loss_sum, seen, correct, rows], device)
        metrics.update(train_loss=t_loss / max(t_seen, 1), train_accuracy=t_correct / max(t_seen, 1),
                       train_seconds=train_seconds, samples_per_s=t_rows / max(train_seconds, 1e-9))
        if lm:
            metrics["tokens_per_s"] = metrics["samples_per_s"] * tokens_per_row
        if peak:
            metrics["mfu"] = metrics["samples_per_s"] * flops_per_sample / (peak * world)
        if cuda:  # the most any rank's GPU held at once so far (weights, gradients, optimizer, activations)
            metrics["peak_memory_gb"] = _all_max(torch.cuda.max_memory_allocated(device) / 2**30, device)

        if val_batches is not None:
            model.eval()
            v_loss = v_seen = v_correct = 0.0
            with torch.no_grad(), eager_unless(False):
                for xb, yb in val_batches.epoch(1024):
                    x, y = _to(device, xb, yb)
                    with autocast():
                        logits = _logits(model(x)).float()
                    v_loss += loss_fn(logits.reshape(-1, logits.shape[-1]), y.reshape(-1)).item()
                    valid = y.ne(IGNORE)
                    v_seen += int(valid.sum())
                    v_correct += ((logits.argmax(-1) == y) & valid).sum().item()
            v_loss, v_seen, v_correct = _all_sum([v_loss, v_seen, v_correct], device)
            metrics.update(val_loss=v_loss / max(v_seen, 1), val_accuracy=v_correct / max(v_seen, 1))
            if lm:  # per token (the pipeline turns bits per token into bits per byte with the data's ratio)
                metrics.update(val_perplexity=math.exp(min(metrics["val_loss"], 50.0)),
                               val_bits_per_token=metrics["val_loss"] / math.log(2))

        # Checkpoint when validation improves (what keep-best-N ranks), every N epochs (the most progress a
        # failure can cost) and at the end. Each checkpoint is a persisted upload plus a barrier: on small
        # models writing one every epoch costs more than the epoch itself.
        score = metrics.get("val_accuracy", -epoch)
        improved = best is None or score > best
        best = score if improved else best
        stale = 0 if improved else stale + 1
        metrics["stale_epochs"] = stale
        patience = t.early_stopping_patience
        stop = bool(patience) and stale >= patience and config.has_val
        if stop:
            metrics["early_stopped"] = True
        history.append(metrics)
        if rank == 0:  # shows in job logs (`maas logs --follow`) as the run's progress
            print(progress.Epoch(epoch + 1, t.epochs, step, metrics["train_loss"], metrics.get("val_accuracy"),
                                 early_stop=stop).line(), flush=True)
            _write_progress(config.progress_path, {"epoch": epoch, "step": step, "worker_nodes": worker_nodes})
        every = t.checkpoint_every_epochs
        due = improved or stop or epoch == t.epochs - 1 or (every and (epoch + 1) % every == 0)
        if due:  # every rank computes the same `due` (validation figures are all-reduced)
            state = {"epoch": epoch, "step": step, "history": history, "steps": steps_log}
            write_checkpoint(model, optimizer, config.architecture, metrics, state, rank, world, fsdp)
        else:
            ray.train.report(metrics)
        if stop:
            break


def _worker_nodes(world: int) -> list:
    """The Ray node id of every rank, in rank order."""
    import ray

    mine = ray.get_runtime_context().get_node_id()
    if world == 1 or not dist.is_initialized():
        return [mine]
    nodes = [None] * world
    dist.all_gather_object(nodes, mine)
    return nodes


def _write_progress(path: Optional[str], progress: dict) -> None:
    """Best effort: the latest epoch and step as JSON at a local path (a live view for tools and tests)."""
    if not path:
        return
    try:
        tmp = f"{path}.tmp"
        with open(tmp, "w") as f:
            json.dump(progress, f)
        os.replace(tmp, path)
    except OSError:
        pass
