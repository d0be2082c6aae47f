"""The search page (``/``), its icon, and the API's docs: ``/docs`` (Swagger UI from the
fastapi-offline package, no CDN) over ``/openapi.json`` (behind the token, like the API)."""

from __future__ import annotations

from fastapi import APIRouter, Depends, Request
from fastapi.responses import FileResponse, JSONResponse

from nomic_memory.serve.deps import require_token
from nomic_memory.serve.service import WEB_DIR

router = APIRouter(include_in_schema=False)


@router.get("/")
async def index_page():
    return FileResponse(WEB_DIR / "index.html", media_type="text/html")


@router.get("/favicon.ico")
async def favicon():
    return FileResponse(
        WEB_DIR / "favicon.ico", media_type="image/x-icon", headers={"Cache-Control": "public, max-age=86400"}
    )


@router.get("/docs")
async def docs_page():
    return FileResponse(WEB_DIR / "docs.html", media_type="text/html")


@router.get("/openapi.json", dependencies=[Depends(require_token)])
async def openapi(request: Request):
    return JSONResponse(request.app.openapi())
