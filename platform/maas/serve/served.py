"""What an application serves: its routes (``name@alias``, ``name/version``, optionally a canary alias taking
a share of the unpinned requests), checked and normalised, and what they point at in the registry now."""

from __future__ import annotations

from typing import Optional

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from maas.exceptions import RegistryError, ServeError
from maas.registry import Registry
from maas.serve.runtimes import on_engine


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


def fetch_all(registry: Registry, routes: list[dict], llm=None) -> list:
    """Fetch (and so verify) what every route points at now: an unknown or tampered version fails here,
    with the registry's message, rather than inside a replica. A version served by a vLLM engine is only
    resolved (an adapter's base too): its engine fetches and verifies the files in the replica that runs it
    (a large model is not downloaded twice). Returns the versions, in route order."""
    found = []
    for r in routes:
        ref = f"{r['model']}/{r['version']}" if r["version"] is not None else f"{r['model']}@{r['alias']}"
        mv = registry.resolve(ref)
        if mv.status != "ready":
            raise RegistryError(f"{mv.ref} was {mv.status} by its quality gate and is not served")
        if on_engine(mv):
            from maas.serve.runtimes.vllm_config import is_adapter

            if is_adapter(mv):
                registry.resolve(str(mv.signature.get("base")))
        else:
            registry.fetch_version(mv)
        found.append(mv)
    return found
