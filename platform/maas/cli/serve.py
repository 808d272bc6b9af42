"""``maas serve``: deploy registry versions on Ray Serve and keep them served until Ctrl-C."""

from __future__ import annotations

import time

from maas.cli.jobs import _say


def _interrupt(signum, frame):
    raise KeyboardInterrupt


def serve_forever() -> int:
    """Keep this process (and the embedded local Ray it may hold) alive until Ctrl-C or SIGTERM, then stop
    Serve and Ray and release what stopped vLLM engines left in /dev/shm."""
    import signal

    import ray

    from maas.serve.deploy import stop_serve
    from maas.serve.runtimes.vllm_config import release_shared_memory, shm_entries

    shm_before = shm_entries()
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
        for sig in (signal.SIGINT, signal.SIGTERM):  # a second Ctrl-C must not cut the shutdown short
            signal.signal(sig, signal.SIG_IGN)
        stop_serve()
        ray.shutdown()
        release_shared_memory(shm_before)  # what stopped vLLM engines left in /dev/shm
    return 0


def _runtime(store: str, ref: str) -> str:
    from maas.registry import Registry

    try:
        return Registry(store).resolve(ref).runtime
    except Exception:  # deploy() reports an unknown ref with the registry's message
        return ""


def deploy_settings(args) -> dict:
    """The deploy settings of ``maas serve``: the spec's ``deploy`` section (or DeploySpec's defaults), with
    the flags given on the command line over it; checked with the spec's rules by the caller."""
    from maas.spec import load_spec

    settings = load_spec(args.spec).deploy.model_dump() if args.spec else {}
    flags = {"host": args.host, "port": args.port, "grpc_port": args.grpc_port, "proxy": args.proxy}
    settings.update({k: v for k, v in flags.items() if v is not None})
    if args.canary:  # ALIAS[:PERCENT], checked with the other settings
        settings["canary"] = dict(zip(("alias", "percent"), [*args.canary.split(":", 1), 10][:2]))
    return settings


def cmd_serve(args) -> int:
    from maas.runtime import ensure_ray
    from maas.serve import deploy
    from maas.serve.runtimes import on_engine
    from maas.spec import deploy_spec_from_dict

    d = deploy_spec_from_dict(deploy_settings(args), "maas serve")  # checked before Ray starts
    ensure_ray(args.address)
    url = deploy(args.store, args.refs, d, progress=lambda line: _say(f"  {line}"))
    for ref in args.refs:
        name = ref.split("@")[0].split("/")[0]
        if on_engine(_runtime(args.store, ref)):
            _say(f"serving {ref} at {url}/v1 (OpenAI: chat/completions, completions, models; model '{name}')")
        else:
            grpc = f" (OIP gRPC on port {d.grpc_port})" if d.grpc_port else ""
            _say(f"serving {ref} at {url}/v2/models/{name}{grpc}")
    _say("moving an alias (`maas models alias NAME ALIAS VERSION`) rolls the served version over; Ctrl-C stops")
    return serve_forever()
