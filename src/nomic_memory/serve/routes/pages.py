"""A stored page's thumbnail (``GET /thumb/{id}``) and why it matched a query
(``GET|POST /heatmap/{id}``)."""

from __future__ import annotations

import asyncio
from typing import Any

from fastapi import APIRouter, Depends, Request
from fastapi.responses import Response

from nomic_memory.serve.config import HTTPError, ServeConfig
from nomic_memory.serve.deps import get_config, require_token, serving, text_query
from nomic_memory.serve.schemas import HeatmapBody, read_json
from nomic_memory.serve.service import SearchService, b64_image, decode_image_bytes, page_errors
from nomic_memory.serve.thumbs import thumbnail

router = APIRouter(dependencies=[Depends(require_token)], tags=["pages"])


@router.get("/thumb/{row_id}", responses={200: {"content": {"image/jpeg": {}}}})
async def thumb(row_id: str, service: SearchService = Depends(serving)):
    """A JPEG thumbnail of a stored page (409 if its file changed since it was embedded)."""
    row = await asyncio.to_thread(service.row, row_id)
    index = service.index
    with page_errors(row):
        data = await service.decode(thumbnail, index.store, index.table.name, row_id, row)
    return Response(data, media_type="image/jpeg", headers={"Cache-Control": "private, max-age=3600"})


async def _heatmap(service: SearchService, row_id: str, query: Any, query_token: int | None, mode: str):
    if service.index.info.kind != "colqwen":
        raise HTTPError(
            409,
            "this table holds Nomic (single-vector) embeddings: there is no per-patch "
            "match to show; heatmaps need a ColNomic table",
        )
    await asyncio.to_thread(service.row, row_id)  # 404 before any embedding work
    qemb = await service.query_embedding(query)
    work = asyncio.to_thread if mode != "overlay" else service.decode  # an overlay decodes the page
    png, info = await work(service.heatmap, row_id, qemb, query_token, mode)
    if png is None:
        return info
    return Response(
        png,
        media_type="image/png",
        headers={"X-Query-Tokens": str(info["query_tokens"]), "Cache-Control": "private, max-age=600"},
    )


@router.get("/heatmap/{row_id}", responses={200: {"content": {"image/png": {}}}})
async def heatmap_get(
    row_id: str,
    q: str = Depends(text_query),
    query_token: int | None = None,
    mode: str = "overlay",
    service: SearchService = Depends(serving),
):
    """Which patches of the page matched the text query ``q`` (max over its tokens, or one);
    ``mode``: ``overlay`` (the page with the map), ``heat`` (the map) or ``json`` (its grid)."""
    if mode not in ("overlay", "heat", "json"):
        raise HTTPError(422, "mode must be overlay, heat or json")
    return await _heatmap(service, row_id, q, query_token, mode)


@router.post(
    "/heatmap/{row_id}",
    responses={200: {"content": {"image/png": {}}}},
    openapi_extra={
        "requestBody": {"required": True, "content": {"application/json": {"schema": HeatmapBody.model_json_schema()}}}
    },
)
async def heatmap_post(
    row_id: str, request: Request, service: SearchService = Depends(serving), cfg: ServeConfig = Depends(get_config)
):
    """As GET, for image queries: ``{"image": base64}`` (or ``{"query": text}``)."""
    body = await read_json(request, HeatmapBody, cfg)
    if body.query is not None and body.query.strip():
        query: Any = body.query
    else:
        query = await asyncio.to_thread(
            decode_image_bytes, b64_image(body.image, "image"), cfg.max_image_pixels, "image"
        )
    return await _heatmap(service, row_id, query, body.query_token, body.mode)
