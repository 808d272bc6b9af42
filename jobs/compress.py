"""The compress stage as a job: variants of a registered fp32 parent, gated, published, best one promoted."""

from jobs._common import parser, run_job

if __name__ == "__main__":
    p = parser("compress", __doc__)
    p.add_argument("--parent", help="fp32 version to compress, name/version (default: the latest version)")
    p.add_argument("--no-promote", action="store_true", help="publish the variants without moving the alias")
    raise SystemExit(run_job("compress", p))
