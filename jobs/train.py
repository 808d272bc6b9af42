"""The train stage as a job: train on a prepared run (or prepare first), evaluate, publish the fp32 parent."""

from jobs._common import parser, progress, run_job
from maas.exceptions import MaasError


def body(args, spec):
    from maas.data import load_prepared, run_dir_for
    from maas.pipeline import new_run_id, stage_data, stage_train
    from maas.registry import Registry

    if args.run_id:
        run_id = args.run_id
        data = load_prepared(run_dir_for(Registry(spec.store).location, run_id))
    elif args.run_name:
        # a named run: the same name is the same run folder, so a resubmitted job finds the splits it prepared
        # and Ray Train (same storage path and run name) resumes from the run's latest checkpoint
        run_id = args.run_name
        run_dir = run_dir_for(Registry(spec.store).location, run_id)
        try:
            data = load_prepared(run_dir)
            progress("data", f"run {run_id}: reusing the splits prepared by an earlier job")
        except MaasError:
            progress("data", f"reading {spec.data.path}")
            data = stage_data(spec, run_id)
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
    src = p.add_mutually_exclusive_group()
    src.add_argument("--run-id", help="use the splits of this earlier preprocess run instead of preparing again")
    src.add_argument("--run-name", help="a stable name for this run: resubmitting a stopped or failed job with the "
                                        "same name resumes it from its last checkpoint instead of starting over")
    raise SystemExit(run_job("train", body, p))
