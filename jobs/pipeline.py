"""The whole pipeline as one Ray job: `python -m jobs.pipeline --spec examples/digits.yaml [key=value ...]`."""

from jobs._common import parser, progress, run_job, variants_summary

_deployed: list = []


def body(args, spec):
    from maas.pipeline import run_pipeline

    serve = args.serve and spec.deploy.enabled
    if serve:
        _deployed.append(spec.model.name)
    if spec.kind == "encoder":
        from maas.compress.encoder_stage import run_encoder_pipeline

        result = run_encoder_pipeline(spec, serve=serve, progress=progress)
        return {"run_id": result.run_id, "run_dir": result.run_dir, "corpus": result.corpus,
                "variants": variants_summary(result.variants), "promoted": result.promoted_ref,
                "alias": result.alias, "endpoint": result.endpoint, "report": result.report,
                "stage_seconds": result.stage_seconds}
    if spec.kind == "lm":
        from maas.lm import run_lm_pipeline

        result = run_lm_pipeline(spec, serve=serve, progress=progress)
        return {"run_id": result.run_id, "run_dir": result.run_dir, "data_counts": result.data_counts,
                "data_fingerprint": result.data_fingerprint, "promoted": result.ref, "alias": result.alias,
                "metrics": result.metrics, "sample": result.sample, "endpoint": result.endpoint,
                "history": result.history, "stage_seconds": result.stage_seconds}
    result = run_pipeline(spec, serve=serve, progress=progress)
    return {"run_id": result.run_id, "run_dir": result.run_dir, "data_counts": result.data_counts,
            "data_fingerprint": result.data_fingerprint, "variants": variants_summary(result.variants),
            "promoted": result.promoted_ref, "alias": result.alias, "endpoint": result.endpoint,
            "history": result.history, "stage_seconds": result.stage_seconds}


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
    raise SystemExit(run_job("pipeline", body, p, cleanup))
