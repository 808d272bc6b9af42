"""A Ray Serve application serving one registered model over Open Inference Protocol v2.

The replica loads the model only by ``name@alias`` or ``name/version`` from the registry, with every
artifact's sha256 checked. Requests are fused by ``@serve.batch`` (size and wait from the spec), and every
client mistake is a 4xx with a JSON ``{"error": ...}`` body; the replica never dies of a bad request.
Model routes need ``Authorization: Bearer <key>`` when API keys are configured; health routes stay open.
Each request is counted and timed in Ray's metrics (Prometheus) and written as one JSON access-log line.
"""

# No `from __future__ import annotations` here: FastAPI reads the route methods' annotations (Request)
# at run time through Serve's ingress wrapper, and string annotations are not resolved there.
import json
import logging
import time
import uuid
from typing import Optional

import numpy as np
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from ray import serve

from maas.models.predictor import load_predictor
from maas.registry import Registry
from maas.serve.auth import authorized, load_api_key_hashes
from maas.serve.oip import ProtocolError, classifier_outputs, model_metadata, parse_infer_request
from maas.spec import DeploySpec

VERSION_HEADER = "x-maas-model-version"
logger = logging.getLogger("ray.serve")
api = FastAPI(title="maas model server", docs_url=None, redoc_url=None)
LATENCY_MS = [0.5, 1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000]
BATCH_SIZES = [1, 2, 4, 8, 16, 32, 64, 128, 256]


def _error(status: int, message: str, headers: Optional[dict] = None) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status, headers=headers)


def _request_id(request: Request) -> str:
    """The id Serve's proxy puts in the response's x-request-id header (the client's own, when it sent one)."""
    try:
        from ray.serve.context import _get_serve_request_context

        rid = _get_serve_request_context().request_id
        if rid:
            return rid
    except Exception:  # private API moved
        pass
    return request.headers.get("x-request-id") or uuid.uuid4().hex


@serve.deployment(ray_actor_options={"num_cpus": 0.25}, max_ongoing_requests=64)
@serve.ingress(api)
class ModelServer:
    def __init__(self, store: str, ref: str, max_batch_size: int = 32, batch_wait_timeout_s: float = 0.002,
                 max_request_bytes: int = 4 * 1024 * 1024, api_key_hashes: Optional[list] = None):
        from ray.serve import metrics

        folder, mv = Registry(store).fetch(ref)
        self.mv = mv
        self.ref = ref
        self.predictor = load_predictor(folder, mv.runtime)
        self.signature = mv.signature
        self.max_request_bytes = max_request_bytes
        self.key_hashes = list(api_key_hashes or [])
        self._predict_batch.set_max_batch_size(max_batch_size)
        self._predict_batch.set_batch_wait_timeout_s(batch_wait_timeout_s)
        self.headers = {VERSION_HEADER: mv.ref}
        tags = {"model": mv.name, "version": str(mv.version)}
        self.m_requests = metrics.Counter("maas_requests_total", description="Inference requests by HTTP status.",
                                          tag_keys=("model", "version", "code"))
        self.m_requests.set_default_tags(dict(tags))  # Serve adds its own tags to the dict it is given
        self.m_latency = metrics.Histogram("maas_request_latency_ms", description="Inference latency (ms).",
                                           boundaries=LATENCY_MS, tag_keys=("model", "version"))
        self.m_latency.set_default_tags(dict(tags))  # Serve adds its own tags to the dict it is given
        self.m_batch = metrics.Histogram("maas_batch_size", description="Rows per fused model call.",
                                         boundaries=BATCH_SIZES, tag_keys=("model", "version"))
        self.m_batch.set_default_tags(dict(tags))  # Serve adds its own tags to the dict it is given
        logger.info("maas serving %s (%s) from %s as %s; api keys: %s", mv.ref, mv.runtime, store, ref,
                    "required" if self.key_hashes else "off")

    @serve.batch(max_batch_size=32, batch_wait_timeout_s=0.002)
    async def _predict_batch(self, inputs: list[np.ndarray]) -> list[np.ndarray]:
        fused = np.concatenate(inputs)
        self.m_batch.observe(len(fused))
        logits = self.predictor(fused)
        out, start = [], 0
        for x in inputs:
            out.append(logits[start:start + len(x)])
            start += len(x)
        return out

    # ------------------------------------------------------------------------------- health & metadata
    @api.get("/v2/health/live")
    def live(self):
        return {"live": True}

    @api.get("/v2/health/ready")
    def ready(self):
        return {"ready": True}

    @api.get("/v2")
    def server_metadata(self):
        return {"name": "maas", "version": "0.1.0", "extensions": []}

    def _guard(self, request: Request, name: Optional[str], version: Optional[str]) -> Optional[JSONResponse]:
        """401 without a valid key (when keys are set), 404 for a model or version not served here."""
        if not authorized(request.headers.get("authorization"), self.key_hashes):
            return JSONResponse({"error": "missing or invalid API key: send 'Authorization: Bearer <key>'"},
                                status_code=401, headers={"www-authenticate": "Bearer"})
        if name is not None and name != self.mv.name:
            return _error(404, f"model '{name}' is not served here; this endpoint serves '{self.mv.name}'")
        if version is not None and version != str(self.mv.version):
            return _error(404, f"model '{name}' version '{version}' is not served here; "
                               f"serving version {self.mv.version}")
        return None

    @api.get("/v2/models")
    def models(self, request: Request):
        return self._guard(request, None, None) or {"models": [
            {"name": self.mv.name, "versions": [str(self.mv.version)], "platform": self.mv.runtime}]}

    @api.get("/v2/models/{name}")
    def metadata(self, name: str, request: Request):
        return self._guard(request, name, None) or self._metadata()

    @api.get("/v2/models/{name}/versions/{version}")
    def metadata_version(self, name: str, version: str, request: Request):
        return self._guard(request, name, version) or self._metadata()

    def _metadata(self) -> JSONResponse:
        return JSONResponse(model_metadata(self.mv.name, self.mv.version, self.mv.runtime, self.signature),
                            headers=self.headers)

    @api.get("/v2/models/{name}/ready")
    def model_ready(self, name: str, request: Request):
        return self._guard(request, name, None) or {"name": name, "ready": True}

    @api.get("/v2/models/{name}/versions/{version}/ready")
    def model_version_ready(self, name: str, version: str, request: Request):
        return self._guard(request, name, version) or {"name": name, "ready": True}

    # ------------------------------------------------------------------------------------------ infer
    @api.post("/v2/models/{name}/infer")
    async def infer(self, name: str, request: Request):
        return await self._timed(name, None, request)

    @api.post("/v2/models/{name}/versions/{version}/infer")
    async def infer_version(self, name: str, version: str, request: Request):
        return await self._timed(name, version, request)

    async def _timed(self, name: str, version: Optional[str], request: Request) -> JSONResponse:
        started = time.perf_counter()
        request_id = _request_id(request)
        rows = 0
        try:
            response, rows = await self._infer(name, version, request)
        except Exception:  # a server fault, not a client mistake: answer JSON, keep serving, log it
            logger.exception("maas inference failed (request %s)", request_id)
            response = _error(500, f"internal error while serving {self.mv.ref}; request id {request_id}",
                              self.headers)
        elapsed_ms = (time.perf_counter() - started) * 1e3
        self.m_requests.inc(tags={"code": str(response.status_code)})
        self.m_latency.observe(elapsed_ms)
        logger.info(json.dumps({"maas_access": True, "request_id": request_id, "model": self.mv.name,
                                "version": self.mv.version, "path": request.url.path,
                                "status": response.status_code, "rows": rows,
                                "latency_ms": round(elapsed_ms, 3)}))
        return response

    async def _infer(self, name: str, version: Optional[str], request: Request) -> tuple[JSONResponse, int]:
        bad = self._guard(request, name, version)
        if bad is not None:
            return bad, 0
        declared = request.headers.get("content-length")
        if declared and declared.isdigit() and int(declared) > self.max_request_bytes:
            return _error(413, f"request body of {declared} bytes is over the limit of "
                               f"{self.max_request_bytes}"), 0
        body = await request.body()
        if len(body) > self.max_request_bytes:
            return _error(413, f"request body of {len(body)} bytes is over the limit of "
                               f"{self.max_request_bytes}"), 0
        try:
            x, req_id, wanted = parse_infer_request(body, self.signature)
        except ProtocolError as err:
            return _error(err.status, err.message, self.headers), 0
        if len(x) == 0:
            logits = np.zeros((0, len(self.signature["classes"])), dtype=np.float32)
        else:
            logits = await self._predict_batch(x)
        out = {"model_name": self.mv.name, "model_version": str(self.mv.version),
               "id": req_id or uuid.uuid4().hex, "outputs": classifier_outputs(logits, self.signature, wanted)}
        return JSONResponse(out, headers=self.headers), len(x)


