"""The data stage as a job: read, validate (quarantine), split, fit normalisation, save the splits."""

from jobs._common import parser, run_job

if __name__ == "__main__":
    p = parser("preprocess", __doc__)
    p.add_argument("--run-id", help="name of the run folder (default: a new id)")
    raise SystemExit(run_job("preprocess", p))
