"""``nomic-memory mcp``: a store as a Model Context Protocol server, for assistants.

Built on the official ``mcp`` SDK (:class:`mcp.server.MCPServer`).  What it offers:

* tool ``search`` (``query``, ``k``, ``where``): the ranked pages (path, page, score, id) as
  JSON text and as structured content, each of the best pages also as an image (a JPEG whose
  long side is at most :data:`IMAGE_SIDE` pixels);
* tool ``get_page`` (``id``): one stored page's metadata and image;
* tool ``stats``: the table, its model and its size;
* tool ``add_folder`` (``folder``), only when the server was started with ``allow_write``: embeds a
  folder into the store (as ``nomic-memory embed`` does), with progress notifications;
* resource template ``page://{id}``: a page's image.

**Safety.**  Only rows of the store are served: a client names a page by its id, never by a path,
and a page's file is read only if it still exists inside the folder it was embedded from
(:func:`nomic_memory.serve.thumbs.page_file`).  Every argument is checked (types and bounds by the
tools' JSON schemas, ``where`` by :func:`nomic_memory.search.check_where`); a refused call is an
MCP tool error (``isError``) or protocol error with one line saying why, never a traceback.

The query model is loaded on the first search (the table records which model it was made with).
"""

# No `from __future__ import annotations`: the SDK reads the tools' annotations (built per server) at run time.

import json
import logging
import os
import re
import threading
import time
from collections import OrderedDict
from pathlib import Path
from typing import Annotated, Any

import anyio
from mcp.server import MCPServer
from mcp.server.mcpserver import Context
from mcp.server.mcpserver.exceptions import ToolError
from mcp.shared.exceptions import MCPError
from mcp_types import INVALID_PARAMS, CallToolResult, ImageContent, TextContent, ToolAnnotations
from pydantic import Field

from nomic_memory import __version__
from nomic_memory.errors import NomicMemoryError
from nomic_memory.search.index import Index, check_where
from nomic_memory.serve.thumbs import PageUnavailable, file_identity, page_file, thumbnail

log = logging.getLogger("nomic_memory.mcp")

MAX_K = 50  # results of one search
IMAGE_HITS = 10  # of these, how many come with their image
IMAGE_SIDE = 768  # the long side of a page image, pixels (JPEG)
IMAGE_CACHE_BYTES = 64 << 20  # page images kept encoded in memory (base64 characters), least recently used dropped
MAX_QUERY_CHARS = 2000
REFRESH_SECONDS = 5.0  # how often a search first looks for rows other processes committed
ROW_ID = re.compile(r"^[0-9a-f]{16}$")

INSTRUCTIONS = (
    "Search the user's pages (photos, scans, document pages) by what they show. `search` ranks stored "
    "pages against a text query and returns each page's path, page number, score and id, with the "
    "best pages' images; `get_page` returns one page by id; `stats` describes the store."
)


def widen_stdout_pipe(size: int = 1 << 20) -> None:
    """Let the pipe this process answers on hold ``size`` bytes (Linux; elsewhere, or beyond the
    system's limit, nothing changes).  A search's answer with its page images is several hundred
    kB: through the default 64 kB pipe it crosses in a dozen writes, each waiting for the client to
    read, which on a busy machine means a dozen waits to be scheduled."""
    import fcntl
    import sys

    try:
        fcntl.fcntl(sys.stdout.fileno(), fcntl.F_SETPIPE_SZ, size)
    except (AttributeError, OSError, ValueError):  # not Linux, not a pipe, or above the limit
        pass


def _b64(data: bytes) -> str:
    import base64

    return base64.b64encode(data).decode()


def _identity(row: dict) -> tuple | None:
    """What the file at the row's path is now (inode, device, size, mtime; the target of a
    symlink), or None if there is nothing there."""
    try:
        return file_identity(os.path.join(row["root"], row["path"]))
    except (OSError, ValueError):
        return None


