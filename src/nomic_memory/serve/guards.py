"""ASGI guards in front of every route: the Host header (DNS rebinding) and the body size.

**Host names.**  A web page on a domain that an attacker re-points at 127.0.0.1 (DNS rebinding)
is same-origin with it for the browser, and could read search results and thumbnails from a
loopback server that has no token.  Such requests carry the attacker's name in ``Host``, so
only the names this server is reached by are accepted: the loopback names (``localhost``,
``127.0.0.1``, ``[::1]``, ``*.localhost``), the address given with ``--host``, and the names
given with ``--allow-host`` (``*``: any, for a server behind a proxy that checks them).  A
server bound to every interface (``0.0.0.0``, ``::``) also accepts IP addresses, which no DNS
answer can stand for.  Any other name gets 400.

**Body size.**  Bodies over the cap are refused by ``Content-Length`` up front (413 before
reading), and a chunked upload is counted as it arrives (the reading route then fails with 413).
"""

from __future__ import annotations

import ipaddress

from fastapi.responses import JSONResponse

from nomic_memory.serve.config import LOOPBACK_NAMES, HTTPError, ServeConfig

WILDCARDS = ("", "0.0.0.0", "::", "*")


def host_name(header: str) -> str:
    """The name in a ``Host`` header, lower case, without port, brackets or a final dot."""
    h = header.strip().lower()
    if h.startswith("["):  # [::1]:8000
        return h[1 : h.index("]")] if "]" in h else h
    if h.count(":") == 1:
        h = h.split(":", 1)[0]
    return h.rstrip(".")


def _is_ip(name: str) -> bool:
    try:
        ipaddress.ip_address(name)
    except ValueError:
        return False
    return True


class HostCheck:
    """Refuses requests whose ``Host`` is not a name this server is reached by (see above)."""

    def __init__(self, app, config: ServeConfig):
        self.app = app
        bound = host_name(config.host)
        self.any_ip = bound in WILDCARDS
        self.any_name = "*" in config.allow_hosts
        self.names = {*LOOPBACK_NAMES, *(host_name(h) for h in config.allow_hosts)}
        if not self.any_ip:
            self.names.add(bound)

    def accepts(self, name: str) -> bool:
        return self.any_name or name in self.names or name.endswith(".localhost") or (self.any_ip and _is_ip(name))

    async def __call__(self, scope, receive, send):
        if scope["type"] in ("http", "websocket"):
            raw = dict(scope.get("headers", [])).get(b"host")
            name = host_name(raw.decode("latin-1")) if raw is not None else None
            if name is not None and not self.accepts(name):
                resp = JSONResponse(
                    {
                        "error": f"host name {name!r} is not served here (a page reaching this server "
                        "under another name is refused; start the server with "
                        "--allow-host NAME to accept it)"
                    },
                    status_code=400,
                )
                return await resp(scope, receive, send)
        return await self.app(scope, receive, send)


class BodyLimit:
    """Refuses bodies over ``limit`` bytes (see above)."""

    def __init__(self, app, limit: int):
        self.app = app
        self.limit = limit

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        for k, v in scope.get("headers", []):
            if k == b"content-length":
                try:
                    too_big = int(v) > self.limit
                except ValueError:
                    too_big = False
                if too_big:
                    return await JSONResponse(
                        {"error": f"request body larger than {self.limit} bytes"}, status_code=413
                    )(scope, receive, send)
        seen = 0

        async def limited():
            nonlocal seen
            msg = await receive()
            if msg["type"] == "http.request":
                seen += len(msg.get("body", b""))
                if seen > self.limit:
                    raise HTTPError(413, f"request body larger than {self.limit} bytes")
            return msg

        return await self.app(scope, limited, send)


__all__ = ["BodyLimit", "HostCheck", "host_name"]
