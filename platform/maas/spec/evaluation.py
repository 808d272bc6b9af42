"""Task evaluations a spec names (``eval.tasks``): the user's JSON Lines files, run through EleutherAI's
lm-evaluation-harness by ``maas.eval.tasks``. Data only: a task is a file and how to score it."""

from __future__ import annotations

import re
from typing import Literal, Optional

from pydantic import Field, field_validator, model_validator

from maas.spec.common import _Strict


class EvalTaskSpec(_Strict):
    """One task file. ``multiple_choice`` lines are ``{"question": str, "choices": [str, ...], "answer": int}``,
    scored by log-likelihood (the choice the model finds likeliest after the question); ``generate`` lines are
    ``{"prompt": str, "answer": str}``, scored on the greedy continuation."""

    name: str = Field(..., pattern=r"^[a-z][a-z0-9_]{0,62}$",
                      description="The task's name in results (lower case letters, digits and '_').")
    path: str = Field(..., description="A JSON Lines file (lm_eval: a harness task YAML): a local path or a "
                                        "pyarrow.fs URI (s3://...).")
    type: Literal["multiple_choice", "generate", "lm_eval"] = Field(
        ..., description="multiple_choice: accuracy by log-likelihood; generate: exact, pattern or contains "
                         "match; lm_eval: an lm-evaluation-harness task YAML that is data (no !function, "
                         "process_* hooks or include; templates that only name fields; acc, acc_norm or "
                         "exact_match; its data files beside it or on object storage), scored by its first metric.")
    match: Literal["exact", "regex", "contains"] = Field(
        "exact", description="generate only. exact: the continuation, stripped, equals the answer; regex: the "
                             "first match of `pattern` in the continuation equals the answer; contains: the "
                             "answer appears in the continuation.")
    pattern: Optional[str] = Field(None, description="generate with match: regex: the pattern whose first match "
                                                     "(its first group, if it has one) is compared with the answer.")
    max_tokens: int = Field(32, ge=1, le=4096, description="generate only: most tokens generated per line.")
    stop: list[str] = Field(default_factory=lambda: ["\n"], max_length=8,
                            description="generate only: generation ends at the first of these strings.")
    limit: Optional[int] = Field(None, ge=1, description="Score only the first N lines (None: all).")

    @field_validator("pattern")
    @classmethod
    def _compiles(cls, value: Optional[str]) -> Optional[str]:
        if value is not None:
            try:
                re.compile(value)
            except re.error as exc:
                raise ValueError(f"not a regular expression: {exc}") from None
        return value

    @model_validator(mode="after")
    def _pattern_with_regex(self) -> "EvalTaskSpec":
        if (self.match == "regex") != (self.pattern is not None):
            raise ValueError("match: regex needs a pattern, and a pattern needs match: regex")
        if self.type != "generate" and self.match != "exact":
            raise ValueError("match applies to generate tasks only")
        if self.type == "lm_eval" and self.limit is not None:
            raise ValueError("limit applies to JSON Lines tasks; trim a harness task's data file instead")
        return self
