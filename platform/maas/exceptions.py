"""Every error maas raises on purpose.

They are plain ``Exception`` subclasses whose constructor arguments are kept in ``args`` so they
pickle across Ray actors and tasks. Each message names the field, file or next step to take.
"""

from __future__ import annotations


class MaasError(Exception):
    """Base class: a user-facing error. The CLI prints its message without a traceback."""


class SpecError(MaasError):
    """The pipeline spec is invalid. ``problems`` lists every problem as ``(field path, message)``."""

    def __init__(self, problems: list[tuple[str, str]], source: str = "spec"):
        super().__init__(problems, source)
        self.problems = list(problems)
        self.source = source

    def __str__(self) -> str:
        lines = [f"{self.source}: {len(self.problems)} problem(s)"]
        lines += [f"  - {path or '<root>'}: {msg}" for path, msg in self.problems]
        return "\n".join(lines)


class DataError(MaasError):
    """The input data cannot be read or fails validation (names the file or column)."""


class RegistryError(MaasError):
    """A registry operation failed: unknown model, version or alias, or a bad reference."""


class NotFoundError(RegistryError):
    """What a registry operation names is not there: a model, a version, an API key (HTTP's 404)."""


class ConflictError(RegistryError):
    """A registry write lost to the store's state: a name taken, an alias moved meanwhile, a version an alias
    points at (HTTP's 409)."""


class IntegrityError(RegistryError):
    """An artifact's bytes do not match the checksum recorded when it was published."""


class TrainingError(MaasError):
    """Training did not produce a usable model."""


class CompressionError(MaasError):
    """A compression method failed or is not available on this machine."""


class ServeError(MaasError):
    """Deploying or querying a model endpoint failed."""


class JobError(MaasError):
    """A job could not be submitted, found or followed, or its spec's kind has no such stage."""


class EvalError(MaasError):
    """A task file that cannot be evaluated: the message names the file, the line and the field."""


class BatchError(MaasError):
    """A batch inference run cannot start or finish (names the flag, column or file)."""
