"""Model hosting in a replica: which versions each served model answers with, loaded from the registry.

What an application serves is a list of routes (``maas.serve.served``). ``ModelHost`` keeps, per served model,
the version its alias points at (moved in place by the alias watcher: the new version is loaded and checked
before it takes traffic; a generative version once its vLLM engine, started in this replica, is ready), the
canary, and a few pinned versions loaded on demand (``/versions/{v}``).
"""

from __future__ import annotations

import asyncio
import logging
import random
import threading
import time
from collections import OrderedDict, deque
from typing import Optional

from maas.exceptions import RegistryError, ServeError
from maas.models import load_predictor
from maas.registry import Registry
from maas.serve.errors import ProtocolError
from maas.serve.runtimes import on_engine
from maas.serve.served import normalize_routes

VERSION_HEADER = "x-maas-model-version"
logger = logging.getLogger("ray.serve")


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
        self.starting = None  # (ref, engine) while the version the alias names waits for its vLLM engine
        self.engine_error = ""  # why the engine of the version the alias names failed to start (cleared on success)

    def why_not_ready(self) -> str:
        if self.starting is not None:
            ref, engine = self.starting
            return f"{ref} is starting its vLLM engine: {engine.describe()}"
        return self.problem

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
                 alias_poll_s: float = 2.0, pinned_loads_per_minute: int = 10,
                 loop: Optional[asyncio.AbstractEventLoop] = None):
        from maas.serve.runtimes.vllm import Engines
        from maas.spec import LLMEngineSpec

        self.registry = Registry(store)
        self.models = {r["model"]: ServedModel(r) for r in normalize_routes(routes)}
        self.max_pinned = max_pinned_versions
        self.loads_per_minute = pinned_loads_per_minute
        self._loads_started: deque = deque()  # monotonic times of the pinned loads of the last minute
        self._loading: dict[tuple[str, int], asyncio.Future] = {}  # one load per version, whoever asks
        self.llm = LLMEngineSpec(**(llm or {}))
        # the vLLM engines of this replica; one that no loaded version uses any more is stopped after this
        # long (a request that picked the old version just before the swap has started by then) and once its
        # requests are done
        self.engines = Engines(self.registry.location, self.llm, loop, on_change=self._engine_changed)
        self.retire_after_s = 2.0
        self._refresh_lock = threading.Lock()
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
        self.engines.stop_all()

    def _engine_changed(self) -> None:
        """An engine became ready or failed (on the replica's loop): look again now, off the loop."""
        if not self._stop.is_set():
            threading.Thread(target=self.refresh, name="maas-engine-ready", daemon=True).start()

    def status(self) -> dict:
        """Per served model: ready or why not, the version serving; and this replica's engines."""
        models = {m.name: {"ready": m.primary is not None, "serving": m.primary.mv.ref if m.primary else None,
                           "problem": m.why_not_ready() if m.primary is None or m.starting else "",
                           "starting": m.starting is not None, "engine_error": m.engine_error}
                  for m in self.models.values()}
        return {"models": models, "engines": self.engines.snapshot()}

    def describe(self) -> str:
        return ", ".join(f"{m.target} -> {m.primary.mv.ref if m.primary else 'NOT READY (' + m.why_not_ready() + ')'}"
                         for m in self.models.values())

    def _load(self, name: str, version: int) -> LoadedVersion:
        """Load a version: an in-process predictor now, or the vLLM engine it runs on (started if needed: the
        LoadedVersion is returned at once, ``engine_ready`` tells when it may take traffic)."""
        key = (name, version)
        failed = self._failures.get(key)
        if failed is not None and time.monotonic() < failed[0]:
            raise RegistryError(f"{failed[2]} (next try in {failed[0] - time.monotonic():.0f} s)")
        try:
            mv = self.registry.resolve(f"{name}/{version}")
            if mv.status != "ready":
                raise RegistryError(f"{mv.ref} was {mv.status} by its quality gate and is not served")
            if on_engine(mv):  # the engine fetches and verifies the files itself
                from maas.serve.runtimes.vllm import EngineVersion

                loaded = LoadedVersion(mv, EngineVersion(self.engines.get(mv), mv, self.llm))
            else:
                folder, mv = self.registry.fetch_version(mv)
                loaded = LoadedVersion(mv, load_predictor(folder, mv.runtime, mv.task))
        except Exception as exc:
            self._failed(key, str(exc))
            raise
        if not on_engine(mv):  # an engine's version: once the engine is ready (_take)
            self._failures.pop(key, None)
        return loaded

    def _take(self, model: ServedModel, new: LoadedVersion, primary: bool) -> bool:
        """Whether ``new`` may take ``model``'s traffic now: an in-process predictor at once, a generative
        version once its engine is ready (until then the model keeps what it serves, and says why)."""
        engine = getattr(new.predictor, "engine", None)
        if primary:
            model.starting = (new.mv.ref, engine) if engine is not None and engine.state not in (
                "ready", "failed") else None
            model.engine_error = engine.error if engine is not None else ""
        if engine is None or engine.state == "ready":
            self._failures.pop((new.mv.name, new.mv.version), None)
            return True
        if engine.state == "failed":  # a new engine is tried after the usual back-off
            self.engines.forget(engine)
            self._failed((new.mv.name, new.mv.version), engine.error)
            raise ServeError(engine.error)
        return False

    def _failed(self, key: tuple, message: str) -> None:
        """Remember that version ``key`` failed to load: not tried again before a back-off (2 s, doubling each
        time up to 5 min), so a broken version is not fetched again on every poll or request."""
        failed = self._failures.get(key)
        delay = min(2 * failed[1], 300.0) if failed else 2.0
        self._failures[key] = (time.monotonic() + delay, delay, message)

    def refresh(self) -> None:
        """Load what each route's aliases point at now; swap only once the new version is loaded and checked
        (a generative version: once its engine is ready). One refresh at a time: the alias watcher and an
        engine's becoming ready both ask for one."""
        with self._refresh_lock:
            for model in self.models.values():
                self._refresh_primary(model)
                if model.canary_alias:
                    self._refresh_canary(model)
            self._sweep_engines()

    def _refresh_primary(self, model: ServedModel) -> None:
        try:
            aliases = self.registry.aliases(model.name) if model.version is None or model.canary_alias else {}
            want = model.version if model.version is not None else aliases.get(model.alias)
            if want is None:
                raise RegistryError(f"model {model.name!r} has no alias {model.alias!r} yet "
                                    f"(aliases: {sorted(aliases) or 'none'})")
            if model.primary is None or model.primary.mv.version != want:
                new = self._load(model.name, want)
                if not self._take(model, new, primary=True):
                    return
                old, model.primary = model.primary, new
                logger.info("maas %s now serves %s (was %s)", model.target, new.mv.ref,
                            old.mv.ref if old else "nothing")
                self._retire_later(model, old)
            model.problem = ""
        except Exception as exc:  # keep serving what is loaded; report why not ready if nothing is
            model.problem = str(exc)
            logger.warning("maas %s: %s%s", model.target, exc,
                           f"; still serving {model.primary.mv.ref}" if model.primary else "")

    def _refresh_canary(self, model: ServedModel) -> None:
        try:
            target = self.registry.aliases(model.name).get(model.canary_alias)
            if target is None:
                old, model.canary = model.canary, None
                self._retire_later(model, old)
            elif model.canary is None or model.canary.mv.version != target:
                new = self._load(model.name, target)
                if not self._take(model, new, primary=False):
                    return
                old, model.canary = model.canary, new
                self._retire_later(model, old)
                logger.info("maas %s canary (%s%%) is %s", model.target, model.canary_percent, new.mv.ref)
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
        return {m.name: m.why_not_ready() for m in self.models.values() if m.primary is None}

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
            try:  # a version that does not exist is a 404 that spends nothing of the load cap
                await asyncio.to_thread(self.registry.get_version, model.name, v)
            except RegistryError as exc:
                raise ProtocolError(404, f"model '{model.name}' version '{version}' is not served: {exc}") from None
            if v in model.pinned:  # another request loaded it meanwhile
                return model.pinned[v]
            pending = self._loading.get(key)  # or is loading it
            if pending is None:
                self._admit_load(model.name, v)
                pending = asyncio.ensure_future(self._load_pinned(model.name, v))
                self._loading[key] = pending  # until it is in the pinned cache (below), or failed
                pending.add_done_callback(
                    lambda f: (f.cancelled() or f.exception() is not None) and self._loading.pop(key, None))
        try:
            loaded = await asyncio.shield(pending)
        except (RegistryError, ServeError) as exc:
            raise ProtocolError(404, f"model '{model.name}' version '{version}' is not served: {exc}") from None
        except Exception as exc:  # its files load nowhere (a broken artifact): the version is not servable
            logger.warning("maas %s/%s failed to load: %s", model.name, v, exc)
            raise ProtocolError(404, f"model '{model.name}' version '{version}' is not served: it failed to "
                                     f"load ({type(exc).__name__}: {str(exc)[:200]})") from None
        if v not in model.pinned and self.max_pinned > 0:
            model.pinned[v] = loaded
            while len(model.pinned) > self.max_pinned:
                self._retire_later(model, model.pinned.popitem(last=False)[1])
        self._loading.pop(key, None)
        return loaded

    async def _load_pinned(self, name: str, version: int) -> LoadedVersion:
        """``_load`` off the event loop; a generative version once its engine is ready."""
        loaded = await asyncio.to_thread(self._load, name, version)
        engine = getattr(loaded.predictor, "engine", None)
        if engine is not None:
            try:
                await engine.wait()
            except ServeError as exc:
                self.engines.forget(engine)
                self._failed((name, version), str(exc))
                raise
            self._failures.pop((name, version), None)
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
        if old is None or not on_engine(old.mv):
            return
        timer = threading.Timer(self.retire_after_s, self.refresh)
        timer.daemon = True
        timer.start()

    def _sweep_engines(self) -> None:
        """Stop every ready engine no loaded version uses (a base's engine serves its adapters too: any use keeps
        it), after the refresh that would have taken it into use (under its lock). One that became ready in the
        last ``5 * retire_after_s`` is left for a pinned request still on its way to it; one with requests still
        running is looked at again later."""
        if self._stop.is_set():
            return
        used = {self.engines.key(x.mv) for m in self.models.values()
                for x in (m.primary, m.canary, *m.pinned.values()) if x is not None and on_engine(x.mv)}
        again = False
        for key, engine in self.engines.items():
            if key in used or engine.state != "ready":
                continue
            if engine.inflight > 0 or time.monotonic() - engine.since < 5 * self.retire_after_s:
                again = True
                continue
            self.engines.retire(key)
        if again:
            timer = threading.Timer(self.retire_after_s, self.refresh)
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