class ImageCache:
    """Page images ready to send (base64 in an :class:`ImageContent`), by row id, least recently
    used dropped beyond ``max_chars``.

    An entry is served only while the table is at the version it was made at (a re-embedded page
    is a new commit) and the file at the row's path is the very file it was made from (same
    inode, device, size and modification time: a file deleted, replaced, or swapped for a symlink
    to anything else misses, and goes through :func:`~nomic_memory.serve.thumbs.page_file`'s
    checks again).  A hit costs one ``stat``: no row lookup, path resolution, file read or
    base64 encoding."""

    def __init__(self, max_chars: int = IMAGE_CACHE_BYTES):
        self.max_chars = max_chars
        self._entries: OrderedDict[str, tuple[int, tuple, ImageContent]] = OrderedDict()
        self._chars = 0
        self._lock = threading.Lock()

    def get(self, row: dict, version: int) -> ImageContent | None:
        with self._lock:
            entry = self._entries.get(row["id"])
        if entry is None or entry[0] != version or entry[1] != _identity(row):
            return None
        with self._lock:
            if row["id"] in self._entries:
                self._entries.move_to_end(row["id"])
        return entry[2]

    def put(self, row_id: str, version: int, identity: tuple | None, block: ImageContent) -> None:
        if identity is None or len(block.data) > self.max_chars:
            return
        with self._lock:
            old = self._entries.pop(row_id, None)
            if old is not None:
                self._chars -= len(old[2].data)
            self._entries[row_id] = (version, identity, block)
            self._chars += len(block.data)
            while self._chars > self.max_chars:
                _, (_, _, dropped) = self._entries.popitem(last=False)
                self._chars -= len(dropped.data)


class PageStore:
    """The state behind the tools: one store table, its index and the page images.

    Searches and embedding runs go through one worker thread at a time (the model is not
    thread-safe); the event loop never waits on the model."""

    def __init__(
        self,
        index: Index,
        *,
        embedder=None,
        max_k: int = MAX_K,
        image_hits: int = IMAGE_HITS,
        image_side: int = IMAGE_SIDE,
    ):
        self.index = index
        self.embedder = embedder  # an Embedder of the table's model: add_folder is offered only with one
        self.allow_write = embedder is not None
        self.max_k = max_k
        self.image_hits = image_hits
        self.image_side = image_side
        self.limiter = anyio.CapacityLimiter(1)
        self.images = ImageCache()
        self._refreshed = time.monotonic()

    # ---- runs on the worker thread
    def refresh(self, force: bool = False) -> None:
        """See rows that other processes committed meanwhile (at most every few seconds)."""
        now = time.monotonic()
        if force or now - self._refreshed >= REFRESH_SECONDS:
            self._refreshed = now
            self.index.table.refresh()

    def search(self, query: str, k: int, where: str | None) -> list[dict]:
        self.refresh()
        if where is not None:  # a bad filter fails before the model loads
            where = check_where(self.index.table.table.to_lance(), where)
        return [h.to_dict() for h in self.index.search(query, k, where=where)]

    def row(self, row_id: str) -> dict:
        if not isinstance(row_id, str) or not ROW_ID.match(row_id):
            raise NomicMemoryError(f"no page {str(row_id)[:40]!r}: ids are 16 hex digits, as search returns them")
        r = self.index.row(row_id)
        if r is None:
            self.refresh(force=True)
            r = self.index.row(row_id)
        if r is None:
            raise NomicMemoryError(f"no page with id {row_id} in table {self.index.table.name}")
        return r

    def image(self, row: dict) -> bytes:
        """JPEG bytes of a stored row's page (:class:`~nomic_memory.serve.thumbs.PageUnavailable` if its
        file is gone, changed into something unreadable, or resolves outside its root)."""
        page_file(row)  # checked every time: a cached image of a file that is gone is not served
        return thumbnail(self.index.store, self.index.table.name, row["id"], row, side=self.image_side)

    def stats(self) -> dict:
        idx, info = self.index, self.index.info
        self.refresh()
        return {
            "store": str(idx.store.path),
            "table": idx.table.name,
            "rows": idx.table.count(),
            "model_id": info.model_id,
            "revision": info.revision,
            "kind": info.kind,
            "dim": info.dim,
            "model_loaded": idx.model_loaded,
            "allow_write": self.allow_write,
            "max_k": self.max_k,
            "image_side": self.image_side,
        }

    def add_folder(self, folder: str, progress) -> dict:
        d = Path(folder).expanduser()
        if not d.is_absolute():
            raise NomicMemoryError(f"folder must be an absolute path, not {folder!r}")
        if not d.is_dir():
            raise NomicMemoryError(f"no such folder: {d}")

        def on_event(kind: str, data: dict) -> None:
            if kind == "todo":
                progress(0, data["count"], f"{data['count']} to embed, {data['skipped']} unchanged")
            elif kind == "batch":
                progress(data["embedded"], None, f"batch {data['index']}/{data['total']}")

        report = self.embedder.embed_directory(
            d, store=self.index.store, table_name=self.index.table.name, on_event=on_event
        )
        self.refresh(force=True)
        return {
            "folder": str(d),
            "embedded": report.embedded,
            "skipped_unchanged": report.skipped_unchanged,
            "failed": [{"path": p, "reason": r} for p, r in report.failed],
            "rows": self.index.table.count(),
        }

    # ---- called on the event loop
    async def run(self, fn, *args):
        """``fn(*args)`` on the worker thread; a library error becomes the tool's error message."""
        try:
            return await anyio.to_thread.run_sync(fn, *args, limiter=self.limiter)
        except NomicMemoryError as e:
            raise ToolError(str(e)) from None

    async def page_contents(self, hits: list[dict]) -> list:
        """An image block for each of the first ``image_hits`` hits whose file can be read; each
        hit says whether its image is attached (and if not, why)."""
        return await anyio.to_thread.run_sync(self._page_contents, hits)  # file reads: off the event loop

    def search_with_images(self, query: str, k: int, where: str | None) -> tuple[list[dict], list]:
        """:meth:`search` and the hits' image blocks, in one turn of the worker thread."""
        hits = self.search(query, k, where)
        return hits, self._page_contents(hits)

    def _page_contents(self, hits: list[dict]) -> list:
        shown = hits[: self.image_hits]
        version = self.index.table.version()
        blocks: list = [self.images.get(h, version) if "root" in h else None for h in shown]
        missing = [i for i, b in enumerate(blocks) if b is None]
        rows = self.index.rows([shown[i]["id"] for i in missing]) if missing else []  # one lookup for all
        for i, row in zip(missing, rows):
            try:
                row = row or self.row(shown[i]["id"])  # row(): refreshes, or says why not
                identity = _identity(row)  # before the checks: a file changed meanwhile misses next time
                blocks[i] = ImageContent(type="image", data=_b64(self.image(row)), mime_type="image/jpeg")
            except NomicMemoryError as e:  # PageUnavailable, or a row gone since the search
                shown[i]["image"] = f"unavailable: {e}"
                continue
            self.images.put(row["id"], version, identity, blocks[i])
        out = []
        for i, h in enumerate(hits):
            if i >= self.image_hits:
                h["image"] = "not attached (read it as resource page://{id})".format(id=h["id"])
            elif blocks[i] is not None:
                out.append(blocks[i])
                h["image"] = f"attached: image {len(out)}"
        return out


