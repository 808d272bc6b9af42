"""One registered model behind Open Inference Protocol v2, for the plain Serve CLI.

    serve run serve_apps.model_app:app model=digits alias=production store=/abs/path/.maas
    serve run serve_apps/digits.yaml            # the same, as a config file (also for `serve deploy`)

Arguments: ``model`` (required), ``alias`` (default production) or ``version``, ``store`` (default .maas,
made absolute here), ``spec`` (optional: take the deploy settings - replicas or autoscaling, resources,
batching, limits - from a pipeline spec). API keys come from MAAS_API_KEYS / MAAS_API_KEYS_FILE where the
application is built.
"""

from __future__ import annotations

from maas.exceptions import ServeError
from maas.registry import Registry
from maas.serve.app import build_app
from maas.spec import DeploySpec, load_spec


def app(args: dict):
    unknown = set(args) - {"model", "alias", "version", "store", "spec"}
    if unknown or "model" not in args:
        raise ServeError(f"serve_apps.model_app takes model=NAME [alias=A | version=N] [store=URI] [spec=FILE]; "
                         f"got {sorted(args)}")
    if "alias" in args and "version" in args:
        raise ServeError("give alias=... or version=..., not both")
    ref = f"{args['model']}/{args['version']}" if "version" in args else f"{args['model']}@{args.get('alias', 'production')}"
    registry = Registry(str(args.get("store", ".maas")))
    registry.fetch(ref)  # unknown or tampered: fail at build time with the registry's message
    deploy = load_spec(args["spec"]).deploy if "spec" in args else DeploySpec()
    return build_app(registry.location, ref, deploy)
