"""Registry I/O: publish + fetch of one large artifact vs a plain pyarrow copy of the same bytes, same run.

For each store (a local folder, and S3: moto's server on 127.0.0.1, started here and ended by its PID):

- plain: ``pyarrow.fs.copy_files`` of the file into the store, then back out to a fresh local file: the bytes
  moved with nothing checked;
- maas: ``Registry.publish`` (upload under a unique prefix, sha256 on the way, create-only manifest commit)
  then ``Registry.fetch`` of the new version into a cold cache (download, sha256 check; on a local store the
  artifact is checked in place).

Each is repeated ``--reps`` times; the table shows medians and the ratio maas / plain (goal: within 1.2x).

    python benchmarks/registry_io.py [--mb 100] [--reps 3] [--stores local,s3]
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def plain_copy(src: Path, uri: str, back: Path) -> tuple[float, float]:
    import pyarrow.fs as pafs

    fs, root = pafs.FileSystem.from_uri(uri) if "://" in uri else (pafs.LocalFileSystem(), uri)
    key = f"{root}/plain/{uuid.uuid4().hex}/{src.name}"
    fs.create_dir(key.rsplit("/", 1)[0], recursive=True)
    t0 = time.perf_counter()
    pafs.copy_files(str(src), key, source_filesystem=pafs.LocalFileSystem(), destination_filesystem=fs)
    t1 = time.perf_counter()
    pafs.copy_files(key, str(back), source_filesystem=fs, destination_filesystem=pafs.LocalFileSystem())
    t2 = time.perf_counter()
    return t1 - t0, t2 - t1


def maas_copy(src: Path, uri: str, cache: Path) -> tuple[float, float]:
    from maas.registry import Registry

    reg = Registry(uri, cache_dir=str(cache))
    t0 = time.perf_counter()
    mv = reg.publish("bench", {src.name: src}, runtime="torch")
    t1 = time.perf_counter()
    folder, _ = Registry(uri, cache_dir=str(cache)).fetch(mv.ref)
    t2 = time.perf_counter()
    assert (folder / src.name).stat().st_size == src.stat().st_size
    return t1 - t0, t2 - t1


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--mb", type=int, default=100)
    p.add_argument("--reps", type=int, default=3)
    p.add_argument("--stores", default="local,s3")
    args = p.parse_args()

    work = Path(tempfile.mkdtemp(prefix="maas-regio-"))
    src = work / "weights.bin"
    with open(src, "wb") as f:
        for _ in range(args.mb):
            f.write(os.urandom(1 << 20))
    rows = []
    try:
        for store in args.stores.split(","):
            if store == "s3":
                from tests.s3_helpers import S3_ENV, moto_server

                os.environ.update(S3_ENV)
                ctx = moto_server()
                endpoint = ctx.__enter__()
                os.environ["AWS_ENDPOINT_URL"] = endpoint
                import boto3

                boto3.client("s3", endpoint_url=endpoint).create_bucket(Bucket="maas-bench")
                uri = "s3://maas-bench/maas"
            else:
                ctx, uri = None, str(work / "store")
                os.makedirs(uri, exist_ok=True)
            try:
                plain, ours = [], []
                for i in range(args.reps):  # interleaved, so drift hits both alike
                    back = work / f"back-{i}.bin"
                    plain.append(plain_copy(src, uri, back))
                    back.unlink()
                    cache = work / f"cache-{store}-{i}"
                    ours.append(maas_copy(src, uri, cache))
                    shutil.rmtree(cache, ignore_errors=True)
                up_p, down_p = (statistics.median(x[k] for x in plain) for k in (0, 1))
                up_m, down_m = (statistics.median(x[k] for x in ours) for k in (0, 1))
                rows.append((store, up_p, down_p, up_m, down_m))
            finally:
                if ctx is not None:
                    ctx.__exit__(None, None, None)
    finally:
        shutil.rmtree(work, ignore_errors=True)

    print(f"\nregistry I/O, one {args.mb} MB artifact, median of {args.reps} (seconds; MB/s in brackets)\n")
    head = (f"{'store':<7} {'plain up':>16} {'plain down':>16} {'maas publish':>16} {'maas fetch':>16} "
            f"{'maas / plain':>13}")
    print(head)
    print("-" * len(head))
    for store, up_p, down_p, up_m, down_m in rows:
        def cell(s: float) -> str:
            return f"{s:.3f} ({args.mb / s:,.0f})"
        ratio = (up_m + down_m) / (up_p + down_p)
        print(f"{store:<7} {cell(up_p):>16} {cell(down_p):>16} {cell(up_m):>16} {cell(down_m):>16} {ratio:>12.2f}x")
    print("\nplain: pyarrow copy_files in and out, nothing checked. maas: publish (sha256 while uploading, "
          "create-only manifest) + fetch (cold cache: download + sha256; local store: sha256 in place).")
    return 0


if __name__ == "__main__":
    sys.exit(main())