def _result(payload: dict, images: list) -> CallToolResult:
    text = TextContent(type="text", text=json.dumps(payload, ensure_ascii=False))
    return CallToolResult(content=[text, *images], structured_content=payload)


def create_mcp_server(pages: PageStore) -> MCPServer:
    """The MCP server over ``pages``: the tools and the page resource."""
    mcp = MCPServer("nomic-memory", version=__version__, instructions=INSTRUCTIONS, log_level="WARNING")
    read_only = ToolAnnotations(read_only_hint=True, open_world_hint=False)
    k_type = Annotated[
        int, Field(ge=1, le=pages.max_k, strict=True, description=f"How many pages to return (1 to {pages.max_k}).")
    ]

    @mcp.tool(annotations=read_only)
    async def search(
        query: Annotated[
            str, Field(min_length=1, max_length=MAX_QUERY_CHARS, description="What the pages show, in words.")
        ],
        k: k_type = 10,
        where: Annotated[
            str | None,
            Field(
                max_length=2000,
                description=(
                    "Optional SQL filter over path, root, page, mtime, size, width, height, "
                    "e.g. \"path LIKE 'receipts/%' AND page <= 2\"."
                ),
            ),
        ] = None,
        images: Annotated[
            bool, Field(strict=True, description=(f"Attach the first {pages.image_hits} pages' images (JPEG)."))
        ] = True,
    ) -> CallToolResult:
        """Rank the stored pages against a text query: path, page number, score and id of each,
        and the best pages' images."""
        if not query.strip():
            raise ToolError("query is empty")
        if images:  # one hop to the worker thread for both
            hits, blocks = await pages.run(pages.search_with_images, query, k, where)
        else:
            hits, blocks = await pages.run(pages.search, query, k, where), []
        return _result({"query": query, "k": k, "where": where, "results": hits}, blocks)

    @mcp.tool(annotations=read_only)
    async def get_page(
        id: Annotated[str, Field(min_length=1, max_length=64, description="A page id, as search returns it.")],
    ) -> CallToolResult:
        """One stored page by id: its metadata and its image."""
        row = await pages.run(pages.row, id)
        row = {k: v for k, v in row.items() if k not in ("embedding",)}
        images = await pages.page_contents([row])
        return _result({"page": row}, images)

    @mcp.tool(annotations=read_only)
    async def stats() -> CallToolResult:
        """The store, its table (the model its pages were embedded with) and how many pages it holds."""
        return _result(await pages.run(pages.stats), [])

    if pages.allow_write:
        _add_folder_tool(mcp, pages)
    _page_resource(mcp, pages)
    return mcp


