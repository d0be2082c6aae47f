"""``POST /search``, ``POST /embed`` (vLLM's ``/pooling`` shape) and ``GET /tokens``."""

from __future__ import annotations

import asyncio
import secrets
import time
from typing import Any

from fastapi import APIRouter, Depends, Request

from nomic_memory.serve.config import HTTPError, ServeConfig
from nomic_memory.serve.deps import get_config, get_service, require_token, serving, text_query
from nomic_memory.serve.schemas import EmbedBody, SearchBody, check_text, media_type, read_json, validate
from nomic_memory.serve.service import SearchService, b64_image, decode_image_bytes, hit_json

router = APIRouter(dependencies=[Depends(require_token)], tags=["search"])


def _body(model) -> dict:
    return {"requestBody": {"required": True, "content": {"application/json": {"schema": model.model_json_schema()}}}}


async def _search_request(request: Request, cfg: ServeConfig) -> tuple[SearchBody, list[tuple[str, bytes]]]:
    """The search and its images' bytes (named for errors), from JSON or multipart."""
    if media_type(request) != "multipart/form-data":
        body = await read_json(request, SearchBody, cfg)
        return body, [(f"images[{i}]", b64_image(s, f"images[{i}]")) for i, s in enumerate(body.images)]
    form = await request.form(max_files=cfg.max_queries, max_fields=cfg.max_queries + 8)
    fields: dict[str, Any] = {
        "queries": [t for t in form.getlist("queries") + form.getlist("query") if isinstance(t, str)],
        "images": [s for s in form.getlist("images") + form.getlist("image") if isinstance(s, str)],
    }
    for name in ("k", "where"):
        if form.get(name) is not None:
            fields[name] = form.get(name)
    files = [f for f in form.getlist("images") + form.getlist("image") if not isinstance(f, str)]
    body = validate(SearchBody, fields, cfg, uploads=len(files))
    images = [(f"images[{i}]", b64_image(s, f"images[{i}]")) for i, s in enumerate(body.images)]
    images += [(f.filename or "image", await f.read()) for f in files]
    return body, images


@router.post("/search", openapi_extra=_body(SearchBody))
async def search(request: Request, service: SearchService = Depends(serving), cfg: ServeConfig = Depends(get_config)):
    """The k best pages per query: the same hits, order and scores as ``Index.search``. Texts first,
    then images, one list of hits each; JSON, or multipart with ``queries``/``k``/``where`` fields
    and ``images`` files."""
    t0 = time.perf_counter()
    body, raw = await _search_request(request, cfg)
    images = [await asyncio.to_thread(decode_image_bytes, b, cfg.max_image_pixels, name) for name, b in raw]
    hits = await service.search([*body.texts, *images], body.k, body.where)
    return {
        "k": body.k,
        "where": body.where,
        "took_ms": round(1000 * (time.perf_counter() - t0), 3),
        "results": [[hit_json(h) for h in hs] for hs in hits],
    }


def _part(p: Any, where: str) -> tuple[str, Any]:
    """One vLLM input part -> ``("text", str)`` or ``("image", bytes)``."""
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


def pooling_inputs(body: EmbedBody, cfg: ServeConfig) -> list[tuple[str, Any]]:
    """vLLM /pooling request -> list of (kind, text | image bytes)."""
    items: list = []
    if body.input is not None:
        for i, p in enumerate(body.input if isinstance(body.input, list) else [body.input]):
            items.append(_part(p, f"input[{i}]"))
    for i, m in enumerate(body.messages or []):
        content = m.get("content")
        parts = [content] if isinstance(content, str) else content if isinstance(content, list) else None
        if not parts or len(parts) != 1:
            raise HTTPError(422, f"messages[{i}]: one text or one image per message (each gives one embedding)")
        items.append(_part(parts[0], f"messages[{i}]"))
    if not items:
        raise HTTPError(422, "no input: give input (texts / image parts) or messages")
    if len(items) > cfg.max_queries:
        raise HTTPError(422, f"{len(items)} inputs in one request; at most {cfg.max_queries}")
    return items


@router.post("/embed", openapi_extra=_body(EmbedBody))
async def embed(
    request: Request, service: SearchService = Depends(get_service), cfg: ServeConfig = Depends(get_config)
):
    """Embeddings in vLLM's ``/pooling`` response shape (texts as queries, images as documents)."""
    body = await read_json(request, EmbedBody, cfg)
    queries = []
    for i, (kind, v) in enumerate(pooling_inputs(body, cfg)):
        if kind == "text":
            try:
                queries.append(check_text(v, f"input[{i}]", cfg))
            except ValueError as e:
                raise HTTPError(422, str(e)) from None
        else:
            queries.append(await asyncio.to_thread(decode_image_bytes, v, cfg.max_image_pixels, f"input[{i}]"))
    embs = await service.embed(queries)
    n_tokens = sum(int(e.shape[0]) if e.ndim == 2 else 1 for e in embs)
    return {
        "id": f"pool-{secrets.token_hex(8)}",
        "object": "list",
        "created": int(time.time()),
        "model": service.index.info.model_id,
        "data": [{"index": i, "object": "pooling", "data": e.tolist()} for i, e in enumerate(embs)],
        "usage": {"prompt_tokens": n_tokens, "total_tokens": n_tokens, "completion_tokens": 0},
    }


@router.get("/tokens")
async def tokens(q: str = Depends(text_query), service: SearchService = Depends(get_service)):
    """The tokens of a text query, one per query vector (labels for per-token heatmaps), and which
    are special tokens (the query prompt's padding, which the page hides)."""
    toks, special = await service.run_model(service.query_tokens, q)
    return {"tokens": toks, "special": special}
