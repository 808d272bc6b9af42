"""Registered models behind Open Inference Protocol v2, for the plain Serve CLI.

    serve run serve_apps.model_app:app model=digits alias=production store=/abs/path/.maas
    serve run serve_apps.model_app:app models=digits@production,wine/2 store=.maas
    serve run serve_apps.model_app:app model=digits canary_alias=candidate canary_percent=10
    serve run serve_apps/digits.yaml            # the same, as a config file (also for `serve deploy`)

Arguments: ``model`` with ``alias`` (default production) or ``version``, and optionally ``canary_alias`` and
``canary_percent``; or ``models``, a comma-separated list of ``name@alias`` / ``name/version`` (a YAML
list of those or of mappings in a config file). ``store`` (default .maas, made absolute here); ``spec``
(optional: take the deploy settings - replicas or autoscaling, resources, batching, limits, canary - from a
pipeline spec). API keys come from MAAS_API_KEYS / MAAS_API_KEYS_FILE where the application is built.
Moving an alias in the registry rolls the running application over to the new version (no redeploy).
"""

from __future__ import annotations

from maas.exceptions import ServeError
from maas.serve.deploy import build_checked_app
from maas.spec import DeploySpec, load_spec

ARGS = {"model", "models", "alias", "version", "canary_alias", "canary_percent", "store", "spec"}


def app(args: dict):
    unknown = set(args) - ARGS
    if unknown or ("model" in args) == ("models" in args):
        raise ServeError(f"serve_apps.model_app takes model=NAME [alias=A | version=N] [canary_alias=C "
                         f"canary_percent=P] or models=NAME@ALIAS,NAME/VERSION,..., plus [store=URI] [spec=FILE]; "
                         f"got {sorted(args)}")
    if "models" in args:
        models = args["models"]
        if isinstance(models, str):
            models = [m.strip() for m in models.split(",") if m.strip()]
    else:
        models = [{k: args[k] for k in
                   ("model", "alias", "version", "canary_alias", "canary_percent") if k in args}]
    deploy = load_spec(args["spec"]).deploy if "spec" in args else DeploySpec()
    # unknown or tampered versions fail at build time, with the registry's message
    return build_checked_app(str(args.get("store", ".maas")), models, deploy)[0]
