"""Building and deploying a maas Serve application: the deployment options from a DeploySpec, the model
list checked against the registry first (an unknown or tampered version fails here, with the registry's
message, not inside a replica), and where Serve's proxy really listens."""

from __future__ import annotations

import logging
import os
import time
from typing import Callable, Optional

from ray import serve

from maas.ports import default_or_free, free_window, port_free
from maas.registry import Registry
from maas.serve import ray_private
from maas.serve.app import ModelServer
from maas.serve.runtimes import on_engine
from maas.serve.served import fetch_all, normalize_routes
from maas.serve.tenancy import load_api_key_hashes
from maas.spec import DeploySpec
from maas.spec.common import EVERY_INTERFACE

logger = logging.getLogger("ray.serve")


def build_app(store: str, models, deploy: Optional[DeploySpec] = None, api_key_hashes: Optional[list] = None,
              generative: Optional[bool] = None):
    """The Serve Application for one or more models: ``"digits@production"``, ``"digits/3"``, or a list of
    those and/or dicts ``{model, alias | version, canary_alias, canary_percent}``.

    Replicas or autoscaling, replica resources, batching and the alias poll come from ``deploy`` (a
    DeploySpec; its ``canary`` applies to the first model when that entry names none); API key digests from
    ``api_key_hashes`` (default: MAAS_API_KEYS / MAAS_API_KEYS_FILE of this process). ``generative``: whether a
    model is served by vLLM engines (they run in the replicas, which then take their placement:
    ``DeploySpec.serve_options``); default: looked up in the registry.
    """
    d = deploy or DeploySpec()
    routes = normalize_routes(models)
    if d.canary is not None and not routes[0]["canary_alias"]:
        routes[0].update(canary_alias=d.canary.alias, canary_percent=d.canary.percent)
    if generative is None:
        generative = serves_generative(Registry(store), routes)
    hashes = load_api_key_hashes() if api_key_hashes is None else api_key_hashes
    return ModelServer.options(**d.serve_options(generative)).bind(
        store, routes, d.max_batch_size, d.batch_wait_timeout_s, d.max_request_bytes, hashes, d.alias_poll_s,
        max_pinned_versions=d.max_pinned_versions, llm=d.llm.model_dump(),
        pinned_loads_per_minute=d.pinned_loads_per_minute, max_rows_per_request=d.max_rows_per_request,
        max_batch_file_bytes=d.max_batch_file_bytes)


def serves_generative(registry: Registry, routes: list[dict]) -> bool:
    """Whether any route's version (now) runs on a vLLM engine; a route that does not resolve yet counts as not."""
    for r in routes:
        ref = f"{r['model']}/{r['version']}" if r["version"] is not None else f"{r['model']}@{r['alias']}"
        try:
            if on_engine(registry.resolve(ref)):
                return True
        except Exception:  # no alias yet: it answers 503 until one appears
            continue
    return False


def build_checked_app(store: str, models, deploy: Optional[DeploySpec] = None):
    """``build_app`` after fetching (and so verifying) every version the models point at now (a generative
    version is resolved here and fetched and verified by the replica that starts its engine)."""
    app, routes, _ = _checked(store, models, deploy)
    return app, routes


def _checked(store: str, models, deploy: Optional[DeploySpec]):
    registry = Registry(store)
    routes = normalize_routes(models)
    versions = fetch_all(registry, routes, (deploy or DeploySpec()).llm)
    generative = any(on_engine(mv) for mv in versions)
    return build_app(registry.location, routes, deploy, generative=generative), routes, generative


def warn_if_open(host: str, keys: bool) -> bool:
    """Log (and return True) when serving on an address other machines reach with no API keys set."""
    import ipaddress

    try:
        loopback = host == "localhost" or ipaddress.ip_address(host).is_loopback
    except ValueError:  # a host name: assume reachable
        loopback = False
    if loopback or keys:
        return False
    logging.getLogger("maas").warning(
        "maas: serving on %s without API keys: anyone who reaches this address can call every model. Set "
        "MAAS_API_KEYS=<key>[,<key>...] or MAAS_API_KEYS_FILE=<file, one key per line>, make named keys with "
        "`maas keys create`, or bind "
        "deploy.host=127.0.0.1", host)
    return True


