"""The JSON bodies the server accepts, as pydantic models: one place for their fields, limits
and the words of their errors (the OpenAPI document at ``/openapi.json`` is made from them).

Limits that a server's options set (``max_k``, ``max_queries``, the query length) come from
its :class:`~.config.ServeConfig`, passed as validation context.  Errors are one line each:
``malformed JSON`` (400), a field's own sentence (422), ``Content-Type`` not JSON (415)."""

from __future__ import annotations

import json
from typing import Any, Literal

from fastapi import Request
from pydantic import BaseModel, ConfigDict, Field, ValidationError, ValidationInfo, field_validator, model_validator

from nomic_memory.search.queries import QueryError, check_text_query
from nomic_memory.serve.config import HTTPError, ServeConfig

FIELD_ERRORS = {
    "queries": "queries must be a list of strings",
    "query": "query must be a string",
    "images": "images must be a list of base64 strings",
    "image": "image must be a base64 string",
    "k": "k must be an integer between 1 and {max_k}",
    "where": "where must be a string (an SQL predicate)",
    "query_token": "query_token must be an integer of at least 0",
    "mode": "mode must be overlay, heat or json",
}


def check_text(text: str, name: str, cfg: ServeConfig) -> str:
    """A text query as every route takes it: the search layer's rule, and a length bound that
    spares the tokenizer megabytes (the token cap itself is checked by the service)."""
    try:
        check_text_query(text, name)
    except QueryError as e:
        raise ValueError(str(e)) from None
    if len(text) > cfg.max_query_chars:
        raise ValueError(
            f"{name} is {len(text)} characters long; text queries are limited to "
            f"{cfg.max_query_tokens} tokens (about {cfg.max_query_chars} characters)"
        )
    return text


def check_count(n: int, cfg: ServeConfig) -> None:
    if n == 0:
        raise ValueError("no query: give queries (texts) and/or images")
    if n > cfg.max_queries:
        raise ValueError(f"{n} queries in one request; at most {cfg.max_queries}")


def _config(info: ValidationInfo) -> ServeConfig:
    return (info.context or {}).get("config") or ServeConfig()


def _no_bool(v: Any) -> Any:
    if isinstance(v, bool):
        raise ValueError("not a boolean")
    return v


class SearchBody(BaseModel):
    """``POST /search``: texts and/or images, each answered with its own list of hits."""

    model_config = ConfigDict(extra="forbid")

    queries: list[str] = Field(default_factory=list, description="text queries")
    query: str | None = Field(None, description="one text query (answered first)")
    images: list[str] = Field(default_factory=list, description="image queries: base64, or data: URLs")
    k: int = Field(10, ge=1, description="hits per query")
    where: str | None = Field(None, description="SQL filter over path, root, page, mtime, size, width, height")

    _k_not_bool = field_validator("k", mode="before")(_no_bool)

    @model_validator(mode="after")
    def _limits(self, info: ValidationInfo) -> SearchBody:
        cfg = _config(info)
        if self.k > cfg.max_k:
            raise ValueError(f"k must be between 1 and {cfg.max_k}")
        for i, t in enumerate(self.texts):
            check_text(t, f"queries[{i}]", cfg)
        check_count(len(self.texts) + len(self.images) + (info.context or {}).get("uploads", 0), cfg)
        self.where = (self.where or "").strip() or None
        return self

    @property
    def texts(self) -> list[str]:
        return [self.query, *self.queries] if self.query is not None else list(self.queries)


class HeatmapBody(BaseModel):
    """``POST /heatmap/{id}``: a text or (the reason for POST) an image query."""

    model_config = ConfigDict(extra="forbid")

    query: str | None = Field(None, description="a text query")
    image: str | None = Field(None, description="an image query: base64, or a data: URL")
    query_token: int | None = Field(None, ge=0, description="one query token's map (default: the max over all)")
    mode: Literal["overlay", "heat", "json"] = Field(
        "overlay", description="the page with the map, the map, or its grid"
    )

    _qt_not_bool = field_validator("query_token", mode="before")(_no_bool)

    @model_validator(mode="after")
    def _one_query(self, info: ValidationInfo) -> HeatmapBody:
        if self.query is not None and self.query.strip():
            check_text(self.query, "query", _config(info))
        elif self.image is None:
            raise ValueError("give query (text) or image (base64)")
        return self


class EmbedBody(BaseModel):
    """``POST /embed``: vLLM's ``/pooling`` request (other vLLM fields are accepted and ignored)."""

    model_config = ConfigDict(extra="ignore")

    model: str | None = None
    input: str | list[str | dict[str, Any]] | None = Field(
        None,
        description="a text, or a list of texts and image parts "
        "({'type': 'image_url', 'image_url': {'url': 'data:image/png;base64,...'}})",
    )
    messages: list[dict[str, Any]] | None = Field(
        None, description="chat-style: one embedding per message (its text or image)"
    )


def error_message(exc: ValidationError, cfg: ServeConfig) -> str:
    """One line for a client: each failed field's sentence (FIELD_ERRORS), or the check's own words."""
    out: list[str] = []
    for e in exc.errors(include_url=False):
        loc = [str(x) for x in e.get("loc", ())]
        if e["type"] == "extra_forbidden":
            msg = f"unknown field: {loc[-1]}"
        elif e["type"] == "value_error" and not (loc and loc[0] in FIELD_ERRORS):
            msg = str(e["msg"]).removeprefix("Value error, ")
        elif loc and loc[0] in FIELD_ERRORS:
            msg = FIELD_ERRORS[loc[0]].format(max_k=cfg.max_k)
        else:
            msg = f"{'.'.join(loc) or 'body'}: {e['msg']}"
        if msg not in out:
            out.append(msg)
    return "; ".join(out) or "invalid request"


def validate(model: type[BaseModel], data: Any, cfg: ServeConfig, **context: Any) -> Any:
    """``data`` as ``model`` (limits from ``cfg``), or :class:`HTTPError` 422 with the reasons."""
    if not isinstance(data, dict):
        raise HTTPError(422, "the body must be a JSON object")
    try:
        return model.model_validate(data, context={"config": cfg, **context})
    except ValidationError as e:
        raise HTTPError(422, error_message(e, cfg)) from None


def media_type(request: Request) -> str:
    return request.headers.get("content-type", "").split(";", 1)[0].strip().lower()


async def read_json(request: Request, model: type[BaseModel], cfg: ServeConfig) -> Any:
    """The request's body as ``model``: only ``Content-Type: application/json`` (a browser sends
    ``text/plain`` across origins without asking first: refused, 415)."""
    if media_type(request) != "application/json":
        raise HTTPError(
            415, f"send JSON with Content-Type: application/json (got {request.headers.get('content-type') or 'none'})"
        )
    body = await request.body()
    if not body.strip():
        raise HTTPError(400, "empty request body: send JSON")
    try:
        data = json.loads(body)
    except RecursionError:
        raise HTTPError(400, "malformed JSON: nested too deeply") from None
    except (ValueError, UnicodeDecodeError) as e:
        raise HTTPError(400, f"malformed JSON: {e}") from None
    return validate(model, data, cfg)


__all__ = [
    "EmbedBody",
    "HeatmapBody",
    "SearchBody",
    "check_count",
    "check_text",
    "error_message",
    "read_json",
    "validate",
]
