"""Submission overhead: maas SDK vs plain `ray job submit`, same head, same run.

Starts its own head (`ray start --head --block`, ended by PID), then for a trivial job and for the digits
pipeline measures submit -> RUNNING and submit -> SUCCEEDED, both polled the same way (every 50 ms through
the Jobs API). The CLI figures include the `ray` command's own start-up, as a user pays it.

    python benchmarks/submit_latency.py [--reps 3] [--pipeline-reps 1]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent


def timings(client, job_id: str, t0: float) -> tuple[float, float]:
    running = None
    while True:
        status = client._jobs.get_job_status(job_id).value
        if status == "RUNNING" and running is None:
            running = time.perf_counter() - t0
        if status in ("SUCCEEDED", "FAILED", "STOPPED"):
            done = time.perf_counter() - t0
            if status != "SUCCEEDED":
                raise RuntimeError(f"{job_id} {status}:\n{client._jobs.get_job_logs(job_id)[-2000:]}")
            return (running if running is not None else done), done
        time.sleep(0.05)


def via_cli(client, address: str, entrypoint: list[str], working_dir: str | None) -> tuple[float, float]:
    job_id = f"cli-{uuid.uuid4().hex[:8]}"
    cmd = [str(BIN / "ray"), "job", "submit", "--no-wait", "--address", address, "--submission-id", job_id]
    if working_dir:
        cmd += ["--working-dir", working_dir]
    t0 = time.perf_counter()
    subprocess.run(cmd + ["--"] + entrypoint, check=True, capture_output=True, text=True)
    return timings(client, job_id, t0)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--pipeline-reps", type=int, default=1)
    args = ap.parse_args()
    from maas.runtime import start_head, stop_head
    from maas.submit import Client

    base = Path(tempfile.mkdtemp(prefix="maas-bench-", dir="/tmp"))
    env = dict(os.environ)
    env["PATH"] = f"{BIN}:{env['PATH']}"  # `python` in the CLI's job entrypoints is this environment's
    proc, address = start_head(str(base), num_cpus=4, env=env)
    try:
        client = Client(address)
        rows = []
        trivial = ["python", "-c", "print('hello')"]
        sdk, cli = [], []
        for _ in range(args.reps):
            t0 = time.perf_counter()
            job = client.submit_command(" ".join([trivial[0], trivial[1], repr(trivial[2])]))
            sdk.append(timings(client, job.id, t0))
            cli.append(via_cli(client, address, trivial, None))
        rows += [("trivial job", "maas SDK", sdk), ("trivial job", "ray job submit", cli)]

        store, data = base / "store", base / "digits.parquet"
        overrides = [f"store={store}", f"data.path={data}"]
        sdk, cli = [], []
        for _ in range(args.pipeline_reps):
            t0 = time.perf_counter()
            job = client.submit(ROOT / "examples" / "digits.yaml", overrides)
            sdk.append(timings(client, job.id, t0))
            cli.append(via_cli(client, address, ["python", "-m", "jobs.pipeline", "--spec",
                                                 "examples/digits.yaml", *overrides], str(ROOT)))
        rows += [("digits pipeline", "maas SDK", sdk), ("digits pipeline", "ray job submit", cli)]

        print(f"\nsubmission latency on {os.cpu_count()} cores (median of runs; seconds)\n")
        print(f"{'job':<16} {'client':<15} {'runs':>4} {'submit->RUNNING':>16} {'submit->SUCCEEDED':>18}")
        for job, how, values in rows:
            run = statistics.median(v[0] for v in values)
            done = statistics.median(v[1] for v in values)
            print(f"{job:<16} {how:<15} {len(values):>4} {run:>16.2f} {done:>18.2f}")
    finally:
        stop_head(proc)


if __name__ == "__main__":
    main()