def deploy(store: str, models, deploy: Optional[DeploySpec] = None, *, app_name: Optional[str] = None,
           route_prefix: str = "/", progress: Optional[Callable[[str], None]] = None) -> str:
    """Start Serve's HTTP proxy on deploy.host:port (if not running) and deploy ``models`` (see build_app) as
    application ``app_name`` (default: the first model's name) under ``route_prefix``; returns the base URL once
    every replica serves them (a model whose alias does not exist yet is left to answer 503 until it does).
    Waits on maas's own clock: ``deploy.llm.start_timeout_s`` for vLLM engines, which start in the replicas
    and report their progress to ``progress`` (fetching, verifying, loading). An application this call made
    that cannot serve is deleted again.

    Raises:
        RegistryError / IntegrityError: unknown or tampered version (checked here, before deploying).
        ServeError: bad model list or API key configuration; the application or a vLLM engine failed to start
            (with its error), or did not start in time.
    """
    from maas.serve.readiness import app_status, wait_until_serving

    d = deploy or DeploySpec()
    keyed = bool(load_api_key_hashes()) or has_named_keys(store)
    warn_if_open(d.host, keyed)
    start_serve(d, keyed)
    app, routes, generative = _checked(store, models, d)
    name = app_name or routes[0]["model"]
    new = app_status(name)[0] is None
    # not serve.run: it waits for Serve's proxies with a fixed 60 s limit, whatever the models need
    serve.run_many([serve.RunTarget(app, name=name, route_prefix=route_prefix)], wait_for_applications_running=False)
    url = f"http://{proxy_address(d.host, d.port)}" + ("" if route_prefix == "/" else route_prefix)
    opts = d.serve_options(generative)
    replicas = opts.get("num_replicas") or max(1, (d.autoscaling.min_replicas if d.autoscaling else 1) or 1)
    try:
        wait_until_serving(name, url, replicas, d.llm.start_timeout_s if generative else None,
                           progress or (lambda line: logging.getLogger("maas").info("maas: %s", line)))
    except BaseException:
        if new:
            undeploy(name)
        raise
    return url


# Ray Serve's high-throughput mode (Ray 2.60): HAProxy as the ingress, replicas taking HTTP and gRPC directly
# ("direct ingress"), the throughput-optimised defaults; maas's access log stays unbuffered (Ray's mode buffers
# 1,000 lines per replica, which holds a quiet endpoint's log back indefinitely).
THROUGHPUT_ENV = {"RAY_SERVE_ENABLE_HA_PROXY": "1", "RAY_SERVE_THROUGHPUT_OPTIMIZED": "1",
                  "RAY_SERVE_REQUEST_PATH_LOG_BUFFER_SIZE": "1"}


def has_named_keys(store: str) -> bool:
    """Whether the store holds named API keys (``maas keys``), which make its endpoints require a key."""
    from maas.registry import keys
    from maas.registry.objects import open_store

    try:
        return bool(keys.newest(open_store(store)))
    except Exception:  # an unreadable store is reported where the models are read
        return False


def start_serve(d: DeploySpec, keyed: bool = False) -> None:
    """Start Serve for ``d`` (its HTTP and gRPC ports, its ingress mode ``d.proxy``) unless it already runs on
    this cluster, and log which ingress is on."""
    log = logging.getLogger("maas")
    if ray_private.serve_controller_running():
        log.info("maas: Serve already runs on this cluster: its ingress and ports stay as they started")
        return
    if d.proxy == "throughput":
        remove_stale_haproxy_folders()
    env = {**THROUGHPUT_ENV, **haproxy_instance_env(), **haproxy_bound_env(d.host)} if d.proxy == "throughput" \
        else {"RAY_SERVE_ENABLE_HA_PROXY": "0", "RAY_SERVE_THROUGHPUT_OPTIMIZED": "0"}
    # Serve's own gRPC proxy (the default mode, and the fallback one) bounds messages as the replicas do
    env["RAY_SERVE_GRPC_MAX_MESSAGE_SIZE"] = str(d.grpc_message_limit())
    grpc = grpc_options(d.grpc_port)
    serve.start(http_options={"host": d.host, "port": d.port}, grpc_options=grpc,
                controller_options={"runtime_env": {"env_vars": env}})
    log.info("maas: Serve ingress: %s", "high-throughput (HAProxy in front of replicas taking HTTP and gRPC "
             "directly; deploy.proxy=default for Serve's Python proxy)" if d.proxy == "throughput" else
             "Serve's Python proxy (deploy.proxy=throughput for HAProxy and direct ingress)")
    log.info("maas: listening on %s", listening(d, env, grpc is not None))
    if grpc is not None and d.host not in EVERY_INTERFACE and not keyed:
        log.warning("maas: Serve's own gRPC servers (the replicas' and its fallback proxy's) listen on every "
                    "interface whatever deploy.host is: without API keys anyone who reaches this machine can call "
                    "the models over gRPC. Set MAAS_API_KEYS, or deploy.grpc_port=0")


