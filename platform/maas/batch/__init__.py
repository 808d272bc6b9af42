"""Batch inference over data sets: ``maas batch REF --input URI --output URI``.

Ray Data reads the input (Parquet, CSV or JSON Lines, local or on object storage); an autoscaling pool of
actors, each holding the registry's verified files of one version, answers it block by block with the
endpoint's own parsing, predictor and output code (``maas.batch.rows``) and writes each block's answers and
rejects whole into the output folder's ``answers/`` and ``rejects/`` (``maas.batch.files``). Every input row
ends in exactly one of them: rows in = answers + rejects, checked at the end.

Resumable: the output folder keeps a manifest (input, id column, the version that answers). A rerun of the
same command into the same folder uses that version (even if the alias moved meanwhile), skips the ids
already written and answers the rest, so a run killed mid-way finishes with no row lost and none twice.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from typing import Callable, Optional

from maas.batch.files import (
    ANSWERS,
    FORMATS,
    MANIFEST,
    REJECTS,
    open_output,
    parts,
    read_manifest,
    write_manifest,
    write_part,
    written_ids,
)
from maas.exceptions import BatchError, DataError

__all__ = ["BatchResult", "run_batch"]


@dataclass
class BatchResult:
    ref: str                 # the version that answered, name/version
    input: str
    output: str
    rows: int                # rows in the input
    answered: int            # rows with an answer in the output (this run and earlier ones)
    rejected: int            # rows in output/rejects, each with its reason
    resumed: int = 0         # rows an earlier run had written, skipped by this one
    seconds: float = 0.0
    rows_per_s: float = 0.0
    files: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        return asdict(self)


class Answerer:
    """A Ray Data actor: one version's predictor, answering and writing block after block."""

    def __init__(self, store: str, ref: str, output: str, id_column: str, fmt: str, done: frozenset):
        from maas.models import load_predictor
        from maas.registry import Registry

        folder, mv = Registry(store).fetch(ref)  # every file checked against its sha256
        self.predictor = load_predictor(folder, mv.runtime, mv.task)
        self.mv, self.id_column, self.fmt, self.done = mv, id_column, fmt, done
        self.fs, self.output = open_output(output)

    def __call__(self, df):
        import pandas as pd

        from maas.batch.rows import answer

        todo = undone(df, self.id_column, self.done)
        skipped, df = len(df) - len(todo), todo
        answers, rejects = answer(df, self.predictor, self.mv.signature, self.mv.task, self.id_column, self.mv.ref)
        write_part(self.fs, f"{self.output}/{ANSWERS}", answers, self.id_column, self.fmt)
        write_part(self.fs, f"{self.output}/{REJECTS}", rejects, self.id_column, self.fmt)
        return pd.DataFrame({"answered": [len(answers)], "rejected": [len(rejects)], "skipped": [skipped]})


# rows per block (one model call, one file each): on 2 cores a block costs ~67 ms of Ray Data and file overhead
# and a digits row ~15 us (benchmarks/batch_oip.py); a MiniLM encoder takes seconds for 256 texts
# rows per engine call and output file for a language model: the engine batches across them (max_num_seqs)
BATCH_SIZES = {"classify": 16384, "embed": 256, "classify_text": 256, "generate": 64}


