"""Model hosting in a replica: which versions each served model answers with, loaded from the registry.

``ServedRoute`` is one entry of what an application serves (``name@alias``, ``name/version``, optionally a
canary alias taking a share of the unpinned requests). ``ModelHost`` keeps, per served model, the version
its alias points at (moved in place by the alias watcher: the new version is loaded and checked before it
takes traffic), the canary, and a few pinned versions loaded on demand (``/versions/{v}``).
"""

from __future__ import annotations

import asyncio
import logging
import random
import threading
import time
from collections import OrderedDict, deque
from typing import Optional

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from maas.exceptions import RegistryError, ServeError
from maas.models import load_predictor
from maas.registry import Registry
from maas.serve.oip import ProtocolError

VERSION_HEADER = "x-maas-model-version"
logger = logging.getLogger("ray.serve")


class ServedRoute(BaseModel):
    """What one model name serves: an alias (default ``production``) or a pinned version, and an optional
    canary alias that takes ``canary_percent`` of the requests that pin no version."""

    model_config = ConfigDict(extra="forbid")

    model: str
    alias: Optional[str] = None
    version: Optional[int] = None
    canary_alias: Optional[str] = None
    canary_percent: float = Field(0.0, ge=0, le=100)

    @model_validator(mode="after")
    def _consistent(self) -> "ServedRoute":
        if self.alias is not None and self.version is not None:
            raise ValueError("give alias or version, not both")
        if self.alias is None and self.version is None:
            self.alias = "production"
        if self.canary_percent and not self.canary_alias:
            raise ValueError("canary_percent needs a canary_alias")
        return self


def normalize_routes(models) -> list[dict]:
    """``"digits@production"``, ``"digits/3"``, ``"digits"`` or mappings (model, alias | version,
    canary_alias, canary_percent) -> a list of route dicts. Raises ServeError naming the bad entry."""
    from maas.registry import parse_ref

    if isinstance(models, (str, dict)):
        models = [models]
    routes, seen = [], set()
    for entry in models or []:
        if isinstance(entry, str):
            name, version, alias = parse_ref(entry)
            entry = {"model": name, "version": version} if version is not None else \
                {"model": name, "alias": alias or "production"}
        if not isinstance(entry, dict) or not isinstance(entry.get("model"), str):
            raise ServeError(f"a served model is 'name@alias', 'name/version' or a mapping with 'model'; "
                             f"got {entry!r}")
        try:
            route = ServedRoute(**{**entry, "canary_percent": entry.get("canary_percent") or 0})
        except ValidationError as err:
            raise ServeError(f"served model {entry['model']!r}: {_problem(err)}") from None
        if route.model in seen:
            raise ServeError(f"model {route.model!r} is listed twice; one entry per model "
                             "(use canary_alias for a second version)")
        seen.add(route.model)
        routes.append(route.model_dump())
    if not routes:
        raise ServeError("no models to serve: give at least one 'name@alias' or 'name/version'")
    return routes


def _problem(err: ValidationError) -> str:
    first = err.errors()[0]
    where = ".".join(str(p) for p in first["loc"])
    if first["type"] == "extra_forbidden":
        unknown = sorted(str(e["loc"][-1]) for e in err.errors() if e["type"] == "extra_forbidden")
        return f"unknown key(s) {unknown}; use alias, version, canary_alias, canary_percent"
    if where == "canary_percent" and first["type"].startswith(("greater", "less")):
        return "canary_percent must be within 0..100"
    return (f"{where}: " if where else "") + first["msg"].removeprefix("Value error, ")


def fetch_all(registry: Registry, routes: list[dict], llm=None) -> None:
    """Fetch (and so verify) what every route points at now: an unknown or tampered version fails here,
    with the registry's message, rather than inside a replica. A version served by a vLLM engine has its
    engine started instead (``llm``: an LLMEngineSpec), which fetches and verifies the files on its node."""
    for r in routes:
        ref = f"{r['model']}/{r['version']}" if r["version"] is not None else f"{r['model']}@{r['alias']}"
        mv = registry.resolve(ref)
        if mv.runtime == "vllm":
            from maas.serve.llm_engine import ensure_engine
            from maas.spec import LLMEngineSpec

            ensure_engine(registry.location, mv, llm or LLMEngineSpec())
        else:
            registry.fetch_version(mv)


