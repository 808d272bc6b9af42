"""The job submission layer: every stage is a Ray job, submitted and followed from Python.

Example (a notebook):
    >>> import maas
    >>> client = maas.Client()                     # RAY_ADDRESS, else an embedded local Ray
    >>> job = client.submit("examples/digits.yaml", ["train.epochs=10"])
    >>> for chunk in job.logs(follow=True):
    ...     print(chunk, end="")
    >>> job.result()["variants"]
"""

from __future__ import annotations

import json
import os
import shlex
import sys
import time
import uuid
from pathlib import Path
from typing import Any, Optional, Union

from maas.exceptions import JobError, SpecError
from maas.spec import PipelineSpec, load_spec, spec_from_dict
from maas.submit.auth import BAD_TOKEN, CLEAR_TEXT, NO_TOKEN, _auth_enabled, _is_local, _loopback, find_token
from maas.submit.job import RESULT_KEY, TERMINAL, Job, progress_event


def jobs_folder() -> str:
    """Where the ``jobs`` entrypoints live, found without importing them (``jobs`` imports maas): the
    installed package's folder, else ``jobs/`` beside ``platform/`` in a source checkout."""
    import importlib.util

    spec = importlib.util.find_spec("jobs")
    if spec is not None and spec.submodule_search_locations:
        return str(list(spec.submodule_search_locations)[0])
    here = Path(__file__).resolve().parents[3] / "jobs"
    if (here / "_common.py").is_file():
        return str(here)
    raise JobError("cannot find the jobs/ entrypoints next to maas: install maas (pip install -e .) or run from "
                   "the repository")


def _jobs_address(address: str) -> str:
    if address.startswith(("http://", "https://")):
        return address.rstrip("/")
    if address.startswith("ray://") or address == "auto":
        raise JobError(f"address {address!r} is not a Jobs API address: pass the dashboard URL of the head, "
                       "e.g. http://<head>:8265 (the same address `ray job submit --address` takes)")
    return f"http://{address.rstrip('/')}"