def build_app(store: str, ref: str, deploy: Optional[DeploySpec] = None, api_key_hashes: Optional[list] = None):
    """The Serve Application for one model reference (``name@alias`` or ``name/version``).

    Replicas or autoscaling, replica resources and batching come from ``deploy`` (a DeploySpec); API key
    digests from ``api_key_hashes`` (default: MAAS_API_KEYS / MAAS_API_KEYS_FILE of this process).
    """
    d = deploy or DeploySpec()
    hashes = load_api_key_hashes() if api_key_hashes is None else api_key_hashes
    return ModelServer.options(**d.serve_options()).bind(
        store, ref, d.max_batch_size, d.batch_wait_timeout_s, d.max_request_bytes, hashes)


def deploy(store: str, ref: str, deploy: Optional[DeploySpec] = None, *, app_name: Optional[str] = None) -> str:
    """Start Serve's HTTP proxy on deploy.host:port (if not running) and deploy ``ref``; returns the base URL.

    Raises:
        RegistryError / IntegrityError: unknown or tampered version (checked here, before deploying).
        ServeError: API key configuration is unusable.
    """
    from maas.registry import parse_ref

    d = deploy or DeploySpec()
    registry = Registry(store)
    registry.fetch(ref)  # unknown or tampered: fail here with the registry's message, not inside a replica
    app = build_app(registry.location, ref, d)
    serve.start(http_options={"host": d.host, "port": d.port})
    serve.run(app, name=app_name or parse_ref(ref)[0], route_prefix="/", blocking=False)
    return f"http://{_proxy_address(d.host, d.port)}"


def _proxy_address(host: str, port: int) -> str:
    """Where Serve's proxy really listens: HTTP options are fixed when Serve first starts on a cluster, so
    a later deploy asking for another port is served on the first one; report that, and say so."""
    try:
        from ray.serve.context import _get_global_client

        config = _get_global_client().http_config
        actual_host, actual_port = config.host, int(config.port)
    except Exception:  # private API moved: trust what was asked for
        return f"{host}:{port}"
    if (actual_host, actual_port) != (host, port):
        logger.warning("Serve already listens on %s:%s on this cluster; deploy.host/port (%s:%s) cannot change "
                       "that until Serve is shut down", actual_host, actual_port, host, port)
    shown = "127.0.0.1" if actual_host in ("0.0.0.0", "") else actual_host
    return f"{shown}:{actual_port}"
