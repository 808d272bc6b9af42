"""Data stage throughput: maas on Ray Data vs the same op chain in pandas in one process, same run.

A synthetic Parquet file (default 2M rows: 8 numeric columns, 2 categorical, an integer label, with nulls,
out-of-range values and duplicates sprinkled in) goes through: cast, fill_null, a filter, dedupe, schema
checks (ranges, categories), a seeded split, one-hot encoding and standard scaling fitted on train. Each side
runs in its own fresh process; peak memory is the largest resident set of that process and all its
children (Ray's workers included), sampled every 0.1 s.

    python benchmarks/data_prep.py [--rows 2000000[,8000000...]] [--cpus 2] [--json out.json]

Several ``--rows`` sizes (comma-separated) show where Ray Data overtakes one process: it pays a start-up
cost, then scales with the cores.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

NUMERIC = [f"x{i}" for i in range(8)]
SPEC = {
    "label": "y",
    "max_reject_fraction": 0.05,
    "columns": {**{c: {"type": "float", "nullable": False, "min": -100, "max": 100} for c in NUMERIC},
                "city": {"type": "string", "allowed": ["paris", "tokyo", "lima", "oslo", "cairo"]},
                "plan": {"type": "string", "nullable": False}, "y": {"type": "int", "allowed": [0, 1, 2]}},
    "ops": [{"cast": {"x0": "float"}}, {"fill_null": {"plan": "basic"}}, {"filter": "x1 > -50"},
            {"dedupe": True}, {"encode": {"onehot": ["city", "plan"]}}],
}


def make_data(path: Path, rows: int) -> None:
    import pandas as pd

    rng = np.random.default_rng(0)
    df = pd.DataFrame({c: rng.normal(0, 10, rows).astype(np.float64) for c in NUMERIC})
    df["city"] = rng.choice(["paris", "tokyo", "lima", "oslo", "cairo"], rows)
    df["plan"] = rng.choice(["basic", "pro", "team"], rows).astype(object)
    df["y"] = rng.integers(0, 3, rows)
    bad = rng.choice(rows, rows // 100, replace=False)
    df.loc[bad[: len(bad) // 3], "x2"] = 1e6                     # out of range -> rejected
    df.loc[bad[len(bad) // 3: 2 * len(bad) // 3], "plan"] = None  # filled
    df.loc[bad[2 * len(bad) // 3:], "city"] = "atlantis"         # not a category -> rejected
    dup = rng.choice(rows, rows // 100, replace=False)
    half = len(dup) // 2
    df.iloc[dup[half:]] = df.iloc[dup[:half]].to_numpy()          # duplicates -> dropped
    df.to_parquet(path, row_group_size=100_000)


def run_pandas(path: str) -> dict:
    import pandas as pd

    t0 = time.perf_counter()
    df = pd.read_parquet(path)
    rows_in = len(df)
    df["x0"] = pd.to_numeric(df["x0"], errors="coerce")
    df["plan"] = df["plan"].fillna("basic")
    df = df[df.eval("x1 > -50")]
    df = df.drop_duplicates()
    ok = np.ones(len(df), bool)
    for c in NUMERIC:
        ok &= df[c].notna().to_numpy() & (df[c] >= -100).to_numpy() & (df[c] <= 100).to_numpy()
    ok &= df["city"].isin(["paris", "tokyo", "lima", "oslo", "cairo"]).to_numpy() & df["y"].isin([0, 1, 2]).to_numpy()
    good = df[ok]
    h = pd.util.hash_pandas_object(good, index=False).to_numpy(np.uint64)
    u = (h >> np.uint64(11)).astype(np.float64) / float(1 << 53)
    split = np.where(u < 0.7, "train", np.where(u < 0.85, "val", "test"))
    train = good[split == "train"]
    cats = {c: sorted(train[c].unique()) for c in ("city", "plan")}
    mean, std = train[NUMERIC].mean(), train[NUMERIC].std(ddof=0)
    out = {}
    for name in ("train", "val", "test"):
        part = good[split == name]
        x = ((part[NUMERIC] - mean) / std).astype(np.float32)
        for c, values in cats.items():
            for v in values:
                x[f"{c}={v}"] = (part[c] == v).astype(np.float32)
        out[name] = x
    return {"seconds": time.perf_counter() - t0, "rows_in": rows_in, "rows_ok": int(ok.sum()),
            "splits": {k: len(v) for k, v in out.items()}}


def run_maas(path: str, cpus: int) -> dict:
    import ray

    from maas.data import prepare_data
    from maas.runtime import ensure_ray  # noqa: F401 (quiet logging settings)
    from maas.spec import DataSpec

    ray.init(address="local", num_cpus=cpus, include_dashboard=False, logging_level="ERROR", log_to_driver=False)
    from ray.data import DataContext

    DataContext.get_current().enable_progress_bars = False
    t0 = time.perf_counter()
    r = prepare_data(DataSpec(path=path, **SPEC), tempfile.mkdtemp(prefix="maas-bench-run-"))
    for name in ("train", "val", "test"):  # consume the splits, as training would
        for _ in getattr(r, name).iter_batches(batch_size=65536):
            pass
    seconds = time.perf_counter() - t0
    ray.shutdown()
    return {"seconds": seconds, "rows_in": r.counts["rows_in"], "rows_ok": r.counts["rows_ok"],
            "splits": r.counts["splits"], "rejected": r.counts["rows_rejected"], "dropped": r.counts["rows_dropped"]}


def measure(args: list[str]) -> dict:
    """Run this script as a child doing one side; sample the RSS of its whole process tree."""
    import psutil

    proc = subprocess.Popen([sys.executable, __file__, *args], stdout=subprocess.PIPE, text=True)
    peak = [0]

    def sample():
        root = psutil.Process(proc.pid)
        while proc.poll() is None:
            try:
                total = sum(p.memory_info().rss for p in [root, *root.children(recursive=True)])
                peak[0] = max(peak[0], total)
            except psutil.Error:
                pass
            time.sleep(0.1)

    t = threading.Thread(target=sample, daemon=True)
    t.start()
    out, _ = proc.communicate()
    t.join()
    if proc.returncode:
        raise SystemExit(f"{args} failed with exit code {proc.returncode}")
    result = json.loads(out.strip().splitlines()[-1])
    result["peak_mb"] = peak[0] / 2 ** 20
    return result


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", default="2000000", help="rows of the synthetic file; several sizes comma-separated")
    ap.add_argument("--cpus", type=int, default=os.cpu_count() or 2)
    ap.add_argument("--json", default="", help="also write the figures here")
    ap.add_argument("--side", choices=["pandas", "maas"], help=argparse.SUPPRESS)
    ap.add_argument("--path", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.side:  # child: do one side, print its result as the last line
        result = run_pandas(args.path) if args.side == "pandas" else run_maas(args.path, args.cpus)
        print(json.dumps(result))
        return

    import platform

    import pandas
    import pyarrow
    import ray

    report = {"benchmark": "data_prep", "under_ray": "maas side only (Ray Data on a local Ray with --cpus)",
              "software": {"python": platform.python_version(), "ray": ray.__version__, "pandas": pandas.__version__,
                           "pyarrow": pyarrow.__version__, "machine_cpus": os.cpu_count()},
              "cpus": args.cpus, "sizes": []}
    for rows in [int(r) for r in args.rows.split(",")]:
        folder = Path(tempfile.mkdtemp(prefix="maas-data-bench-"))
        path = folder / "data.parquet"
        make_data(path, rows)
        size_mb = path.stat().st_size / 2 ** 20
        results = {side: measure(["--side", side, "--path", str(path), "--cpus", str(args.cpus)])
                   for side in ("pandas", "maas")}
        report["sizes"].append({"rows": rows, "parquet_mb": round(size_mb, 1), **results})
        if args.json:
            Path(args.json).write_text(json.dumps(report, indent=1))
        print(f"\n{rows:,} rows, {size_mb:.0f} MB Parquet, {args.cpus} CPUs; op chain: cast, fill_null, filter, "
              "dedupe, schema checks, split, one-hot + scaling fitted on train\n")
        print(f"{'engine':<24} {'seconds':>8} {'rows/s':>10} {'peak MB':>8} {'rows ok':>10}")
        for side, label in (("pandas", "pandas, one process"), ("maas", "maas on Ray Data")):
            r = results[side]
            print(f"{label:<24} {r['seconds']:>8.1f} {r['rows_in'] / r['seconds']:>10,.0f} {r['peak_mb']:>8.0f} "
                  f"{r['rows_ok']:>10,}")
        m = results["maas"]
        print(f"\nmaas accounted for every row: {m['rows_in']:,} in = {m['rows_ok']:,} ok + {m['rejected']:,} "
              f"rejected + {m['dropped']:,} dropped (each with its reason in the rejects Parquet)")
        shutil.rmtree(folder, ignore_errors=True)


if __name__ == "__main__":
    main()