class LoadedVersion:
    """One model version in memory: its predictor, signature, response headers, metric tags, and the running
    average of its forward time (which decides where its forwards run: ``ModelServer.forward``)."""

    __slots__ = ("mv", "predictor", "signature", "task", "headers", "tags", "forward_ms")

    def __init__(self, mv, predictor):
        self.mv = mv
        self.predictor = predictor
        self.signature = mv.signature
        self.task = mv.task
        self.headers = {VERSION_HEADER: mv.ref}
        self.tags = {"model": mv.name, "version": str(mv.version)}
        self.forward_ms = 0.0


class ServedModel:
    """The live state of one route: the main target's loaded version, the canary's, the pinned ones."""

    def __init__(self, route: dict):
        self.name = route["model"]
        self.alias = route.get("alias")
        self.version = route.get("version")
        self.canary_alias = route.get("canary_alias")
        self.canary_percent = float(route.get("canary_percent") or 0)
        self.primary: Optional[LoadedVersion] = None
        self.canary: Optional[LoadedVersion] = None
        self.pinned: "OrderedDict[int, LoadedVersion]" = OrderedDict()
        self.problem = "not loaded yet"

    @property
    def target(self) -> str:
        return f"{self.name}/{self.version}" if self.version is not None else f"{self.name}@{self.alias}"

    def pick(self) -> Optional[LoadedVersion]:
        if self.canary is not None and self.canary_percent > 0 and random.random() * 100 < self.canary_percent:
            return self.canary
        return self.primary

    def loaded_versions(self) -> list[str]:
        found = {x.mv.version for x in (self.primary, self.canary, *self.pinned.values()) if x is not None}
        return [str(v) for v in sorted(found)]


