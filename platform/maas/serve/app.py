"""A Ray Serve application serving one registered model over Open Inference Protocol v2.

The replica loads the model only by ``name@alias`` or ``name/version`` from the registry, with every
artifact's sha256 checked. Requests are fused by ``@serve.batch`` (size and wait from the spec), and every
client mistake is a 4xx with a JSON ``{"error": ...}`` body; the replica never dies of a bad request.
"""

# No `from __future__ import annotations` here: FastAPI reads the route methods' annotations (Request)
# at run time through Serve's ingress wrapper, and string annotations are not resolved there.
import logging
import uuid
from typing import Optional

import numpy as np
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from ray import serve

from maas.models.predictor import load_predictor
from maas.registry import Registry
from maas.serve.oip import ProtocolError, classifier_outputs, model_metadata, parse_infer_request

VERSION_HEADER = "x-maas-model-version"
logger = logging.getLogger("ray.serve")
api = FastAPI(title="maas model server", docs_url=None, redoc_url=None)


def _error(status: int, message: str, headers: Optional[dict] = None) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status, headers=headers)


@serve.deployment(ray_actor_options={"num_cpus": 0.25}, max_ongoing_requests=64)
@serve.ingress(api)
class ModelServer:
    def __init__(self, store: str, ref: str, max_batch_size: int = 32, batch_wait_timeout_s: float = 0.002,
                 max_request_bytes: int = 4 * 1024 * 1024):
        folder, mv = Registry(store).fetch(ref)
        self.mv = mv
        self.ref = ref
        self.predictor = load_predictor(folder, mv.runtime)
        self.signature = mv.signature
        self.max_request_bytes = max_request_bytes
        self._predict_batch.set_max_batch_size(max_batch_size)
        self._predict_batch.set_batch_wait_timeout_s(batch_wait_timeout_s)
        self.headers = {VERSION_HEADER: mv.ref}
        logger.info("maas serving %s (%s) from %s as %s", mv.ref, mv.runtime, store, ref)

    @serve.batch(max_batch_size=32, batch_wait_timeout_s=0.002)
    async def _predict_batch(self, inputs: list[np.ndarray]) -> list[np.ndarray]:
        logits = self.predictor(np.concatenate(inputs))
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

    def _check_model(self, name: str, version: Optional[str]) -> Optional[JSONResponse]:
        if name != self.mv.name:
            return _error(404, f"model '{name}' is not served here; this endpoint serves '{self.mv.name}'")
        if version is not None and version != str(self.mv.version):
            return _error(404, f"model '{name}' version '{version}' is not served here; "
                               f"serving version {self.mv.version}")
        return None

    @api.get("/v2/models/{name}")
    def metadata(self, name: str):
        return self._check_model(name, None) or self._metadata()

    @api.get("/v2/models/{name}/versions/{version}")
    def metadata_version(self, name: str, version: str):
        return self._check_model(name, version) or self._metadata()

    def _metadata(self) -> JSONResponse:
        return JSONResponse(model_metadata(self.mv.name, self.mv.version, self.mv.runtime, self.signature),
                            headers=self.headers)

    @api.get("/v2/models/{name}/ready")
    def model_ready(self, name: str):
        return self._check_model(name, None) or {"name": name, "ready": True}

    @api.get("/v2/models/{name}/versions/{version}/ready")
    def model_version_ready(self, name: str, version: str):
        return self._check_model(name, version) or {"name": name, "ready": True}

    # ------------------------------------------------------------------------------------------ infer
    @api.post("/v2/models/{name}/infer")
    async def infer(self, name: str, request: Request):
        return await self._infer(name, None, request)

    @api.post("/v2/models/{name}/versions/{version}/infer")
    async def infer_version(self, name: str, version: str, request: Request):
        return await self._infer(name, version, request)

    async def _infer(self, name: str, version: Optional[str], request: Request) -> JSONResponse:
        bad = self._check_model(name, version)
        if bad is not None:
            return bad
        declared = request.headers.get("content-length")
        if declared and declared.isdigit() and int(declared) > self.max_request_bytes:
            return _error(413, f"request body of {declared} bytes is over the limit of {self.max_request_bytes}")
        body = await request.body()
        if len(body) > self.max_request_bytes:
            return _error(413, f"request body of {len(body)} bytes is over the limit of {self.max_request_bytes}")
        try:
            x, req_id, wanted = parse_infer_request(body, self.signature)
        except ProtocolError as err:
            return _error(err.status, err.message, self.headers)
        if len(x) == 0:
            logits = np.zeros((0, len(self.signature["classes"])), dtype=np.float32)
        else:
            logits = await self._predict_batch(x)
        body = {"model_name": self.mv.name, "model_version": str(self.mv.version),
                "id": req_id or uuid.uuid4().hex, "outputs": classifier_outputs(logits, self.signature, wanted)}
        return JSONResponse(body, headers=self.headers)


def build_app(store: str, ref: str, max_batch_size: int = 32, batch_wait_timeout_s: float = 0.002,
              max_request_bytes: int = 4 * 1024 * 1024, num_replicas: int = 1):
    """The Serve Application for one model reference (``name@alias`` or ``name/version``)."""
    return ModelServer.options(num_replicas=num_replicas).bind(
        store, ref, max_batch_size, batch_wait_timeout_s, max_request_bytes)


def deploy(store: str, ref: str, *, host: str = "127.0.0.1", port: int = 8000, app_name: Optional[str] = None,
           **options) -> str:
    """Start Serve's HTTP proxy on host:port (if not running) and deploy ``ref``; returns the base URL."""
    from maas.registry import parse_ref

    registry = Registry(store)
    registry.fetch(ref)  # unknown or tampered: fail here with the registry's message, not inside a replica
    serve.start(http_options={"host": host, "port": port})
    name = parse_ref(ref)[0]
    serve.run(build_app(registry.location, ref, **options), name=app_name or name, route_prefix="/", blocking=False)
    return f"http://{_proxy_address(host, port)}"


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