def run_batch(store: str, ref: str, input_uri: str, output_uri: str, *, id_column: str = "id",
              batch_size: Optional[int] = None, concurrency: Optional[int] = None, fmt: str = "parquet",
              max_tokens: Optional[int] = None, temperature: Optional[float] = None, llm: Optional[dict] = None,
              progress: Callable[[str], None] = lambda line: None) -> BatchResult:
    """Answer every row of ``input_uri`` with the registered version ``ref`` into ``output_uri``; run on the
    connected Ray (``maas.runtime.ensure_ray``). A language model generates (``maas.batch.llm``: a ``prompt``
    or ``messages`` column; ``max_tokens`` and ``temperature`` apply to it alone, greedy by default; ``llm``: its
    engine settings, ``deploy.llm``, the defaults' when None).

    Raises:
        BatchError: a flag, column or file that cannot work (the message names it); RegistryError: no such
            version, or one that is not servable.
    """
    import ray

    from maas.registry import Registry

    if fmt not in FORMATS:
        raise BatchError(f"--format must be one of {', '.join(FORMATS)}, got {fmt!r}")
    if batch_size is not None and batch_size < 1:
        raise BatchError(f"--batch-size must be at least 1, got {batch_size}")
    started = time.perf_counter()
    fs, out = open_output(output_uri)
    manifest = read_manifest(fs, out)
    if manifest is None and (parts(fs, f"{out}/{ANSWERS}") or parts(fs, f"{out}/{REJECTS}")):
        raise BatchError(f"--output: {output_uri} holds part files but no batch manifest ({MANIFEST}): give an "
                         "empty or new folder")
    mv = _version(Registry(store), ref, manifest, input_uri, id_column, fmt, output_uri)
    llm = _llm_settings(mv, max_tokens, temperature, llm)
    ds, ids = _read(input_uri, mv, id_column)
    answered, rejected = written_ids(fs, out, id_column) if manifest else ([], [])
    done = frozenset(answered) | frozenset(rejected)
    if manifest:
        progress(f"resuming into {output_uri}: {len(done)} of {len(ids)} rows already written by {mv.ref}")
    base = {"version": mv.ref, "asked": ref, "input": input_uri, "id_column": id_column, "format": fmt,
            **({"sampling": llm[1]} if llm else {})}
    if manifest and manifest.get("sampling") and llm and manifest["sampling"] != llm[1]:
        raise BatchError(f"--output: {output_uri} holds a batch sampled with {manifest['sampling']}; this command "
                         f"asks {llm[1]}: give the same --max-tokens and --temperature, or another --output")
    write_manifest(fs, out, {**base, "rows": len(ids), "status": "running", "started": time.time()})
    if llm:
        from maas.batch.llm import answers

        # the rows an earlier run wrote are dropped before the engine, which is never asked for them again
        todo = ds.map_batches(undone, fn_kwargs={"id_column": id_column, "done": done}, batch_format="pandas",
                              num_cpus=0) if done else ds
        counts = answers(todo, store, mv, output_uri, id_column, fmt, llm[1], concurrency,
                         batch_size or BATCH_SIZES[mv.task], llm[0])
    else:
        workers = concurrency or max(1, int(ray.cluster_resources().get("CPU", 1)) - 1)
        counts = ds.map_batches(Answerer, fn_constructor_kwargs={
            "store": store, "ref": mv.ref, "output": output_uri, "id_column": id_column, "fmt": fmt, "done": done},
            batch_size=batch_size or BATCH_SIZES[mv.task], batch_format="pandas", concurrency=(1, workers),
            num_cpus=1)
    if len(done) < len(ids):
        _follow(counts, len(ids) - len(done), started, progress)
    return _finish(fs, out, output_uri, ids, len(done), started, base)


def _version(registry, ref: str, manifest: Optional[dict], input_uri: str, id_column: str, fmt: str,
             output_uri: str):
    """The version that answers: ``ref``'s, or on a rerun into the same output the one that began it."""
    from maas.exceptions import RegistryError

    if manifest:
        same = {"input": input_uri, "id_column": id_column, "format": fmt}
        differ = [k for k, v in same.items() if manifest.get(k) != v]
        if differ:
            raise BatchError(f"--output: {output_uri} holds a batch of {manifest.get('input')} (id column "
                             f"{manifest.get('id_column')!r}, {manifest.get('format')}); its "
                             f"{', '.join(differ)} differ from this command's: give another --output")
        ref = manifest["version"]
    mv = registry.resolve(ref)
    if mv.status != "ready":
        raise RegistryError(f"{mv.ref} was {mv.status} by its quality gate and is not served or batched")
    from maas.batch.rows import input_columns
    from maas.serve.runtimes import on_engine

    if not on_engine(mv):
        input_columns(mv.signature, mv.task)  # a model kind batch cannot answer fails here, before any read
    return mv


def _llm_settings(mv, max_tokens: Optional[int], temperature: Optional[float], engine: Optional[dict]):
    """(the engine's settings, the sampling parameters) for a language model; None for other models, which
    refuse the generation flags."""
    from maas.serve.runtimes import on_engine

    if not on_engine(mv):
        if max_tokens is not None or temperature is not None:
            raise BatchError(f"--max-tokens and --temperature are for language models; {mv.ref} is a {mv.task!r} "
                             "model")
        return None
    from maas.batch.llm import sampling
    from maas.spec import DeploySpec

    spec = DeploySpec(llm=engine or {}).llm
    return spec, sampling(max_tokens, temperature, spec)


def undone(df, id_column: str, done: frozenset):
    """The rows of ``df`` an earlier run into the same output did not write."""
    return df[~df[id_column].isin(done)] if done else df


