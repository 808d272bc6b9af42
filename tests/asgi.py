"""In-process requests to a replica's ASGI ``__call__`` (no Ray, no HTTP): a Starlette request over a body."""

from __future__ import annotations

from starlette.requests import Request


def asgi_request(method: str, path: str, body: bytes = b"", headers: tuple = ()) -> Request:
    """A request for ``method path[?query]`` whose body arrives in one message, then a disconnect."""
    sent = []

    async def receive():
        if sent:
            return {"type": "http.disconnect"}
        sent.append(1)
        return {"type": "http.request", "body": body, "more_body": False}

    path, _, query = path.partition("?")
    raw = [(b"content-length", str(len(body)).encode()), *((k.encode(), v.encode()) for k, v in headers)]
    return Request({"type": "http", "method": method, "path": path, "root_path": "", "headers": raw,
                    "query_string": query.encode()}, receive)