def listening(d: DeploySpec, env: dict, grpc: bool) -> str:
    """Which ports the Serve that ``d`` and ``env`` start listens on, and on which interfaces (what Serve does
    not let maas bind to ``deploy.host`` is said as it is)."""
    ports = [f"HTTP {d.host}:{d.port}"]
    if d.proxy == "throughput":
        if grpc:
            ports.append(f"gRPC {d.host}:{d.grpc_port}")
        lo, hi = env["RAY_SERVE_DIRECT_INGRESS_MIN_HTTP_PORT"], env["RAY_SERVE_DIRECT_INGRESS_MAX_HTTP_PORT"]
        ports.append(f"the replicas' own HTTP ports ({lo}-{hi}) on {d.host}")
        if grpc:  # Serve binds its gRPC servers to [::] in code (grpc_util); maas's key check runs behind them
            ports.append(f"the replicas' own gRPC ports ({env['RAY_SERVE_DIRECT_INGRESS_MIN_GRPC_PORT']}-"
                         f"{env['RAY_SERVE_DIRECT_INGRESS_MAX_GRPC_PORT']}) and Serve's fallback gRPC proxy "
                         f"({env['RAY_SERVE_FALLBACK_PROXY_GRPC_PORT']}) on every interface")
        side = env.get("MAAS_HAPROXY_HOST", "*")
        ports.append(f"HAProxy's stats {side}:{env['RAY_SERVE_HAPROXY_STATS_PORT']} and metrics "
                     f"{side}:{env['RAY_SERVE_HAPROXY_METRICS_PORT']}")
    elif grpc:
        ports.append(f"gRPC [::]:{d.grpc_port}")  # Serve's gRPC proxy: every interface (the spec allows it so)
    return "; ".join(ports)


def haproxy_instance_env() -> dict:
    """HAProxy's files and side ports for one Serve instance: Ray's defaults are fixed (/tmp/haproxy-serve,
    stats 8404, metrics 9101, the fallback proxy's 8500 and 9500), so a second Serve in this mode on one
    machine (another Ray cluster, a test beside a running endpoint) would take over the first one's HAProxy,
    and replicas bind their direct ports with SO_REUSEPORT, so two instances in one port range share sockets
    (requests cross between clusters: seen in CI). Its own folder always; the default ports and port ranges
    while they are free here, else others."""
    import tempfile
    import uuid

    folder = f"{tempfile.gettempdir()}/{HAPROXY_PREFIX}{uuid.uuid4().hex[:8]}"  # short: Ray adds the node id
    # private: HAProxy's admin socket in it is world-writable (mode 666) and can hand out its listening sockets
    os.makedirs(folder, mode=0o700)
    os.chmod(folder, 0o700)  # whatever the umask
    open(os.path.join(folder, HAPROXY_MARK), "w").close()  # what remove_stale_haproxy_folders looks for
    http, grpc_ = free_window(30000, 31000), free_window(40000, 41000)
    return {"RAY_SERVE_DIRECT_INGRESS_MIN_HTTP_PORT": str(http),
            "RAY_SERVE_DIRECT_INGRESS_MAX_HTTP_PORT": str(http + 100),
            "RAY_SERVE_DIRECT_INGRESS_MIN_GRPC_PORT": str(grpc_),
            "RAY_SERVE_DIRECT_INGRESS_MAX_GRPC_PORT": str(grpc_ + 100),
            "RAY_SERVE_HAPROXY_CONFIG_FILE_LOC": f"{folder}/haproxy.cfg",
            "RAY_SERVE_HAPROXY_SOCKET_PATH": f"{folder}/admin.sock",
            "RAY_SERVE_HAPROXY_METRICS_SOCKET_PATH": f"{folder}/metrics.sock",
            "RAY_SERVE_HAPROXY_SERVER_STATE_FILE": f"{folder}/server-state",
            "RAY_SERVE_HAPROXY_STATS_PORT": default_or_free(8404),
            "RAY_SERVE_HAPROXY_METRICS_PORT": default_or_free(9101),
            # Serve's fallback proxy behind HAProxy (fixed ports too: a second instance could not bind them)
            "RAY_SERVE_FALLBACK_PROXY_HTTP_PORT": default_or_free(8500),
            "RAY_SERVE_FALLBACK_PROXY_GRPC_PORT": default_or_free(9500)}


