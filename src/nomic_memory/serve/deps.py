"""FastAPI dependencies shared by the routes: the service, its config, the bearer token, and
the table's availability (503 while it is missing)."""

from __future__ import annotations

import secrets

from fastapi import Depends, Query, Request

from nomic_memory.serve.config import HTTPError, ServeConfig
from nomic_memory.serve.schemas import check_text
from nomic_memory.serve.service import SearchService


def get_service(request: Request) -> SearchService:
    return request.app.state.service


def get_config(request: Request) -> ServeConfig:
    return request.app.state.config


def require_token(request: Request, cfg: ServeConfig = Depends(get_config)) -> None:
    """``Authorization: Bearer <token>`` when the server has a token (every API route)."""
    if not cfg.token:
        return
    got = request.headers.get("authorization", "").encode()
    if not secrets.compare_digest(got, f"Bearer {cfg.token}".encode()):
        raise HTTPError(
            401, "missing or wrong bearer token (Authorization: Bearer ...)", headers={"WWW-Authenticate": "Bearer"}
        )


def serving(service: SearchService = Depends(get_service)) -> SearchService:
    """The service, once its table is known to be there (a plain function: FastAPI runs it on a
    worker thread, as it may list the store's tables)."""
    service.available()
    return service


def text_query(q: str = Query(..., description="a text query"), cfg: ServeConfig = Depends(get_config)) -> str:
    """The ``q`` parameter, checked as every text query is."""
    try:
        return check_text(q, "q", cfg)
    except ValueError as e:
        raise HTTPError(422, str(e)) from None


__all__ = ["get_config", "get_service", "require_token", "serving", "text_query"]
