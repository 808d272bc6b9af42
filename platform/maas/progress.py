"""The progress lines a job prints and the typed events read back from its log: one module writes and parses
them, so the two cannot drift apart.

A progress line is ``[stage] detail``; a training epoch is ``[train] epoch 3/40 (7%) step 60 loss=0.5123``
with `` val_accuracy=0.9100`` when there is a validation split and `` (early stop)`` on the last one. Ray
prefixes lines of its workers (``(RayTrainWorker pid=4411, ip=...) ``) and may colour them; both are ignored.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Optional

_ANSI = re.compile(r"\x1b\[[0-9;]*m")
_RAY_PREFIX = re.compile(r"^\([^)]*pid=\d+[^)]*\)\s*")  # "(RayTrainWorker pid=123, ip=...) " on worker lines
_LINE = re.compile(r"^\[([a-z_]+)\] (.*)$")
_EPOCH = re.compile(r"^epoch (\d+)/(\d+) \(\d+%\) step (\d+) loss=(\S+?)(?: val_accuracy=(\S+?))?( \(early stop\))?$")


def line(stage: str, detail: str) -> str:
    """The progress line of ``stage`` (lowercase letters and ``_``) saying ``detail``."""
    return f"[{stage}] {detail}"


@dataclass(frozen=True)
class Epoch:
    """One finished training epoch (``epoch`` counts from 1), as the train loop reports it."""

    epoch: int
    epochs: int
    step: int
    loss: float
    val_accuracy: Optional[float] = None
    early_stop: bool = False

    def line(self) -> str:
        val = f" val_accuracy={self.val_accuracy:.4f}" if self.val_accuracy is not None else ""
        stop = " (early stop)" if self.early_stop else ""
        return line("train", f"epoch {self.epoch}/{self.epochs} ({100 * self.epoch // self.epochs}%) "
                             f"step {self.step} loss={self.loss:.4f}{val}{stop}")


def parse(text: str) -> Optional[dict]:
    """A progress line of a job's log as an event ``{"stage", "detail"}``; a training epoch also carries
    ``epoch``, ``epochs``, ``step``, ``loss``, ``val_accuracy`` (when validated) and ``early_stop`` (when
    it stopped there). None for everything else (Ray's own lines, execution plans, the result line)."""
    clean = _RAY_PREFIX.sub("", _ANSI.sub("", text).strip())
    m = _LINE.match(clean)
    if m is None:
        return None
    event: dict = {"stage": m.group(1), "detail": m.group(2)}
    e = _EPOCH.match(m.group(2)) if m.group(1) == "train" else None
    if e is not None:
        event.update(epoch=int(e.group(1)), epochs=int(e.group(2)), step=int(e.group(3)), loss=float(e.group(4)))
        if e.group(5):
            event["val_accuracy"] = float(e.group(5))
        if e.group(6):
            event["early_stop"] = True
    return event
