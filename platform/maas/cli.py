"""The ``maas`` command: a thin skin over the library.

User errors (bad spec, missing data, unknown model ...) print one clear message and exit 2; set
``MAAS_DEBUG=1`` to see the traceback.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
import traceback

from maas.exceptions import MaasError

DEFAULT_STORE = os.environ.get("MAAS_STORE", ".maas")


def _say(msg: str) -> None:
    print(msg, flush=True)


def cmd_validate(args) -> int:
    from maas.spec import load_spec

    failed = 0
    for path in args.specs:
        try:
            spec = load_spec(path, args.set)
            _say(f"{path}: ok (model {spec.model.name}, spec hash {spec.spec_hash()[:12]})")
        except MaasError as err:
            _say(str(err))
            failed += 1
    return 2 if failed else 0


def cmd_run(args) -> int:
    from maas.pipeline import run_pipeline
    from maas.report import curl_example, pipeline_summary
    from maas.runtime import ensure_ray
    from maas.spec import load_spec

    spec = load_spec(args.spec, args.overrides)
    serve = spec.deploy.enabled and not args.no_serve
    started = time.perf_counter()
    local = ensure_ray(args.address, quiet=not args.verbose)
    _say(f"maas: {'embedded local Ray' if local else 'Ray at ' + (args.address or os.environ['RAY_ADDRESS'])}"
         f" | spec {args.spec} ({spec.spec_hash()[:12]})")
    result = run_pipeline(spec, serve=serve, progress=lambda stage, detail: _say(f"  [{stage}] {detail}"))
    _say("")
    _say(pipeline_summary(result))
    _say(f"\npipeline finished in {time.perf_counter() - started:.1f} s; stages (s): "
         + ", ".join(f"{k} {v}" for k, v in result.stage_seconds.items()))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result.to_dict(), f, indent=2, default=str)
    if not serve:
        return 0
    _say(f"\nendpoint: {result.endpoint}/v2/models/{spec.model.name}  (serving {result.promoted_ref})")
    _say("try it:\n  " + curl_example(result.endpoint, spec.model.name, result.example_row))
    _say("\nserving until Ctrl-C ...")
    return _serve_forever()


def _interrupt(signum, frame):
    raise KeyboardInterrupt


def _serve_forever() -> int:
    import signal

    import ray
    from ray import serve

    # Ctrl-C and SIGTERM (a process manager, `kill PID`) both stop the endpoint cleanly; SIGINT is set
    # explicitly because a shell starting us in the background hands it down ignored.
    signal.signal(signal.SIGINT, _interrupt)
    signal.signal(signal.SIGTERM, _interrupt)
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        _say("\nstopping the endpoint ...")
    finally:
        serve.shutdown()
        ray.shutdown()
    return 0


def cmd_serve(args) -> int:
    from maas.runtime import ensure_ray
    from maas.serve import deploy

    ensure_ray(args.address)
    url = deploy(args.store, args.ref, host=args.host, port=args.port)
    name = args.ref.split("@")[0].split("/")[0]
    _say(f"serving {args.ref} at {url}/v2/models/{name} until Ctrl-C")
    return _serve_forever()


def cmd_models(args) -> int:
    from maas.registry import Registry
    from maas.report import human_bytes, table

    reg = Registry(args.store)
    if args.models_cmd == "list":
        rows = []
        for name in reg.list_models():
            for mv in reg.list_versions(name):
                acc = mv.metrics.get("test_accuracy")
                rows.append([mv.ref, mv.lineage.get("method", ""), mv.runtime, mv.status,
                             f"{acc:.4f}" if acc is not None else "", human_bytes(mv.size_bytes),
                             ",".join(mv.aliases), time.strftime("%Y-%m-%d %H:%M", time.localtime(mv.created_at))])
        if not rows:
            _say(f"no models in {reg.location} (run `maas run examples/digits.yaml` to make one)")
            return 0
        _say(table(["version", "method", "runtime", "status", "test acc", "size", "aliases", "created"], rows))
        return 0
    mv = reg.resolve(args.ref)
    _say(json.dumps(mv.model_dump(mode="json"), indent=2))
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="maas", description="Model-as-a-Service on Ray: data -> train -> "
                                                         "compress -> registry -> serve, from one spec.")
    sub = p.add_subparsers(dest="cmd", required=True)

    r = sub.add_parser("run", help="run the whole pipeline of a spec and serve the result")
    r.add_argument("spec", help="pipeline spec (YAML)")
    r.add_argument("overrides", nargs="*", metavar="key=value", help="spec overrides, e.g. train.epochs=5")
    r.add_argument("--no-serve", action="store_true", help="exit after publishing instead of serving")
    r.add_argument("--address", help="Ray cluster address (default: RAY_ADDRESS, else an embedded local Ray)")
    r.add_argument("--json", metavar="FILE", help="also write the run's result as JSON to FILE")
    r.add_argument("--verbose", action="store_true", help="show Ray's own logs and progress bars")
    r.set_defaults(func=cmd_run)

    v = sub.add_parser("validate", help="check spec files; every problem is reported at once")
    v.add_argument("specs", nargs="+")
    v.add_argument("--set", action="append", default=[], metavar="key=value", help="override before checking")
    v.set_defaults(func=cmd_validate)

    m = sub.add_parser("models", help="list and inspect registered models")
    m.add_argument("--store", default=DEFAULT_STORE, help="registry URI (default: .maas or MAAS_STORE)")
    msub = m.add_subparsers(dest="models_cmd", required=True)
    msub.add_parser("list", help="every version of every model")
    show = msub.add_parser("show", help="one version's manifest: metrics, lineage, files")
    show.add_argument("ref", help="name@alias, name/version or name (latest)")
    m.set_defaults(func=cmd_models)

    s = sub.add_parser("serve", help="serve a registered model over Open Inference Protocol v2")
    s.add_argument("ref", help="name@alias or name/version")
    s.add_argument("--store", default=DEFAULT_STORE)
    s.add_argument("--host", default="127.0.0.1")
    s.add_argument("--port", type=int, default=8000)
    s.add_argument("--address", help="Ray cluster address (default: embedded local Ray)")
    s.set_defaults(func=cmd_serve)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except MaasError as err:
        if os.environ.get("MAAS_DEBUG"):
            traceback.print_exc()
        print(f"error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
