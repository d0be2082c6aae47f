"""A server's limits and policy (:class:`ServeConfig`, the CLI's options) and the error a route
raises to refuse a request (:class:`HTTPError`)."""

from __future__ import annotations

from dataclasses import dataclass, field

from nomic_memory.errors import NomicMemoryError

LOOPBACK_NAMES = ("localhost", "127.0.0.1", "::1")


@dataclass
class ServeConfig:
    """Limits and policy of one server (the CLI's options)."""

    token: str | None = None  # bearer token required on every API route (None: no auth)
    cors_origins: list[str] = field(default_factory=list)
    host: str = "127.0.0.1"  # the address bound: its name is accepted in the Host header
    allow_hosts: list[str] = field(default_factory=list)  # more Host names accepted ("*": any)
    max_body_bytes: int = 32 << 20  # one request body (JSON or multipart)
    max_image_pixels: int = 40_000_000  # one uploaded image, judged from its header
    max_queries: int = 64  # per request
    max_k: int = 1000
    max_query_tokens: int = 512  # one text query, prompt included
    max_decodes: int = 2  # page images decoded at once (thumbnails, heatmap overlays)
    batch_window_ms: float = 5.0  # how long the batcher waits for company
    max_batch_queries: int = 512  # per batch
    exact_batching: bool = False  # one forward per query length: bit-identical to Index.search
    refresh_seconds: float = 5.0  # how often the table is looked for (dropped?) and refreshed

    @property
    def max_query_chars(self) -> int:
        """Longer texts are refused before tokenising (no token of the query tokenizers spans 16
        characters on average)."""
        return 16 * self.max_query_tokens


class HTTPError(NomicMemoryError):
    """A request the server refuses: ``status``, a message for the client, optional headers."""

    def __init__(self, status: int, message: str, headers: dict[str, str] | None = None):
        super().__init__(message)
        self.status = status
        self.headers = headers


__all__ = ["ServeConfig", "HTTPError", "LOOPBACK_NAMES"]