class ModelHost:
    """Every served model of a replica, kept current with the registry's aliases."""

    def __init__(self, store: str, routes: list[dict], max_pinned_versions: int = 2, llm: Optional[dict] = None,
                 alias_poll_s: float = 2.0, pinned_loads_per_minute: int = 10):
        from maas.spec import LLMEngineSpec

        self.registry = Registry(store)
        self.models = {r["model"]: ServedModel(r) for r in normalize_routes(routes)}
        self.max_pinned = max_pinned_versions
        self.loads_per_minute = pinned_loads_per_minute
        self._loads_started: deque = deque()  # monotonic times of the pinned loads of the last minute
        self._loading: dict[tuple[str, int], asyncio.Future] = {}  # one load per version, whoever asks
        self.llm = LLMEngineSpec(**(llm or {}))
        # an engine no version of this replica uses any more is retired after this long (every replica
        # watching the alias has moved by then) and once this replica's requests on it are done
        self.retire_after_s = max(10.0, 3 * alias_poll_s)
        self._stop = threading.Event()
        # versions that failed to load: not retried before `retry_at` (doubling up to 5 min), so a broken
        # alias target is not downloaded again on every poll, nor a broken pinned version on every request
        self._failures: dict[tuple[str, int], tuple[float, float, str]] = {}

    def start(self, alias_poll_s: float) -> None:
        """Load what the aliases point at now, then follow them every ``alias_poll_s`` (0: never)."""
        self.refresh()
        if alias_poll_s > 0:
            threading.Thread(target=self._watch, args=(alias_poll_s,), name="maas-alias-watch", daemon=True).start()

    def stop(self) -> None:
        self._stop.set()

    def describe(self) -> str:
        return ", ".join(f"{m.target} -> {m.primary.mv.ref if m.primary else 'NOT READY (' + m.problem + ')'}"
                         for m in self.models.values())

    def _load(self, name: str, version: int) -> LoadedVersion:
        key = (name, version)
        failed = self._failures.get(key)
        if failed is not None and time.monotonic() < failed[0]:
            raise RegistryError(f"{failed[2]} (next try in {failed[0] - time.monotonic():.0f} s)")
        try:
            mv = self.registry.resolve(f"{name}/{version}")
            if mv.status != "ready":
                raise RegistryError(f"{mv.ref} was {mv.status} by its quality gate and is not served")
            if mv.runtime == "vllm":  # its engine fetches and verifies the files on its own node
                from maas.serve.llm_engine import ensure_engine

                loaded = LoadedVersion(mv, ensure_engine(self.registry.location, mv, self.llm))
            else:
                folder, mv = self.registry.fetch_version(mv)
                loaded = LoadedVersion(mv, load_predictor(folder, mv.runtime, mv.task))
        except Exception as exc:
            delay = min(2 * failed[1], 300.0) if failed else 2.0
            self._failures[key] = (time.monotonic() + delay, delay, str(exc))
            raise
        self._failures.pop(key, None)
        return loaded

    def refresh(self) -> None:
        """Load what each route's aliases point at now; swap only once the new version is loaded and checked."""
        for model in self.models.values():
            try:
                aliases = self.registry.aliases(model.name) if model.version is None or model.canary_alias else {}
                want = model.version if model.version is not None else aliases.get(model.alias)
                if want is None:
                    raise RegistryError(f"model {model.name!r} has no alias {model.alias!r} yet "
                                        f"(aliases: {sorted(aliases) or 'none'})")
                if model.primary is None or model.primary.mv.version != want:
                    new = self._load(model.name, want)
                    old, model.primary = model.primary, new
                    logger.info("maas %s now serves %s (was %s)", model.target, new.mv.ref,
                                old.mv.ref if old else "nothing")
                    self._retire_later(model, old)
                model.problem = ""
            except Exception as exc:  # keep serving what is loaded; report why not ready if nothing is
                model.problem = str(exc)
                logger.warning("maas %s: %s%s", model.target, exc,
                               f"; still serving {model.primary.mv.ref}" if model.primary else "")
            if model.canary_alias:
                try:
                    target = self.registry.aliases(model.name).get(model.canary_alias)
                    if target is None:
                        old, model.canary = model.canary, None
                        self._retire_later(model, old)
                    elif model.canary is None or model.canary.mv.version != target:
                        old, model.canary = model.canary, self._load(model.name, target)
                        self._retire_later(model, old)
                        logger.info("maas %s canary (%s%%) is %s", model.target, model.canary_percent,
                                    model.canary.mv.ref)
                except Exception as exc:
                    logger.warning("maas %s canary %s: %s", model.target, model.canary_alias, exc)

    def _watch(self, every_s: float) -> None:
        while not self._stop.wait(every_s):
            try:
                self.refresh()
            except Exception:  # never let the watcher die
                logger.exception("maas alias watch failed; retrying")

    def not_ready(self) -> dict:
        """{model: why} for every served model with nothing loaded yet."""
        return {m.name: m.problem for m in self.models.values() if m.primary is None}

    async def resolve(self, model: ServedModel, version: Optional[str]) -> LoadedVersion:
        """The loaded version that answers: the pinned ``version``, else the canary's share, else the main
        target. Raises ProtocolError: 503 while nothing is loaded, 404 for a version not served."""
        if version is None:
            loaded = model.pick()
            if loaded is None:
                raise ProtocolError(503, f"model '{model.name}' is not ready: {model.problem}")
            return loaded
        if not (version.isascii() and version.isdigit() and len(version) <= 9):  # not '²', not 5,000 digits
            raise ProtocolError(404, f"model '{model.name}' has no version '{version}' (versions are numbers)")
        v = int(version)
        for loaded in (model.primary, model.canary):
            if loaded is not None and loaded.mv.version == v:
                return loaded
        if v in model.pinned:
            model.pinned.move_to_end(v)
            return model.pinned[v]
        key = (model.name, v)
        pending = self._loading.get(key)
        failed = self._failures.get(key)
        if pending is None and failed is not None and time.monotonic() < failed[0]:  # no load, no count
            raise ProtocolError(404, f"model '{model.name}' version '{version}' is not served: {failed[2]} "
                                     f"(next try in {failed[0] - time.monotonic():.0f} s)")
        if pending is None:  # the first request for it starts the load; the others wait for the same one
            self._admit_load(model.name, v)
            pending = asyncio.ensure_future(asyncio.to_thread(self._load, model.name, v))
            self._loading[key] = pending
            pending.add_done_callback(lambda _: self._loading.pop(key, None))
        try:
            loaded = await asyncio.shield(pending)
        except RegistryError as exc:
            raise ProtocolError(404, f"model '{model.name}' version '{version}' is not served: {exc}") from None
        if v not in model.pinned and self.max_pinned > 0:
            model.pinned[v] = loaded
            while len(model.pinned) > self.max_pinned:
                self._retire_later(model, model.pinned.popitem(last=False)[1])
        return loaded

    def _admit_load(self, name: str, version: int) -> None:
        """Count a pinned-version load against the per-minute cap. Raises ProtocolError 429 over it."""
        now = time.monotonic()
        while self._loads_started and now - self._loads_started[0] > 60:
            self._loads_started.popleft()
        if len(self._loads_started) >= self.loads_per_minute:
            wait = 60 - (now - self._loads_started[0])
            raise ProtocolError(429, f"model '{name}' version {version} is not loaded and this replica already "
                                     f"started {self.loads_per_minute} pinned-version loads in the last minute; "
                                     f"retry in {wait:.0f} s or use the served alias")
        self._loads_started.append(now)

    def _retire_later(self, model: ServedModel, old: Optional[LoadedVersion]) -> None:
        """Stop the engine of a version this replica stopped serving, once it is idle and still unused."""
        if old is None or old.mv.runtime != "vllm":
            return

        from maas.serve.llm_engine import engine_of

        def retire():  # an engine may serve several versions (a base's serves its adapters): any use keeps it
            lora = self.llm.enable_lora
            in_use = engine_of(old.mv, lora) in {engine_of(x.mv, lora) for m in self.models.values()
                                           for x in (m.primary, m.canary, *m.pinned.values())
                                           if x is not None and x.mv.runtime == "vllm"}
            if in_use or self._stop.is_set():
                return
            if old.predictor.inflight > 0:  # streams still running on it: look again later
                again = threading.Timer(self.retire_after_s, retire)
                again.daemon = True
                again.start()
                return
            from maas.serve.llm_engine import retire_engine

            logger.info("maas retiring the engine of %s", old.mv.ref)
            retire_engine(old.mv, self.llm)

        timer = threading.Timer(self.retire_after_s, retire)
        timer.daemon = True
        timer.start()

    async def for_task(self, model: Optional[str], task: str) -> LoadedVersion:
        """The loaded version an OpenAI-style request names (``name`` or ``name/version``); without ``model``,
        the one served model of that task. Raises ProtocolError naming the right route for another task."""
        name, _, version = (model or "").partition("/")
        if not name:
            fitting = [m.name for m in self.models.values() if m.primary is not None and m.primary.task == task]
            if len(fitting) != 1:
                raise ProtocolError(400, f"'model' is missing; served {task} models: " + (", ".join(fitting) or "none"))
            name = fitting[0]
        served = self.models.get(name)
        if served is None:
            raise ProtocolError(404, f"model '{name}' is not served here; served: {', '.join(self.models)}")
        loaded = await self.resolve(served, version or None)
        if loaded.task != task:
            use = {"embed": "/v1/embeddings", "generate": "/v1/completions"}.get(loaded.task,
                                                                              f"/v2/models/{name}/infer")
            raise ProtocolError(400, f"model '{name}' serves task {loaded.task}, not {task}; use {use}")
        return loaded