def _add_folder_tool(mcp: MCPServer, pages: PageStore) -> None:
    @mcp.tool(annotations=ToolAnnotations(read_only_hint=False, destructive_hint=False, idempotent_hint=True))
    async def add_folder(
        folder: Annotated[
            str,
            Field(
                min_length=1,
                max_length=4096,
                description=("Absolute path of a folder of images and PDFs on the server's machine."),
            ),
        ],
        ctx: Context,
    ) -> CallToolResult:
        """Embed a folder's images and document pages into the store (unchanged files are skipped),
        reporting progress; its pages are searchable as soon as it finishes."""

        def progress(done: float, total: float | None, message: str) -> None:  # called on the worker thread
            try:
                anyio.from_thread.run(ctx.report_progress, done, total, message)
            except Exception:  # a client that asked for no progress, or went away
                log.debug("progress notification not sent", exc_info=True)

        return _result(await pages.run(pages.add_folder, folder, progress), [])


def _page_resource(mcp: MCPServer, pages: PageStore) -> None:
    from mcp.server.mcpserver.exceptions import ResourceError

    @mcp.resource(
        "page://{id}",
        name="page",
        mime_type="image/jpeg",
        description=f"A stored page's image (JPEG, long side at most {pages.image_side} px), by id.",
    )
    async def page(id: str) -> bytes:
        try:
            return await anyio.to_thread.run_sync(lambda: pages.image(pages.row(id)), limiter=pages.limiter)
        except PageUnavailable as e:
            raise ResourceError(str(e)) from None
        except NomicMemoryError as e:
            raise MCPError(code=INVALID_PARAMS, message=str(e)) from None


def open_page_store(
    store,
    table: str | None = None,
    *,
    backend: str = "auto",
    model_name: str | None = None,
    allow_mismatch: bool = False,
    template: str | None = None,
    allow_write: bool = False,
) -> PageStore:
    """A :class:`PageStore` over ``table`` of ``store`` (the model is loaded on first use).
    ``allow_write``: offer ``add_folder``, whose runs and the searches share one copy of the model."""
    idx = Index.open(
        store, table, backend=backend, model_name=model_name, allow_mismatch=allow_mismatch, template=template
    )
    emb = _table_embedder(idx, model_name, backend) if allow_write else None
    if emb is not None:
        idx = Index(idx.store, idx.table, model=emb, allow_mismatch=allow_mismatch, template=template)
    return PageStore(idx, embedder=emb)


def _table_embedder(idx: Index, model_name: str | None, backend: str):
    """A lazy :class:`~nomic_memory.api.Embedder` of the model ``idx``'s table was made with."""
    from nomic_memory.api import Embedder  # late: torch (seconds); only a server with --allow-write needs it

    info = idx.info
    name = model_name or info.model_id
    pin = not model_name and not Path(name).expanduser().is_dir() and not info.revision.startswith("local-")
    return Embedder(
        name, backend=backend, kind=info.kind, seed=info.seed, revision=info.revision if pin else None, lazy=True
    )


def bearer_app(app, token: str):
    """``app`` (ASGI) answering only requests that carry ``Authorization: Bearer <token>``."""
    import secrets

    expected = f"Bearer {token}".encode()

    async def guarded(scope, receive, send) -> Any:
        if scope["type"] == "http":
            got = dict(scope.get("headers", [])).get(b"authorization", b"")
            if not secrets.compare_digest(got, expected):
                body = b'{"error": "missing or wrong bearer token (Authorization: Bearer ...)"}'
                await send(
                    {
                        "type": "http.response.start",
                        "status": 401,
                        "headers": [(b"content-type", b"application/json"), (b"www-authenticate", b"Bearer")],
                    }
                )
                await send({"type": "http.response.body", "body": body})
                return
        await app(scope, receive, send)

    return guarded


__all__ = [
    "widen_stdout_pipe",
    "IMAGE_SIDE",
    "MAX_K",
    "PageStore",
    "bearer_app",
    "create_mcp_server",
    "open_page_store",
]
