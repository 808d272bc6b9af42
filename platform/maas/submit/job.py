"""A handle on one submitted Ray job (``maas.Client`` makes them): status, logs, typed progress events, wait,
stop and its result line."""

from __future__ import annotations

import json
import time
from typing import Iterator, Optional, Union

from maas import progress
from maas.exceptions import JobError

TERMINAL = {"SUCCEEDED", "FAILED", "STOPPED"}
RESULT_KEY = "maas_result"


progress_event = progress.parse  # a job log's progress line as a typed event (maas.progress writes them)


class Job:
    """A handle on one submitted job: status, logs, typed progress events, wait, stop and its result line.

    Example:
        >>> job = maas.Client().submit("examples/digits.yaml", ["train.epochs=5"])
        >>> for event in job.events():
        ...     print(event["stage"], event["detail"] if event["stage"] != "result" else event["status"])
        >>> job.result()["promoted"]
        'digits/2'
    """

    def __init__(self, client, job_id: str):  # client: the maas.Client that submitted it
        self.client = client
        self.id = job_id

    def __repr__(self) -> str:
        return f"Job({self.id!r}, status={self.status()!r})"

    def info(self):
        try:
            return self.client._jobs.get_job_info(self.id)
        except RuntimeError as exc:
            raise JobError(f"job {self.id!r} not found at {self.client.address}: {exc}") from None

    def status(self) -> str:
        """PENDING, RUNNING, SUCCEEDED, FAILED or STOPPED."""
        return str(self.info().status.value if hasattr(self.info().status, "value") else self.info().status)

    def logs(self, follow: bool = False, poll_s: float = 0.5) -> Union[str, Iterator[str]]:
        """The job's whole log so far, or (``follow=True``) an iterator of new log text until the job ends.

        Following polls instead of streaming over a websocket, so it also works inside Jupyter's event loop.
        """
        if not follow:
            return self.client._jobs.get_job_logs(self.id)
        return self._follow(poll_s)

    def _follow(self, poll_s: float) -> Iterator[str]:
        seen = 0
        while True:
            done = self.status() in TERMINAL  # read the status first: logs fetched after it are complete
            text = self.client._jobs.get_job_logs(self.id)
            if len(text) > seen:
                yield text[seen:]
                seen = len(text)
            if done:
                return
            time.sleep(poll_s)

    def events(self, poll_s: float = 0.5) -> Iterator[dict]:
        """Typed progress while the job runs (see ``progress_event``: stage, detail, and for training epochs
        epoch/epochs/step/loss/val_accuracy), then one ``{"stage": "result", ...}`` with the result line (or
        the error when the job left none). A notebook draws a progress bar and charts from these."""
        pending = ""
        for chunk in self.logs(follow=True, poll_s=poll_s):
            pending += chunk
            *lines, pending = pending.split("\n")
            for line in lines:
                event = progress_event(line)
                if event is not None:
                    yield event
        event = progress_event(pending)
        if event is not None:
            yield event
        try:
            yield {"stage": "result", **self.result()}
        except JobError as err:
            yield {"stage": "result", "status": "failed", "error": str(err)}

    def wait(self, timeout: Optional[float] = None, poll_s: float = 0.5) -> str:
        """Block until the job ends; returns its final status.

        Raises:
            TimeoutError: still running after ``timeout`` seconds (the job keeps running).
        """
        deadline = None if timeout is None else time.monotonic() + timeout
        while (status := self.status()) not in TERMINAL:
            if deadline is not None and time.monotonic() > deadline:
                raise TimeoutError(f"job {self.id} still {status} after {timeout} s")
            time.sleep(poll_s)
        return status

    def stop(self) -> bool:
        """Ask the job to stop (SIGTERM, then SIGKILL); its training actors and Serve apps go with it."""
        return self.client._jobs.stop_job(self.id)

    def result(self, timeout: Optional[float] = None) -> dict:
        """The job's result line (waits for the job to end): status, versions, metrics, or the error.

        Raises:
            JobError: the job ended without printing a result line (killed, or crashed before starting).
        """
        status = self.wait(timeout)
        for line in reversed(self.logs().splitlines()):
            line = line.strip()
            if line.startswith("{") and RESULT_KEY in line:
                try:
                    parsed = json.loads(line)
                except ValueError:
                    continue
                if isinstance(parsed, dict) and RESULT_KEY in parsed:
                    parsed["job_status"] = status
                    return parsed
        raise JobError(f"job {self.id} ended {status} without a result line; last log lines:\n"
                       + self.tail(20))

    def tail(self, n: int = 20) -> str:
        return "\n".join(self.logs().splitlines()[-n:])
