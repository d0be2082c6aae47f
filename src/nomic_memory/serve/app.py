"""``nomic-memory serve``: the HTTP API and the search page over a :class:`~.service.SearchService`.

:func:`create_app` builds the FastAPI app; the CLI (``cli_serve``) runs it under uvicorn.  Routes:
=====================  ======================================================================
``POST /search``       ``{"queries": [...], "images": [base64...], "k": 10, "where": "..."}``
                       (or multipart: ``queries``, ``k``, ``where`` fields and ``images`` files)
                       -> ``{"results": [[{rank, score, path, root, page, id}, ...], ...]}``,
                       one list per query: the texts in order, then the images
``POST /embed``        vLLM ``/pooling`` shape: ``{"input": [text | image part, ...]}``
``GET /thumb/{id}``    a JPEG thumbnail of a stored page
``GET /heatmap/{id}``  ``?q=text[&query_token=i][&mode=overlay|heat|json]`` (PNG or JSON);
                       ``POST`` with ``{"query": text}`` or ``{"image": base64}`` for image queries
``GET /tokens``        ``?q=text``: the query's tokens (one per query vector)
``GET /health``        liveness (no auth);  ``GET /stats``: table, model and batching counters
=====================  ======================================================================

The page at ``/`` and its assets come from the package (``nomic_memory/web``): plain JS, no CDN,
no build step.  Swagger's ``/docs`` would load its JS from a CDN, so it is off; the schema is at
``/openapi.json``.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import time
from typing import Any, Optional

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse, Response
from fastapi.staticfiles import StaticFiles
from starlette.exceptions import HTTPException as StarletteHTTPException

from nomic_memory.errors import NomicMemoryError
from nomic_memory.serve.service import WEB_DIR, HTTPError, SearchService, ServeConfig, b64_image, decode_image_bytes, hit_json
from nomic_memory.serve.thumbs import PageUnavailable, thumbnail

log = logging.getLogger("nomic_memory.serve.app")

OPEN_PATHS = ("/", "/health", "/favicon.ico", "/docs")  # and /static/*, /docs-assets/*: pages hold no data

SEARCH_SCHEMA = {
    "type": "object",
    "properties": {
        "queries": {"type": "array", "items": {"type": "string"}, "description": "text queries"},
        "images": {"type": "array", "items": {"type": "string"}, "description": "image queries, base64 or data: URLs"},
        "k": {"type": "integer", "minimum": 1, "default": 10},
        "where": {"type": "string", "description": "SQL filter over path, root, page, mtime, size, width, height"},
    },
}
EMBED_SCHEMA = {
    "type": "object",
    "properties": {
        "model": {"type": "string"},
        "input": {"description": "a text, or a list of texts and image parts "
                                 "({'type': 'image_url', 'image_url': {'url': 'data:image/png;base64,...'}})"},
        "messages": {"type": "array", "description": "chat-style: one embedding per message (its text or image)"},
    },
}


# ------------------------------------------------------------------ ASGI: body cap
class BodyLimit:
    """Refuses bodies over ``limit`` bytes: by Content-Length up front (413 before reading), and by
    counting what a chunked upload actually sends (the reading route then fails with 413)."""

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
                    return await JSONResponse({"error": f"request body larger than {self.limit} bytes"},
                                              status_code=413)(scope, receive, send)
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


# ------------------------------------------------------------------ ASGI: bearer auth
class BearerAuth:
    """``Authorization: Bearer <token>`` on every route but the page, its assets and /health
    (pure ASGI, so a body-size refusal raised while reading reaches the route's error handler)."""

    def __init__(self, app, token: str):
        self.app = app
        self.expected = f"Bearer {token}".encode()

    async def __call__(self, scope, receive, send):
        if scope["type"] == "http":
            p = scope.get("path", "")
            open_path = (p in OPEN_PATHS or p.startswith(("/static/", "/docs-assets/"))
                         or scope.get("method") == "OPTIONS")
            got = dict(scope.get("headers", [])).get(b"authorization", b"")
            if not open_path and not secrets.compare_digest(got, self.expected):
                resp = JSONResponse({"error": "missing or wrong bearer token (Authorization: Bearer ...)"},
                                    status_code=401, headers={"WWW-Authenticate": "Bearer"})
                return await resp(scope, receive, send)
        return await self.app(scope, receive, send)


# ------------------------------------------------------------------ request parsing
def _int(v: Any, name: str, lo: int, hi: int, default: int) -> int:
    if v is None or v == "":
        return default
    if isinstance(v, bool):
        raise HTTPError(422, f"{name} must be an integer")
    try:
        i = int(v)
        if isinstance(v, float) and v != i:
            raise ValueError
    except (TypeError, ValueError):
        raise HTTPError(422, f"{name} must be an integer, not {v!r}") from None
    if not lo <= i <= hi:
        raise HTTPError(422, f"{name} must be between {lo} and {hi}")
    return i


async def _json_body(request) -> dict:
    body = await request.body()
    if not body.strip():
        raise HTTPError(400, "empty request body: send JSON")
    import json

    try:
        data = json.loads(body)
    except (ValueError, UnicodeDecodeError) as e:
        raise HTTPError(400, f"malformed JSON: {e}") from None
    if not isinstance(data, dict):
        raise HTTPError(422, "the body must be a JSON object")
    return data


async def _search_request(request, cfg: ServeConfig) -> tuple[list, int, Optional[str]]:
    """(queries: texts then decoded images, k, where) from JSON or multipart."""
    ctype = request.headers.get("content-type", "")
    images_raw: list[tuple[str, bytes]] = []
    if ctype.startswith("multipart/form-data"):
        form = await request.form(max_files=cfg.max_queries, max_fields=cfg.max_queries + 8)
        texts = [t for t in form.getlist("queries") + form.getlist("query") if isinstance(t, str)]
        for f in form.getlist("images") + form.getlist("image"):
            if isinstance(f, str):
                images_raw.append(("image", b64_image(f, "image")))
            else:
                images_raw.append((f.filename or "image", await f.read()))
        k_raw, where = form.get("k"), form.get("where")
    else:
        data = await _json_body(request)
        unknown = set(data) - {"queries", "images", "k", "where", "query"}
        if unknown:
            raise HTTPError(422, f"unknown field(s): {', '.join(sorted(unknown))}")
        texts = data.get("queries", [])
        if "query" in data:
            texts = [data["query"], *texts]
        if not isinstance(texts, list) or not all(isinstance(t, str) for t in texts):
            raise HTTPError(422, "queries must be a list of strings")
        imgs = data.get("images", [])
        if not isinstance(imgs, list):
            raise HTTPError(422, "images must be a list of base64 strings")
        images_raw = [(f"images[{i}]", b64_image(s, f"images[{i}]")) for i, s in enumerate(imgs)]
        k_raw, where = data.get("k"), data.get("where")
    k = _int(k_raw, "k", 1, cfg.max_k, 10)
    if where is not None and not isinstance(where, str):
        raise HTTPError(422, "where must be a string (an SQL predicate)")
    where = where.strip() or None if where else None
    if any(not t.strip() for t in texts):
        raise HTTPError(422, "empty text query")
    n = len(texts) + len(images_raw)
    if n == 0:
        raise HTTPError(422, "no query: give queries (texts) and/or images")
    if n > cfg.max_queries:
        raise HTTPError(422, f"{n} queries in one request; at most {cfg.max_queries}")
    images = [await asyncio.to_thread(decode_image_bytes, b, cfg.max_image_pixels, name) for name, b in images_raw]
    return [*texts, *images], k, where


def _pooling_inputs(data: dict, cfg: ServeConfig) -> list:
    """vLLM /pooling request -> list of (kind, text | image bytes)."""
    items: list = []

    def part(p: Any, where: str):
        if isinstance(p, str):
            return ("text", p)
        if isinstance(p, dict):
            t = p.get("type")
            if t == "text" and isinstance(p.get("text"), str):
                return ("text", p["text"])
            if t == "image_url":
                url = p.get("image_url")
                url = url.get("url") if isinstance(url, dict) else url
                return ("image", b64_image(url, where))
            if t in ("image", "image_base64"):
                return ("image", b64_image(p.get("image") or p.get("data"), where))
        raise HTTPError(422, f"{where}: expected a text or an image part ({{'type': 'image_url', ...}})")

    if "input" in data:
        raw = data["input"]
        for i, p in enumerate(raw if isinstance(raw, list) else [raw]):
            items.append(part(p, f"input[{i}]"))
    for i, m in enumerate(data.get("messages") or []):
        content = m.get("content") if isinstance(m, dict) else None
        parts = [content] if isinstance(content, str) else content if isinstance(content, list) else None
        if not parts or len(parts) != 1:
            raise HTTPError(422, f"messages[{i}]: one text or one image per message (each gives one embedding)")
        items.append(part(parts[0], f"messages[{i}]"))
    if not items:
        raise HTTPError(422, "no input: give input (texts / image parts) or messages")
    if len(items) > cfg.max_queries:
        raise HTTPError(422, f"{len(items)} inputs in one request; at most {cfg.max_queries}")
    return items


# ------------------------------------------------------------------ the app
def create_app(service: SearchService, config: ServeConfig | None = None):
    """The FastAPI app over a loaded ``service`` (started and stopped with the app's lifespan).

    Long, but flat: each route is a short closure over ``service`` and ``cfg``, and reading them
    in one place shows the whole API surface (every route's auth, limits and errors)."""
    from contextlib import asynccontextmanager

    cfg = config or service.config

    @asynccontextmanager
    async def lifespan(app):
        service.start()
        yield
        await service.stop()

    app = FastAPI(title="nomic-memory", description="Search a store of page embeddings; see why pages matched.",
                  docs_url=None, redoc_url=None, lifespan=lifespan)

    # ---- errors: always JSON, never a traceback
    @app.exception_handler(HTTPError)
    async def _http_error(request, exc: HTTPError):
        return JSONResponse({"error": str(exc)}, status_code=exc.status)

    @app.exception_handler(StarletteHTTPException)
    async def _starlette_error(request, exc):
        return JSONResponse({"error": str(exc.detail)}, status_code=exc.status_code)

    @app.exception_handler(RequestValidationError)
    async def _validation_error(request, exc):
        msgs = ["{}: {}".format(".".join(str(x) for x in e.get("loc", ())), e.get("msg")) for e in exc.errors()]
        return JSONResponse({"error": "; ".join(msgs) or "invalid request"}, status_code=422)

    @app.exception_handler(NomicMemoryError)
    async def _nm_error(request, exc):
        return JSONResponse({"error": str(exc)}, status_code=400)

    @app.exception_handler(Exception)
    async def _internal(request, exc):
        log.exception("internal error on %s %s", request.method, request.url.path)
        return JSONResponse({"error": "internal error (see the server log)"}, status_code=500)

    # ---- auth
    if cfg.token:
        app.add_middleware(BearerAuth, token=cfg.token)
    if cfg.cors_origins:
        from fastapi.middleware.cors import CORSMiddleware

        app.add_middleware(CORSMiddleware, allow_origins=cfg.cors_origins, allow_methods=["GET", "POST"],
                           allow_headers=["Authorization", "Content-Type"])
    app.add_middleware(BodyLimit, limit=cfg.max_body_bytes)

    # ---- page
    app.mount("/static", StaticFiles(directory=str(WEB_DIR)), name="static")

    @app.get("/", include_in_schema=False)
    async def index_page():
        return FileResponse(WEB_DIR / "index.html", media_type="text/html")

    # ---- OpenAPI docs: Swagger UI from the swagger-ui-bundle package (FastAPI's default page
    # loads it from a CDN, which an offline machine cannot reach)
    from swagger_ui_bundle import swagger_ui_path

    app.mount("/docs-assets", StaticFiles(directory=str(swagger_ui_path)), name="docs-assets")

    @app.get("/docs", include_in_schema=False)
    async def docs_page():
        return FileResponse(WEB_DIR / "docs.html", media_type="text/html")

    # ---- API
    @app.get("/health")
    async def health():
        return {"status": "ok"}

    @app.get("/stats")
    async def stats():
        return await asyncio.to_thread(service.stats)

    @app.post("/search", openapi_extra={"requestBody": {"content": {"application/json": {"schema": SEARCH_SCHEMA}}}})
    async def search(request: Request):
        """The k best pages per query: same hits, order and scores as ``Index.search``."""
        t0 = time.perf_counter()
        queries, k, where = await _search_request(request, cfg)
        hits = await service.search(queries, k, where)
        return {"k": k, "where": where, "took_ms": round(1000 * (time.perf_counter() - t0), 3),
                "results": [[hit_json(h) for h in hs] for hs in hits]}

    @app.post("/embed", openapi_extra={"requestBody": {"content": {"application/json": {"schema": EMBED_SCHEMA}}}})
    async def embed(request: Request):
        """Embeddings in vLLM's ``/pooling`` response shape (texts as queries, images as documents)."""
        data = await _json_body(request)
        items = _pooling_inputs(data, cfg)
        queries = [v if kind == "text" else await asyncio.to_thread(decode_image_bytes, v, cfg.max_image_pixels, f"input[{i}]")
                   for i, (kind, v) in enumerate(items)]
        embs = await service.run_model(service._embed, queries)
        n_tokens = sum(int(e.shape[0]) if e.ndim == 2 else 1 for e in embs)
        return {"id": f"pool-{secrets.token_hex(8)}", "object": "list", "created": int(time.time()),
                "model": service.index.info.model_id,
                "data": [{"index": i, "object": "pooling", "data": e.tolist()} for i, e in enumerate(embs)],
                "usage": {"prompt_tokens": n_tokens, "total_tokens": n_tokens, "completion_tokens": 0}}

    @app.get("/thumb/{row_id}", responses={200: {"content": {"image/jpeg": {}}}})
    async def thumb(row_id: str):
        row = await asyncio.to_thread(service.row, row_id)
        try:
            data = await asyncio.to_thread(thumbnail, service.index.store, service.index.table.name, row_id, row)
        except PageUnavailable as e:
            raise HTTPError(404, str(e)) from None
        return Response(data, media_type="image/jpeg", headers={"Cache-Control": "private, max-age=3600"})

    async def _heatmap(row_id: str, query, query_token: Optional[int], mode: str):
        if mode not in ("overlay", "heat", "json"):
            raise HTTPError(422, "mode must be overlay, heat or json")
        if service.index.info.kind != "colqwen":
            raise HTTPError(409, "this table holds Nomic (single-vector) embeddings: there is no per-patch "
                                 "match to show; heatmaps need a ColNomic table")
        await asyncio.to_thread(service.row, row_id)  # 404 before any embedding work
        qemb = await service.query_embedding(query)
        png, info = await asyncio.to_thread(service.heatmap, row_id, qemb, query_token, mode)
        if png is None:
            return info
        return Response(png, media_type="image/png",
                        headers={"X-Query-Tokens": str(info["query_tokens"]), "Cache-Control": "private, max-age=600"})

    @app.get("/heatmap/{row_id}", responses={200: {"content": {"image/png": {}}}})
    async def heatmap_get(row_id: str, q: str, query_token: Optional[int] = None, mode: str = "overlay"):
        """Which patches of the page matched the text query ``q`` (max over its tokens, or one)."""
        if not q.strip():
            raise HTTPError(422, "q: empty query")
        return await _heatmap(row_id, q, query_token, mode)

    @app.post("/heatmap/{row_id}", responses={200: {"content": {"image/png": {}}}})
    async def heatmap_post(row_id: str, request: Request):
        """As GET, for image queries: ``{"image": base64}`` (or ``{"query": text}``)."""
        data = await _json_body(request)
        if isinstance(data.get("query"), str) and data["query"].strip():
            query: Any = data["query"]
        elif "image" in data:
            query = await asyncio.to_thread(decode_image_bytes, b64_image(data["image"], "image"),
                                            cfg.max_image_pixels, "image")
        else:
            raise HTTPError(422, "give query (text) or image (base64)")
        qt = data.get("query_token")
        qt = None if qt is None else _int(qt, "query_token", 0, 1 << 20, 0)
        return await _heatmap(row_id, query, qt, str(data.get("mode", "overlay")))

    @app.get("/tokens")
    async def tokens(q: str):
        """The tokens of a text query, one per query vector (labels for per-token heatmaps)."""
        return {"tokens": await asyncio.to_thread(service.query_tokens, q)}

    return app


__all__ = ["create_app", "ServeConfig", "SearchService", "BodyLimit"]