def _read(input_uri: str, mv, id_column: str):
    """(the Ray dataset of the input, every row's id), checked: the columns the model reads, unique ids."""
    import pyarrow.dataset as pads

    from maas.batch.rows import check_columns, check_id_column
    from maas.data.readers import read_parquet
    from maas.data.source import resolve_files

    try:
        fs, files, fmt = resolve_files(input_uri, "auto")
    except DataError as err:
        raise BatchError(str(err).replace("data.path", "--input").replace("data.format", "--input")) from None
    if fmt not in ("parquet", "csv", "json"):
        raise BatchError(f"--input: {fmt} files are not batch input; give Parquet, CSV or JSON Lines")
    import ray.data

    reader = {"parquet": read_parquet, "csv": ray.data.read_csv, "json": ray.data.read_json}[fmt]
    ds = reader(files, filesystem=fs)
    try:
        table = pads.dataset(files, filesystem=fs, format=fmt)
    except (OSError, ValueError) as err:  # pyarrow's ArrowInvalid is a ValueError: a column changes type, ...
        why = str(err).splitlines()[-1]
        why = why.rpartition("Invalid: ")[2] or why  # pyarrow's cause comes last, after the paths
        raise BatchError(f"--input: {input_uri} cannot be read as {fmt}: {why[-300:]}") from None
    from maas.serve.runtimes import on_engine

    if on_engine(mv):
        from maas.batch.llm import prompt_columns

        check_id_column(table.schema.names, id_column)
        prompt_columns(table.schema.names)
    else:
        check_columns(table.schema.names, mv.signature, mv.task, id_column)
    ids = table.to_table(columns=[id_column]).column(id_column).to_pylist()
    if len(set(ids)) != len(ids):
        raise BatchError(f"--id-column: {id_column!r} repeats ids ({len(ids) - len(set(ids))} repeats); a batch "
                         "needs one id per row to resume without answering a row twice")
    if any(i is None for i in ids):
        raise BatchError(f"--id-column: {id_column!r} is empty in some rows; every row needs an id")
    return ds, ids


def _follow(counts, todo: int, started: float, progress: Callable[[str], None]) -> None:
    """Stream the per-block counts, saying rows done, rows/s and the time left every few seconds. The rate is
    measured from the first block on: the start-up before it (actors, a model, an engine) is said once."""
    from ray.exceptions import RayError

    done = last = 0
    first = None  # (time, rows) of the first block
    try:
        for block in counts.iter_batches(batch_size=None, batch_format="pandas"):
            done += int(block["answered"].sum() + block["rejected"].sum())
            now = time.perf_counter()
            if first is None:
                first = (now, done)
                progress(f"{done}/{todo} rows; the first after {now - started:.1f} s of start-up")
                last = now
            elif (now - last >= 2 or done == todo) and done > first[1]:
                rate = (done - first[1]) / max(now - first[0], 1e-9)
                progress(f"{done}/{todo} rows, {rate:,.0f} rows/s, {(todo - done) / rate:,.0f} s left")
                last = now
    except RayError as err:  # a worker's error: its own last line, and how to go on
        cause = str(getattr(err, "cause", None) or err).strip().splitlines()
        raise BatchError(f"the batch stopped after {done} rows: {cause[-1] if cause else type(err).__name__}; "
                         "what was written stays: run the same command again to finish it") from err


def _finish(fs, out: str, output_uri: str, ids: list, resumed: int, started: float, manifest: dict) -> BatchResult:
    """Read back what the output holds, check every input row is there exactly once, and mark the batch
    finished in its ``manifest`` (version, input, id column, format)."""
    ref, input_uri, id_column = manifest["version"], manifest["input"], manifest["id_column"]
    answered, rejected = written_ids(fs, out, id_column)
    written = answered + rejected
    if len(written) != len(set(written)) or set(written) != set(ids):
        raise BatchError(f"{output_uri}: {len(written)} rows written ({len(set(written))} ids) for {len(ids)} "
                         "input rows: run the same command again to finish it")
    seconds = time.perf_counter() - started
    result = BatchResult(ref=ref, input=input_uri, output=output_uri, rows=len(ids), answered=len(answered),
                         rejected=len(rejected), resumed=resumed, seconds=round(seconds, 2),
                         rows_per_s=round((len(ids) - resumed) / max(seconds, 1e-9), 1),
                         files={"answers": f"{output_uri.rstrip('/')}/{ANSWERS}",
                                "rejects": f"{output_uri.rstrip('/')}/{REJECTS}"})
    write_manifest(fs, out, {**manifest, "rows": len(ids), "status": "finished", "finished": time.time(),
                             "answered": result.answered, "rejected": result.rejected})
    return result