class Client:
    """Submit maas stages as Ray jobs.

    Args:
        address: the cluster's Jobs API, ``https://<head>:8265`` or, through a forwarded port,
            ``http://127.0.0.1:8265`` (``RAY_ADDRESS`` when omitted). With neither, a private local Ray head is
            started for this process (free ports, dashboard on 127.0.0.1) and jobs run there until
            ``shutdown()`` or the process exits.
        insecure: allow sending the Ray auth token over plain ``http://`` to another machine (refused by
            default: the token lets its holder run code on the cluster).

    Raises:
        JobError: no auth token found, token rejected, clear-text token to a remote address, or the cluster
            cannot be reached.
    """

    def __init__(self, address: Optional[str] = None, insecure: bool = False):
        address = address or os.environ.get("RAY_ADDRESS") or None
        self.embedded = address is None
        if self.embedded:
            address = self._start_embedded()
        self.address = _jobs_address(address)
        headers = {}
        if _auth_enabled():
            insecure = insecure or os.environ.get("MAAS_INSECURE", "").lower() in ("1", "true", "yes")
            if self.address.startswith("http://") and not _loopback(self.address) and not insecure:
                raise JobError(CLEAR_TEXT.format(address=self.address))
            token = find_token()
            if not token:
                raise JobError(NO_TOKEN)
            # Ray's HTTP clients send the token only when RAY_AUTH_MODE=token is set in *this* process; a
            # notebook or CLI user should not have to know that, so the header is passed explicitly. (Setting
            # the variable here instead would be cached by Ray and break a later local ray.init.)
            headers["authorization"] = f"Bearer {token}"
        self._headers = headers
        from ray.job_submission import JobSubmissionClient

        try:
            self._jobs = JobSubmissionClient(self.address, headers=headers)
        except Exception as exc:  # ConnectionError, RuntimeError with Ray's auth message ...
            text = str(exc)
            if "401" in text or "403" in text or "uthentication" in text:
                source = "RAY_AUTH_TOKEN" if os.environ.get("RAY_AUTH_TOKEN") else "~/.ray/auth_token"
                raise JobError(BAD_TOKEN.format(address=self.address, source=source)) from None
            raise JobError(f"cannot reach the Ray Jobs API at {self.address}: {text.splitlines()[0]}. Is the "
                           "head running (`ray start --head`), and is this its dashboard address?") from None

    def _start_embedded(self) -> str:
        """A private head for this process (see ``maas.runtime.start_head``), ended by shutdown() or at exit.

        Not `ray.init()`: every in-process local Ray binds its job agent to the fixed port 52365, so a second
        Ray on the machine (a `ray start` head, another notebook) would leave this one unable to take jobs.
        """
        import atexit
        import tempfile

        from maas.runtime import start_head

        try:
            self._head, url = start_head(tempfile.mkdtemp(prefix="maas-embedded-"))
        except RuntimeError as exc:
            raise JobError(f"the embedded Ray head failed: {exc}") from None
        atexit.register(self.shutdown)
        return url

    def ray_version(self) -> str:
        """The cluster's Ray version, as its Jobs API reports it (a round trip with this client's token)."""
        return self._jobs.get_version()

    def shutdown(self) -> None:
        """Stop the embedded Ray head and everything on it (no-op against a cluster)."""
        from maas.runtime import stop_head

        if getattr(self, "_head", None) is not None:
            stop_head(self._head)

    # ------------------------------------------------------------------------------------------- submit
    def _prepare_spec(self, spec: Union[PipelineSpec, str, Path, dict], overrides: Optional[list[str]]
                      ) -> PipelineSpec:
        if hasattr(spec, "model_dump"):  # a PipelineSpec or an EncoderPipelineSpec
            spec = spec_from_dict(spec.model_dump(mode="json"), overrides)
        elif isinstance(spec, dict):
            spec = spec_from_dict(spec, overrides)
        else:
            spec = load_spec(spec, overrides)
        # Local paths are relative to the submitter; the job runs in its own folder on the cluster.
        local = self.embedded or _is_local(self.address)
        fixes = []
        data_path = getattr(spec.data, "path", None)  # encoders read no files; lm reads them for source=files
        paths = [("store", spec.store)] + ([("data.path", data_path)] if data_path else [])
        for field, value in paths:
            if "://" in value or os.path.isabs(value):
                continue
            if not local:
                raise SpecError([(field, f"{value!r} is a relative local path, which means nothing on a remote "
                                         "cluster: use a URI (s3://bucket/...) or a shared absolute path")],
                                "submit")
            fixes.append(f"{field}={os.path.abspath(value)}")
        return spec_from_dict(spec.model_dump(mode="json"), fixes) if fixes else spec

    def submit(self, spec: Union[PipelineSpec, str, Path, dict], overrides: Optional[list[str]] = None, *,
               stage: str = "pipeline", args: Optional[list[str]] = None, name: Optional[str] = None) -> Job:
        """Submit ``stage`` of ``spec`` as a Ray job; returns its handle at once.

        Args:
            spec: a PipelineSpec, a YAML path or a mapping; validated here, before anything is sent.
            overrides: ``key=value`` spec overrides.
            stage: "pipeline" (default), "preprocess", "train", "compress" or "deploy".
            args: extra entrypoint arguments, e.g. ["--serve"] or ["--run-id", "..."].
            name: the job's submission id (default: maas-<stage>-<model>-<random>).

        Raises:
            SpecError: the spec is invalid (every problem at once); JobError: the cluster refused the job.
        """
        from maas.pipelines import STAGES, check_stage

        if stage not in STAGES:
            raise JobError(f"unknown stage {stage!r}; stages: {', '.join(STAGES)}")
        spec = self._prepare_spec(spec, overrides)
        check_stage(spec, stage)  # before anything is sent: a stage the spec's kind has not is refused here
        entrypoint = " ".join([self._job_python(), "-m", f"jobs.{stage}", "--spec-json",
                               shlex.quote(json.dumps(spec.model_dump(mode="json"), separators=(",", ":"))),
                               *map(shlex.quote, args or [])])
        runtime_env: dict[str, Any] = {**self._shipped_code(), "env_vars": {"PYTHONUNBUFFERED": "1"}}
        job_id = name or f"maas-{stage}-{spec.model.name}-{uuid.uuid4().hex[:8]}"
        return self._submit(entrypoint, runtime_env, job_id, {"maas_stage": stage, "maas_model": spec.model.name})

    def evaluate(self, refs: Union[str, list[str]], tasks: list, *, store: str = ".maas",
                 name: Optional[str] = None) -> Job:
        """Score registered language models on lm-evaluation-harness tasks in a Ray job (``jobs/evaluate.py``:
        lm-eval in-process on each version's verified files, as ``maas eval`` does here). Its result line has
        ``scores``: {version ref: {harness, model, tasks: {name: {metric, score, items, sha256, answers}}}}.

        Args:
            refs: a version (``name@alias``, ``name/version``, ``name``) or several, scored on the same tasks.
            tasks: ``maas.spec.EvalTaskSpec`` (or mappings of its fields); local files are made absolute and
                must be readable where the job runs (a URI otherwise).
            store: the registry's URI.

        Example:
            >>> job = maas.Client().evaluate(["lm/3", "lm@production"], [EvalTaskSpec(name="caps",
            ...     path="s3://bucket/caps.jsonl", type="multiple_choice")], store="s3://bucket/maas")
            >>> job.result()["scores"]["lm/3"]["tasks"]["caps"]["score"]
        """
        from maas.spec.evaluation import EvalTaskSpec

        local = self.embedded or _is_local(self.address)
        specs = [t if isinstance(t, EvalTaskSpec) else EvalTaskSpec(**t) for t in tasks]
        fixed = []
        for field, value in [("store", store)] + [(f"tasks[{i}].path", t.path) for i, t in enumerate(specs)]:
            if "://" in value or os.path.isabs(value) or local:
                continue
            raise SpecError([(field, f"{value!r} is a relative local path, which means nothing on a remote "
                                     "cluster: use a URI (s3://bucket/...) or a shared absolute path")], "evaluate")
        for t in specs:
            absolute = t.path if "://" in t.path else os.path.abspath(t.path)
            fixed.append(t.model_copy(update={"path": absolute}).model_dump(mode="json"))
        store = store if "://" in store else os.path.abspath(store)
        refs = [refs] if isinstance(refs, str) else list(refs)
        entrypoint = " ".join([self._job_python(), "-m", "jobs.evaluate", "--store", shlex.quote(store),
                               *(f"--ref {shlex.quote(r)}" for r in refs), "--tasks-json",
                               shlex.quote(json.dumps(fixed, separators=(",", ":")))])
        runtime_env = {**self._shipped_code(), "env_vars": {"PYTHONUNBUFFERED": "1"}}
        model = refs[0].split("@")[0].split("/")[0]
        return self._submit(entrypoint, runtime_env, name or f"maas-eval-{model}-{uuid.uuid4().hex[:8]}",
                            {"maas_stage": "eval", "maas_model": model})

    def batch(self, ref: str, input: str, output: str, *, store: str = ".maas", id_column: str = "id",
              fmt: str = "parquet", batch_size: Optional[int] = None, max_tokens: Optional[int] = None,
              temperature: Optional[float] = None, name: Optional[str] = None) -> Job:
        """Answer every row of ``input`` with the registered version ``ref`` in a Ray job (``jobs/batch.py``, the
        same ``maas.batch.run_batch`` that ``maas batch`` runs): ``output``/answers and ``output``/rejects.
        Its result line has the version, ``rows``, ``answered``, ``rejected`` and ``files``. Submitting the
        same batch again finishes one that was stopped. ``max_tokens`` and ``temperature``: a language model's
        sampling (greedy by default).

        Example:
            >>> job = maas.Client("http://head:8265").batch("digits@production", "s3://bucket/new/",
            ...                                             "s3://bucket/scored/", store="s3://bucket/maas")
            >>> job.result()["answered"]
        """
        local = self.embedded or _is_local(self.address)
        args = []
        for flag, value in (("--store", store), ("--input", input), ("--output", output)):
            if "://" not in value and not os.path.isabs(value):
                if not local:
                    raise SpecError([(flag.lstrip("-"), f"{value!r} is a relative local path, which means nothing "
                                                        "on a remote cluster: use a URI (s3://bucket/...) or a "
                                                        "shared absolute path")], "batch")
                value = os.path.abspath(value)
            args += [flag, shlex.quote(value)]
        entrypoint = " ".join([self._job_python(), "-m", "jobs.batch", "--ref", shlex.quote(ref), *args,
                               "--id-column", shlex.quote(id_column), "--format", fmt,
                               *(["--batch-size", str(int(batch_size))] if batch_size else []),
                               *(["--max-tokens", str(int(max_tokens))] if max_tokens is not None else []),
                               *(["--temperature", repr(float(temperature))] if temperature is not None else [])])
        runtime_env = {**self._shipped_code(), "env_vars": {"PYTHONUNBUFFERED": "1"}}
        model = ref.split("@")[0].split("/")[0]
        return self._submit(entrypoint, runtime_env, name or f"maas-batch-{model}-{uuid.uuid4().hex[:8]}",
                            {"maas_stage": "batch", "maas_model": model})

    def _job_python(self) -> str:
        """The job's interpreter, quoted: embedded, this very one; a cluster, the `python` on its nodes' PATH
        (as `ray job submit`)."""
        return shlex.quote(sys.executable if self.embedded else "python")

    @staticmethod
    def _shipped_code() -> dict:
        """The runtime env that ships maas and the job entrypoints: a cluster needs ray and the libraries, not
        maas itself."""
        return {"py_modules": [str(Path(__file__).resolve().parents[1]), jobs_folder()]}

    def _submit(self, entrypoint: str, runtime_env: dict, job_id: str, metadata: dict,
                agent_wait_s: float = 60) -> Job:
        """submit_job, retrying while a just-started head has no job agent registered yet."""
        deadline = time.monotonic() + agent_wait_s
        while True:
            try:
                self._jobs.submit_job(entrypoint=entrypoint, runtime_env=runtime_env, submission_id=job_id,
                                      metadata=metadata)
                return Job(self, job_id)
            except Exception as exc:
                text = str(exc)
                if "No available agent" in text and time.monotonic() < deadline:
                    time.sleep(1)
                    continue
                raise JobError(f"the cluster at {self.address} refused the job: {text.splitlines()[0]}") from None

    def submit_command(self, entrypoint: str, runtime_env: Optional[dict] = None,
                       name: Optional[str] = None) -> Job:
        """Run any shell command as a job on the cluster (a custom script, a one-off check).

        Example:
            >>> client.submit_command("python -c 'import torch; print(torch.cuda.is_available())'").result()
        """
        return self._submit(entrypoint, runtime_env or {}, name or f"maas-cmd-{uuid.uuid4().hex[:8]}",
                            {"maas_stage": "command"})

    def metrics(self, prefix: str = "maas_", timeout: float = 120) -> list[dict]:
        """The cluster's Prometheus samples whose name starts with ``prefix``, read from inside the cluster by a
        short job (every node's metrics endpoint: the ports need not be reachable from here).

        Args:
            prefix: metric name prefix, e.g. ``"maas_llm_tokens_total"``.
            timeout: seconds to wait for the job.

        Returns:
            ``[{"name", "labels", "value", "node"}, ...]``; Ray exports new samples every few seconds.

        Raises:
            JobError: the job failed or printed no result.

        Example:
            >>> [(s["labels"]["version"], s["value"]) for s in client.metrics("maas_llm_tokens_total")]
        """
        job = self._submit(f"{self._job_python()} -m jobs.metrics --prefix {shlex.quote(prefix)}",
                           self._shipped_code(), f"maas-metrics-{uuid.uuid4().hex[:8]}", {"maas_stage": "metrics"})
        result = job.result(timeout)
        if result.get("status") != "succeeded":
            raise JobError(f"reading metrics failed: {result.get('error') or job.tail(10)}")
        return result["samples"]

    def actors(self, state: str = "ALIVE") -> list[dict]:
        """The cluster's actors in ``state`` (class name, job, node): e.g. to check what a stopped job left."""
        import requests

        r = requests.get(f"{self.address}/api/v0/actors", headers=self._headers, timeout=30,
                         params={"filter_keys": "state", "filter_predicates": "=", "filter_values": state,
                                 "limit": 10000})
        if r.status_code != 200:
            raise JobError(f"listing actors at {self.address} failed: HTTP {r.status_code} {r.text[:200]}")
        return r.json()["data"]["result"]["result"]

    def job(self, job_id: str) -> Job:
        job = Job(self, job_id)
        job.info()  # raises JobError when unknown
        return job

    def jobs(self) -> list[dict]:
        """Every job the cluster knows, newest first: id, status, stage, model, start/end time."""
        out = []
        for j in self._jobs.list_jobs():
            meta = j.metadata or {}
            out.append({"id": j.submission_id or j.job_id, "status": str(getattr(j.status, "value", j.status)),
                        "stage": meta.get("maas_stage", ""), "model": meta.get("maas_model", ""),
                        "start_time": j.start_time, "end_time": j.end_time, "message": j.message or ""})
        return sorted(out, key=lambda d: d["start_time"] or 0, reverse=True)


__all__ = ["Client", "Job", "RESULT_KEY", "TERMINAL", "jobs_folder", "progress_event"]
