"""Reading a task's files, local or on object storage: JSON Lines tasks, harness task YAMLs and their data."""

from __future__ import annotations

from maas.exceptions import EvalError


def read_task_bytes(name: str, uri: str) -> bytes:
    """The bytes of a task's file at ``uri`` (local or object storage).

    Raises:
        EvalError: it cannot be read (the message names the task and the file).
    """
    from maas.storage import open_uri

    try:
        fs, path = open_uri(uri)
        with fs.open_input_stream(path) as f:
            return f.read()
    except (OSError, ValueError) as exc:
        raise EvalError(f"eval task {name}: cannot read {uri} ({exc})") from None
