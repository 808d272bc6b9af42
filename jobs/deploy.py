"""The serve stage as a job: deploy a registered version; the application outlives the job."""

from jobs._common import parser, run_job

if __name__ == "__main__":
    p = parser("deploy", __doc__)
    p.add_argument("--ref", help="name@alias or name/version (default: <model>@<deploy.alias>)")
    raise SystemExit(run_job("deploy", p))