def haproxy_bound_env(host: str) -> dict:
    """Environment that binds HAProxy's stats and metrics listeners to ``host`` (Ray binds them to every
    interface): Ray runs maas's ``haproxy-bound`` script in place of HAProxy, which edits those two binds in
    Ray's config and runs the real binary. Nothing where ``host`` is every interface already, or where the
    script is not executable (an install that dropped its mode): the start line then says ``*``. The script
    is maas's package file, so every node that runs maas has it at the same path."""
    script = os.path.join(os.path.dirname(__file__), "haproxy-bound")
    if host in EVERY_INTERFACE or not os.access(script, os.X_OK):
        return {}
    return {"RAY_SERVE_HAPROXY_BINARY_PATH": script, "MAAS_HAPROXY_BINARY": ray_private.haproxy_binary(),
            "MAAS_HAPROXY_HOST": host}


HAPROXY_PREFIX, HAPROXY_MARK = "mh", ".maas-haproxy"  # folder name: short, as sockets are <= 97 characters


def stop_serve() -> None:
    """Shut Serve down on the connected cluster and remove the HAProxy folders it leaves on this machine."""
    from ray import serve

    serve.shutdown()
    remove_stale_haproxy_folders()


def remove_stale_haproxy_folders(grace_s: float = 300) -> list[str]:
    """Remove the HAProxy folders of high-throughput Serve instances maas started on this machine that no
    HAProxy serves any more, and return them. Ray's HAProxy leaves its folder (config, logs, its admin socket
    file) when Serve shuts down; a folder whose admin sockets all refuse connections (twice, half a second
    apart: a reloading HAProxy keeps its socket) is stale; a folder with no admin socket yet is kept for
    ``grace_s`` (its Serve may still be starting). Only folders carrying maas's mark are touched."""
    import glob
    import shutil
    import socket
    import tempfile

    def live(sock_path: str) -> bool:
        with socket.socket(socket.AF_UNIX) as sock:
            sock.settimeout(1.0)
            try:
                sock.connect(sock_path)
                return True
            except OSError:
                return False

    def stale(folder: str, age: float) -> bool:
        sockets = glob.glob(f"{folder}/*/admin.sock")
        return not any(live(p) for p in sockets) if sockets else age >= grace_s

    candidates = []
    for folder in glob.glob(f"{tempfile.gettempdir()}/{HAPROXY_PREFIX}" + "[0-9a-f]" * 8):
        try:
            age = time.time() - os.stat(os.path.join(folder, HAPROXY_MARK)).st_mtime
        except OSError:
            continue  # not maas's
        if stale(folder, age):
            candidates.append((folder, age))
    if candidates:
        time.sleep(0.5)
    removed = [folder for folder, age in candidates if stale(folder, age)]
    for folder in removed:
        shutil.rmtree(folder, ignore_errors=True)
    return removed


def grpc_options(port: int) -> Optional[dict]:
    """Serve's gRPC proxy options for the Open Inference Protocol's gRPC service on ``port`` (None: 0, off).

    For a Serve about to start (``start_serve`` checks that): Serve fails to start at all when its gRPC port
    is taken, so a port another process holds on this machine turns gRPC off for this Serve instance, with
    a warning, rather than failing the deploy."""
    from maas.serve.protocols.oip.proto import SERVICER_FUNCTION

    if not port:
        return None
    if not port_free(port):
        logging.getLogger("maas").warning(
            "maas: port %s is taken on this machine, so Serve starts without the OIP gRPC service; set "
            "deploy.grpc_port (maas serve --grpc-port) to a free port, or 0 to keep it off", port)
        return None
    return {"port": port, "grpc_servicer_functions": [SERVICER_FUNCTION]}


def undeploy(app_name: str) -> None:
    """Delete a maas application and wait until it is gone (its replicas stop the vLLM engines they run)."""
    from maas.serve.readiness import app_status

    serve.delete(app_name, _blocking=False)
    deadline = time.monotonic() + 300
    while app_status(app_name)[0] is not None and time.monotonic() < deadline:
        time.sleep(0.5)


def proxy_address(host: str, port: int) -> str:
    """Where Serve's proxy really listens: HTTP options are fixed when Serve first starts on a cluster, so
    a later deploy asking for another port is served on the first one; report that, and say so."""
    actual = ray_private.serve_http_address()
    if actual is None:  # no Serve (yet): what was asked for
        return f"{host}:{port}"
    actual_host, actual_port = actual
    if (actual_host, actual_port) != (host, port):
        logger.warning("Serve already listens on %s:%s on this cluster; deploy.host/port (%s:%s) cannot change "
                       "that until Serve is shut down", actual_host, actual_port, host, port)
    shown = "127.0.0.1" if actual_host in ("0.0.0.0", "") else actual_host
    return f"{shown}:{actual_port}"
