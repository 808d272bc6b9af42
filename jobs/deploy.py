"""The serve stage as a job: deploy a registered version; the application outlives the job."""

from jobs._common import parser, progress, run_job


def body(args, spec):
    from maas.pipeline import stage_deploy

    ref = args.ref or f"{spec.model.name}@{spec.deploy.alias}"
    progress("serve", f"{ref} on {spec.deploy.host}:{spec.deploy.port}")
    return {"ref": ref, "endpoint": stage_deploy(spec, ref)}


if __name__ == "__main__":
    p = parser("deploy", __doc__)
    p.add_argument("--ref", help="name@alias or name/version (default: <model>@<deploy.alias>)")
    raise SystemExit(run_job("deploy", body, p))
