"""``GET /health`` (no token: liveness and whether the table is there) and ``GET /stats``."""

from __future__ import annotations

import asyncio

from fastapi import APIRouter, Depends
from fastapi.responses import JSONResponse

from nomic_memory.serve.config import HTTPError
from nomic_memory.serve.deps import get_service, require_token
from nomic_memory.serve.service import SearchService

router = APIRouter(tags=["status"])


@router.get("/health")
def health(service: SearchService = Depends(get_service)):
    """``{"status": "ok"}``, or 503 with the reason while the served table is missing."""
    try:
        service.available()
    except HTTPError as e:
        return JSONResponse({"status": "unavailable", "error": str(e)}, status_code=e.status)
    return {"status": "ok"}


@router.get("/stats", dependencies=[Depends(require_token)])
async def stats(service: SearchService = Depends(get_service)):
    """Rows, model, store and table, whether the table is available, and batching counters."""
    return await asyncio.to_thread(service.stats)
