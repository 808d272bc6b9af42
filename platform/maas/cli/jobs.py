"""The ``maas`` commands that talk to Ray's Jobs API: submit a stage, follow, list, stop."""

from __future__ import annotations

import os
import time

from maas.exceptions import MaasError


def _say(msg: str) -> None:
    print(msg, flush=True)


def _client(address, need_cluster: bool = False, verbose: bool = False, insecure: bool = False):
    import logging

    from maas.submit import Client, JobError


    address = address or os.environ.get("RAY_ADDRESS")
    if need_cluster and not address:
        raise JobError("this command talks to a running cluster: pass --address http://<head>:8265 or set "
                       "RAY_ADDRESS (start a local one with `ray start --head`)")
    client = Client(address, insecure=insecure)
    if not verbose:  # Ray's job client logs each upload of the shipped code at INFO: not the user's business
        for name in ("ray", "ray.dashboard.modules.dashboard_sdk"):
            logging.getLogger(name).setLevel(logging.WARNING)
    return client


def _follow(job, client, verbose: bool = False) -> int:
    """Follow a job as `maas run` reads: its stage progress, then the summary table the run prints (with
    ``verbose``, the raw log: Ray's own lines and the result line too). Ctrl-C detaches (the job keeps
    running on a cluster)."""
    result: dict = {}
    try:
        if verbose:
            for chunk in job.logs(follow=True):
                print(chunk, end="", flush=True)
        else:
            for event in job.events():
                if event["stage"] == "result":
                    result = event
                else:
                    _say(f"  [{event['stage']}] {event['detail']}")
    except KeyboardInterrupt:
        if client.embedded:
            _say(f"\nstopping job {job.id} (it runs on this process's embedded Ray) ...")
            job.stop()
            job.wait(timeout=60)
            client.shutdown()
            return 130
        addr = f" --address {client.address}"
        _say(f"\ndetached; job {job.id} keeps running.\n  follow: maas logs {job.id} --follow{addr}\n"
             f"  status: maas status {job.id}{addr}\n  stop:   maas stop {job.id}{addr}")
        return 0
    status = job.status()
    if not result:
        try:
            result = job.result()
        except MaasError:
            pass
    if result.get("summary"):
        _say("\n" + result["summary"])
    if status == "SUCCEEDED":
        seconds = f" in {result['seconds']} s" if result.get("seconds") is not None else ""
        _say(f"\njob {job.id} SUCCEEDED{seconds}" + (f"; {result.get('alias')} -> {result['promoted']}"
                                                     if result.get("promoted") else ""))
        return 0
    _say(f"\njob {job.id} {status}" + (f": {result['error']}" if result.get("error") else ""))
    return 1


def cmd_submit(args) -> int:
    from maas.pipelines import check_stage
    from maas.spec import load_spec

    spec = load_spec(args.spec, args.overrides)  # a bad spec or a stage its kind lacks: said before Ray starts
    check_stage(spec, args.stage)
    client = _client(args.address, verbose=args.verbose, insecure=args.insecure)
    if args.async_ and client.embedded:
        client.shutdown()
        raise MaasError("--async needs a cluster that outlives this command: pass --address or set RAY_ADDRESS "
                        "(without one the job runs on an embedded Ray that ends with `maas submit`)")
    extra = ["--serve"] if args.serve else []
    for flag in ("run_id", "run_name", "parent", "ref"):
        if getattr(args, flag):
            extra += [f"--{flag.replace('_', '-')}", getattr(args, flag)]
    job = client.submit(spec, stage=args.stage, args=extra)
    _say(f"submitted {job.id} to {client.address} ({'embedded Ray' if client.embedded else 'cluster'})")
    if args.async_:
        _say(f"  follow: maas logs {job.id} --follow --address {client.address}\n"
             f"  stop:   maas stop {job.id} --address {client.address}")
        return 0
    code = _follow(job, client, args.verbose)
    client.shutdown()
    return code


def cmd_jobs(args) -> int:
    from maas.report import table

    rows = [[j["id"], j["status"], j["stage"], j["model"],
             time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(j["start_time"] / 1000)) if j["start_time"] else "",
             j["message"][:60]] for j in _client(args.address, need_cluster=True, insecure=args.insecure).jobs()]
    _say(table(["job", "status", "stage", "model", "started", "message"], rows) if rows else "no jobs")
    return 0


def cmd_status(args) -> int:
    job = _client(args.address, need_cluster=True, insecure=args.insecure).job(args.job_id)
    status = job.status()
    _say(status)
    if status == "FAILED":
        _say(job.tail(15))
    return 0


def cmd_logs(args) -> int:
    client = _client(args.address, need_cluster=True, insecure=args.insecure)
    job = client.job(args.job_id)
    if args.follow:
        return _follow(job, client, args.verbose)
    print(job.logs(), end="")
    return 0


def cmd_stop(args) -> int:
    job = _client(args.address, need_cluster=True, insecure=args.insecure).job(args.job_id)
    job.stop()
    _say(f"stopping {job.id} ...")
    _say(f"{job.id} {job.wait(timeout=120)}")
    return 0
