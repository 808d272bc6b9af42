"""The train stage as a job: train on a prepared run (or prepare first), evaluate, publish the fp32 parent."""

from jobs._common import parser, progress, run_job


def body(args, spec):
    from maas.data import load_prepared, run_dir_for
    from maas.pipeline import new_run_id, stage_data, stage_train
    from maas.registry import Registry

    if args.run_id:
        run_id = args.run_id
        data = load_prepared(run_dir_for(Registry(spec.store).location, run_id))
    else:
        run_id = new_run_id()
        progress("data", f"reading {spec.data.path}")
        data = stage_data(spec, run_id)
    progress("train", f"{spec.train.num_workers} workers x {spec.train.epochs} epochs")
    parent, trained = stage_train(spec, data, run_id)
    return {"run_id": run_id, "version": parent["ref"], "metrics": parent["metrics"], "history": trained.history,
            "device": trained.device}


if __name__ == "__main__":
    p = parser("train", __doc__)
    p.add_argument("--run-id", help="use the splits of this earlier preprocess run instead of preparing again")
    raise SystemExit(run_job("train", body, p))
