"""``nomic-memory search`` through a running ``nomic-memory serve`` of the same store.

The server has the model loaded already: asking it takes milliseconds where loading the model
takes seconds.  Used only when the answer is the one an in-process search would give: same store
and table, same query template, the table's own model, text queries within the server's limits.
Anything else (no server, a stale or foreign file, a refused request, an error) returns None and
the command searches in-process, which also reports any error itself.

Standard library only (``http.client``): nothing heavy is imported before the server answers.
"""

from __future__ import annotations

import json
import time
from urllib.parse import urlsplit

from nomic_memory.serve.registry import find

CONNECT_TIMEOUT = 0.5  # seconds: a live server on this machine answers at once
READ_TIMEOUT = 300.0  # a search of a large store on a busy server may take a while


def usable(entry: dict, *, table: str | None, template: str | None, k: int, n_queries: int) -> bool:
    """Whether ``entry``'s server answers exactly what this search would compute in-process."""
    if table is not None and entry.get("table") != table:
        return False
    if table is None and entry.get("table_given"):
        return False  # the server chose its table; this search would take the store's only one
    return (
        entry.get("template") == template
        and entry.get("model_name") is None
        and not entry.get("warnings")
        and k <= int(entry.get("max_k") or 0)
        and n_queries <= int(entry.get("max_queries") or 0)
    )


def _post(url: str, path: str, body: dict, token: str | None) -> dict | None:
    import http.client  # only when a server is found: every other command starts without it

    u = urlsplit(url)
    if u.scheme != "http" or not u.hostname:
        return None
    conn = http.client.HTTPConnection(u.hostname, u.port or 80, timeout=CONNECT_TIMEOUT)
    try:
        conn.connect()
        conn.sock.settimeout(READ_TIMEOUT)
        headers = {"Content-Type": "application/json"}
        if token:
            headers["Authorization"] = f"Bearer {token}"
        conn.request("POST", path, json.dumps(body), headers)
        resp = conn.getresponse()
        data = resp.read()
        if resp.status != 200:
            return None
        out = json.loads(data)
        return out if isinstance(out, dict) else None
    except (OSError, ValueError, http.client.HTTPException):
        return None
    finally:
        conn.close()


def search_via_server(store, *, table: str | None, texts: list[str], k: int, where: str | None, template: str | None):
    """``(meta, results, timing)`` from a running server of ``store``, or None.

    ``meta`` describes the table as the in-process output does (store, table, model, kind,
    warnings, server); ``results`` holds one list of :class:`~nomic_memory.search.Hit`-shaped
    dicts per query, as ``Hit.to_dict`` gives them."""
    t0 = time.perf_counter()
    for entry in find(store):
        if not usable(entry, table=table, template=template, k=k, n_queries=len(texts)):
            continue
        body = {"queries": texts, "k": k, **({"where": where} if where else {})}
        out = _post(str(entry.get("url")), "/search", body, entry.get("token"))
        results = _results(out, len(texts))
        if results is None:
            continue
        meta = {
            "store": entry["store"],
            "table": entry["table"],
            "model": entry.get("model_id"),
            "kind": entry.get("kind"),
            "warnings": [],
            "server": entry.get("url"),
        }
        return meta, results, {"server_seconds": round(time.perf_counter() - t0, 4)}
    return None


def _results(out: dict | None, n: int) -> list[list[dict]] | None:
    """The server's hits as ``Hit.to_dict`` shapes (None if the answer is not a search result)."""
    import os

    if not out or not isinstance(out.get("results"), list) or len(out["results"]) != n:
        return None
    try:
        return [
            [
                {
                    "rank": int(h["rank"]),
                    "score": float(h["score"]),
                    "path": h["path"],
                    "root": h["root"],
                    "page": int(h["page"]),
                    "via": h.get("via", "exact"),
                    "id": h["id"],
                    "file": os.path.join(h["root"], h["path"]),
                }
                for h in hits
            ]
            for hits in out["results"]
        ]
    except (KeyError, TypeError, ValueError):
        return None


__all__ = ["search_via_server", "usable"]
