"""The train stage as a job: train on a prepared run (or prepare first), evaluate, publish the fp32 parent."""

from jobs._common import parser, run_job

if __name__ == "__main__":
    p = parser("train", __doc__)
    src = p.add_mutually_exclusive_group()
    src.add_argument("--run-id", help="use the splits of this earlier preprocess run instead of preparing again")
    src.add_argument("--run-name", help="a stable name for this run: resubmitting a stopped or failed job with the "
                                        "same name resumes it from its last checkpoint instead of starting over")
    raise SystemExit(run_job("train", p))
