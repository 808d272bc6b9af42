"""The data stage as a job: read, validate (quarantine), split, fit normalisation, save the splits."""

from jobs._common import parser, progress, run_job


def body(args, spec):
    from maas.pipeline import new_run_id, stage_data

    run_id = args.run_id or new_run_id()
    progress("data", f"reading {spec.data.path}")
    data = stage_data(spec, run_id)
    return {"run_id": run_id, "data_counts": data.counts, "data_fingerprint": data.fingerprint,
            "features": len(data.features), "classes": data.classes}


if __name__ == "__main__":
    p = parser("preprocess", __doc__)
    p.add_argument("--run-id", help="name of the run folder (default: a new id)")
    raise SystemExit(run_job("preprocess", body, p))
