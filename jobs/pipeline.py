"""The whole pipeline as one Ray job: `python -m jobs.pipeline --spec examples/digits.yaml [key=value ...]`."""

from jobs._common import kind_stage, parser, run_job

_deployed: list = []


def body(args, spec):
    args.serve = args.serve and spec.deploy.enabled
    if args.serve:
        _deployed.append(spec.model.name)
    return kind_stage("pipeline")(args, spec)


def cleanup():
    """A stopped job leaves no Serve application behind (training actors die with the job's driver)."""
    if _deployed:
        from ray import serve

        for name in _deployed:
            try:
                serve.delete(name)
            except Exception:
                pass


if __name__ == "__main__":
    p = parser("pipeline", "data -> train -> compress -> registry [-> serve] as one job")
    p.add_argument("--serve", action="store_true", help="deploy <model>@<alias> at the end; the application "
                                                        "outlives the job (stop it with `serve shutdown`)")
    raise SystemExit(run_job("pipeline", p, body, cleanup))
