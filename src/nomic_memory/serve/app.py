"""``nomic-memory serve``: the HTTP API and the search page over a :class:`~.service.SearchService`.

:func:`create_app` builds the FastAPI app from the routers in :mod:`.routes`; the CLI
(``cli/serve.py``) runs it under uvicorn.  Routes:

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
``GET /health``        liveness, and whether the table is there (no auth);  ``GET /stats``
=====================  ======================================================================

JSON bodies are the pydantic models of :mod:`.schemas` (sent as ``application/json`` only);
the guards of :mod:`.guards` check the Host header and the body size before any route.  The page
at ``/`` and its assets come from ``serve/web`` (plain JS, no CDN, no build step); ``/docs`` is
Swagger UI from the fastapi-offline package, over ``/openapi.json``.
"""

from __future__ import annotations

import logging
from contextlib import asynccontextmanager
from pathlib import Path

import fastapi_offline
from fastapi import FastAPI
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from fastapi.staticfiles import StaticFiles
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.middleware.cors import CORSMiddleware

from nomic_memory.errors import NomicMemoryError
from nomic_memory.serve.config import HTTPError, ServeConfig
from nomic_memory.serve.guards import BodyLimit, HostCheck
from nomic_memory.serve.routes import pages, search, site, status
from nomic_memory.serve.service import WEB_DIR, SearchService

log = logging.getLogger("nomic_memory.serve")

SWAGGER_DIR = Path(fastapi_offline.__file__).resolve().parent / "static"


def _error(status: int, message: str, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status, headers=headers)


def _add_error_handlers(app: FastAPI) -> None:
    """Every error is JSON ``{"error": ...}``; never a traceback to the client."""

    @app.exception_handler(HTTPError)
    async def _http_error(request, exc: HTTPError):
        return _error(exc.status, str(exc), exc.headers)

    @app.exception_handler(StarletteHTTPException)
    async def _starlette_error(request, exc):
        return _error(exc.status_code, str(exc.detail), getattr(exc, "headers", None))

    @app.exception_handler(RequestValidationError)
    async def _validation_error(request, exc):
        msgs = ["{}: {}".format(".".join(str(x) for x in e.get("loc", ())), e.get("msg")) for e in exc.errors()]
        return _error(422, "; ".join(msgs) or "invalid request")

    @app.exception_handler(NomicMemoryError)
    async def _nm_error(request, exc):
        return _error(400, str(exc))

    @app.exception_handler(RecursionError)
    async def _too_deep(request, exc):
        return _error(400, "request nested too deeply")

    @app.exception_handler(Exception)
    async def _internal(request, exc):
        log.exception("internal error on %s %s", request.method, request.url.path)
        return _error(500, "internal error (see the server log)")


def create_app(service: SearchService, config: ServeConfig | None = None) -> FastAPI:
    """The FastAPI app over a loaded ``service`` (started and stopped with the app's lifespan)."""
    cfg = config or service.config

    @asynccontextmanager
    async def lifespan(app):
        service.start()
        yield
        await service.stop()

    app = FastAPI(
        title="nomic-memory",
        description="Search a store of page embeddings; see why pages matched.",
        docs_url=None,
        redoc_url=None,
        openapi_url=None,
        lifespan=lifespan,
    )
    app.state.service = service
    app.state.config = cfg
    _add_error_handlers(app)
    if cfg.cors_origins:
        app.add_middleware(
            CORSMiddleware,
            allow_origins=cfg.cors_origins,
            allow_methods=["GET", "POST"],
            allow_headers=["Authorization", "Content-Type"],
        )
    app.add_middleware(BodyLimit, limit=cfg.max_body_bytes)
    app.add_middleware(HostCheck, config=cfg)  # added last: runs first
    app.mount("/static", StaticFiles(directory=str(WEB_DIR)), name="static")
    app.mount("/docs-assets", StaticFiles(directory=str(SWAGGER_DIR)), name="docs-assets")
    for r in (search.router, pages.router, status.router, site.router):
        app.include_router(r)
    return app


__all__ = ["BodyLimit", "SearchService", "ServeConfig", "create_app"]
