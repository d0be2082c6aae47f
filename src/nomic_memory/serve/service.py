"""The search service behind ``nomic-memory serve`` (the HTTP routes are in :mod:`.server`).

The model is loaded once; requests are answered over HTTP (FastAPI on uvicorn):
* ``POST /search``: text and image queries -> the same hits, order and float32 scores as
  :meth:`nomic_memory.search.index.Index.search`;
* ``POST /embed``: embeddings in the request/response shape of vLLM's ``/pooling`` endpoint;
* ``GET /thumb/{id}``, ``GET|POST /heatmap/{id}``: a page's thumbnail, and the late-interaction map
  of which patches matched which query tokens (:mod:`nomic_memory.serve.heatmap`);
* ``GET /health``, ``GET /stats``, ``/openapi.json``; the search page at ``/`` (no internet needed).

**Micro-batching.**  Searches that arrive together share work: a single asyncio task takes the
first waiting request, collects whatever else arrives within ``batch_window_ms``, then runs ONE
embedding forward for all their texts (and one for their images) and ONE scan of the table per
distinct ``where`` filter, at the largest ``k`` asked, each request's hits cut to its own ``k``
(the scan's ranking does not depend on ``k`` or on which queries share it, so every request
gets exactly what it would alone).  The model runs on one dedicated thread (it is not thread-safe)
and never on the event loop, so a slow client or a long scan never stalls other connections.

**Safety.**  Files are served only by row id (a row of the store; never a client's path); bodies
are capped in bytes, uploaded images in pixels; every error is a JSON ``{"error": ...}`` with a
4xx status (a 500 says "internal error" and logs the traceback server-side, never to the client).
Authentication (a bearer token) and CORS are the caller's choice (see :func:`create_app`).
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import hashlib
import io
import logging
import os
import re
import tempfile
import threading
import time
from collections import OrderedDict
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from nomic_memory.errors import NomicMemoryError
from nomic_memory.memory import trim_heap
from nomic_memory.ingest.images import ImageError, load_image
from nomic_memory.serve import heatmap as hm
from nomic_memory.serve.thumbs import PageUnavailable, load_page

log = logging.getLogger("nomic_memory.serve.app")


WEB_DIR = Path(__file__).resolve().parent / "web"
ROW_ID = re.compile(r"^[0-9a-f]{16}$")


# ------------------------------------------------------------------ configuration and errors
@dataclass
class ServeConfig:
    """Limits and policy of one server (the CLI's options)."""

    token: str | None = None  # bearer token required on every API route (None: no auth)
    cors_origins: list[str] = field(default_factory=list)
    max_body_bytes: int = 32 << 20  # one request body (JSON or multipart)
    max_image_pixels: int = 40_000_000  # one uploaded image, judged from its header
    max_queries: int = 64  # per request
    max_k: int = 1000
    batch_window_ms: float = 5.0  # how long the batcher waits for company
    max_batch_queries: int = 512  # per batch
    exact_batching: bool = False  # one forward per query length: bit-identical to Index.search
    refresh_seconds: float = 5.0  # how often a batch first looks for rows other processes committed


class HTTPError(NomicMemoryError):
    """A request the server refuses: ``status`` and a message for the client."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status


def _payload_too_large(limit: int) -> HTTPError:
    return HTTPError(413, f"request body larger than {limit} bytes")


# ------------------------------------------------------------------ small helpers
class LRU(OrderedDict):
    """A bounded mapping (least recently used entries evicted); guarded by a lock."""

    def __init__(self, size: int):
        super().__init__()
        self.size = size
        self.lock = threading.Lock()

    def get_or(self, key, make):
        with self.lock:
            if key in self:
                self.move_to_end(key)
                return self[key]
        value = make()
        with self.lock:
            self[key] = value
            while len(self) > self.size:
                self.popitem(last=False)
        return value


def decode_image_bytes(data: bytes, max_pixels: int, name: str = "upload"):
    """An uploaded image -> RGB PIL image, through the same safe decoder as the pipeline
    (pixel limit judged from the header before decoding: decompression bombs are refused)."""

    if not data:
        raise HTTPError(400, f"{name}: empty image")
    fd, tmp = tempfile.mkstemp(prefix="nomic-memory-upload-")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        try:
            img = load_image(tmp, max_image_pixels=max_pixels)
        except ImageError as e:
            status = 413 if "too large" in e.reason else 400
            raise HTTPError(status, f"{name}: {e.reason}") from None
    finally:
        os.unlink(tmp)
    return img


def b64_image(s: Any, name: str) -> bytes:
    """Base64 (or a ``data:image/...;base64,`` URL) -> bytes."""
    if not isinstance(s, str):
        raise HTTPError(400, f"{name}: expected a base64 string")
    if s.startswith("data:"):
        s = s.split(",", 1)[1] if "," in s else ""
    try:
        return base64.b64decode(s, validate=True)
    except (binascii.Error, ValueError):
        raise HTTPError(400, f"{name}: not valid base64") from None


def hit_json(h) -> dict:
    return {"rank": h.rank, "score": h.score, "path": h.path, "root": h.root, "page": h.page, "id": h.id}


# ------------------------------------------------------------------ the search service
@dataclass
class _Job:
    queries: list  # str | PIL.Image
    k: int
    where: str | None
    future: asyncio.Future


class SearchService:
    """The loaded index plus the micro-batcher; shared by all requests of one server."""

    def __init__(self, index, config: ServeConfig | None = None):
        self.index = index
        self.config = config or ServeConfig()
        self.lm = index.model  # load (and check against the table) now, not on the first request
        self.model_thread = ThreadPoolExecutor(1, thread_name_prefix="nomic-memory-model")
        self.queue: asyncio.Queue | None = None
        self._task: asyncio.Task | None = None
        self.rows = LRU(4096)
        self.query_cache = LRU(256)
        self.started = time.time()
        self._refreshed = time.monotonic()
        self.counters = {"requests": 0, "queries": 0, "batches": 0, "forwards": 0, "scans": 0,
                         "max_batch_requests": 0, "max_batch_queries": 0,
                         "embed_seconds": 0.0, "scan_seconds": 0.0}

    # ---- lifecycle (inside the event loop)
    def start(self) -> None:
        self.queue = asyncio.Queue()
        self._task = asyncio.get_running_loop().create_task(self._batcher(), name="nomic-memory-batcher")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
        self.model_thread.shutdown(wait=True)

    async def run_model(self, fn, *args):
        """Run ``fn`` on the model thread (never on the event loop, never two at once)."""
        return await asyncio.get_running_loop().run_in_executor(self.model_thread, fn, *args)

    # ---- search
    async def search(self, queries: list, k: int, where: str | None) -> list[list]:
        fut = asyncio.get_running_loop().create_future()
        assert self.queue is not None, "the service is not started"
        await self.queue.put(_Job(queries, k, where, fut))
        return await fut

    async def _batcher(self) -> None:
        q = self.queue
        assert q is not None
        window = self.config.batch_window_ms / 1000
        while True:
            jobs = [await q.get()]
            n = len(jobs[0].queries)
            deadline = asyncio.get_running_loop().time() + window
            while n < self.config.max_batch_queries:
                timeout = deadline - asyncio.get_running_loop().time()
                try:
                    job = q.get_nowait() if timeout <= 0 else await asyncio.wait_for(q.get(), timeout)
                except (asyncio.TimeoutError, asyncio.QueueEmpty):
                    break
                jobs.append(job)
                n += len(job.queries)
            jobs = [j for j in jobs if not j.future.cancelled()]  # clients that went away
            if not jobs:
                continue
            try:
                results = await self.run_model(self._run_batch, jobs)
            except Exception as e:  # embedding failed: every request of the batch learns why
                for j in jobs:
                    if not j.future.done():
                        j.future.set_exception(e)
                continue
            for j, r in zip(jobs, results):
                if j.future.done():
                    continue
                if isinstance(r, BaseException):
                    j.future.set_exception(r)
                else:
                    j.future.set_result(r)

    def _embed(self, queries: list) -> list[np.ndarray]:
        """Embed texts and images on the model thread: by default one forward for all texts
        and one for all images.

        A padded batch moves scores by about one float32 ulp (rounding order in attention over a
        longer, masked sequence) against embedding each query alone as ``Index.search`` does.
        ``config.exact_batching`` groups queries of equal length instead (texts by token count,
        images by size) so every embedding is bit-identical to the single-query one, at one
        forward per distinct length (~10x slower embedding for varied short queries on a CPU)."""
        from nomic_memory.model.embed import embed_inputs  # late: transformers' model code, once the model is needed
        from nomic_memory.model.encode import embed_queries  # late: as above
        out: list = [None] * len(queries)
        texts = [i for i, q in enumerate(queries) if isinstance(q, str)]
        images = [i for i, q in enumerate(queries) if not isinstance(q, str)]
        groups: dict = {}
        exact = self.config.exact_batching
        if texts:
            lengths = self._text_lengths([queries[i] for i in texts]) if exact else [0] * len(texts)
            for i, n in zip(texts, lengths):
                groups.setdefault(("text", n), []).append(i)
        for i in images:
            groups.setdefault(("image", queries[i].size if exact else 0), []).append(i)
        t0 = time.perf_counter()
        for (kind, _), members in groups.items():
            items = [queries[i] for i in members]
            if kind == "text":
                embs = [e.float().numpy() for e in
                        embed_queries(self.lm, items, batch_size=len(items), template=self.index.template)]
            else:
                embs = embed_inputs(self.lm, items, batch_size=len(items))
            for i, e in zip(members, embs):
                out[i] = np.asarray(e, dtype=np.float32)
            self.counters["forwards"] += 1
        self.counters["embed_seconds"] += time.perf_counter() - t0
        return out

    def _text_lengths(self, texts: list[str]) -> list[int]:
        """Token count of each text query (tokenising only)."""
        t = self.index.template
        if t:
            texts = [t.format(x) if "{}" in t else t + x for x in texts]
        b = self.lm.processor.process_queries(texts)
        return [int(n) for n in b["attention_mask"].sum(dim=1)]

    def _refresh(self) -> None:
        """A resident server must see what `embed` runs commit to the store meanwhile: at most every
        ``refresh_seconds``, move the table to its latest version (one manifest read)."""
        now = time.monotonic()
        if now - self._refreshed < self.config.refresh_seconds:
            return
        self._refreshed = now
        table = self.index.table
        before = table.version()
        table.refresh()
        if table.version() != before:
            with self.rows.lock:
                self.rows.clear()  # row metadata may have changed with the rows

    def _run_batch(self, jobs: list[_Job]) -> list:
        """Embed every job's queries at once, then one scan per distinct filter."""
        self._refresh()
        flat = [q for j in jobs for q in j.queries]
        embs = self._embed(flat)
        c = self.counters
        c["batches"] += 1
        c["requests"] += len(jobs)
        c["queries"] += len(flat)
        c["max_batch_requests"] = max(c["max_batch_requests"], len(jobs))
        c["max_batch_queries"] = max(c["max_batch_queries"], len(flat))
        spans, a = [], 0
        for j in jobs:
            spans.append((a, a + len(j.queries)))
            a += len(j.queries)
        results: list = [None] * len(jobs)
        groups: dict[str | None, list[int]] = {}
        for ji, j in enumerate(jobs):
            groups.setdefault(j.where, []).append(ji)
        for where, members in groups.items():
            k = max(jobs[ji].k for ji in members)
            group_embs = [embs[i] for ji in members for i in range(*spans[ji])]
            t0 = time.perf_counter()
            try:
                hits = self.index.search_embeddings(group_embs, k, where=where)
                c["scans"] += 1
                c["scan_seconds"] += time.perf_counter() - t0
            except NomicMemoryError as e:
                err: BaseException = HTTPError(400, str(e))
            except Exception as e:  # Lance's parse/planning errors for a bad filter
                err = HTTPError(400, f"bad filter {where!r}: {str(e).splitlines()[0][:300]}") if where else e
            else:
                pos = 0
                for ji in members:
                    n = len(jobs[ji].queries)
                    results[ji] = [hs[: jobs[ji].k] for hs in hits[pos:pos + n]]
                    pos += n
                continue
            for ji in members:
                results[ji] = err
        # A scan's float32 tiles and score buffers are freed in the scan threads' malloc arenas;
        # hand them back to the OS after each batch, or a resident server's RSS creeps up with
        # fragmentation over hours (a 10-minute soak grew 6 % without this).
        trim_heap()
        return results

    # ---- rows, query embeddings, heatmaps
    def row(self, row_id: str) -> dict:
        if not ROW_ID.match(row_id):
            raise HTTPError(404, f"no row {row_id!r} (ids are 16 hex digits, as /search returns them)")
        r = self.rows.get_or(row_id, lambda: self.index.row(row_id))
        if r is None:
            with self.rows.lock:
                self.rows.pop(row_id, None)
            raise HTTPError(404, f"no row {row_id!r} in table {self.index.table.name!r}")
        return r

    async def query_embedding(self, query) -> np.ndarray:
        """One query's embedding (cached by text / image bytes), computed on the model thread."""
        if isinstance(query, str):
            key = ("text", query)
        else:
            key = ("image", hashlib.sha256(query.tobytes()).hexdigest(), query.size)
        with self.query_cache.lock:
            hit = self.query_cache.get(key)
        if hit is not None:
            return hit
        emb = (await self.run_model(self._embed, [query]))[0]
        self.query_cache.get_or(key, lambda: emb)
        return emb

    def query_tokens(self, text: str) -> list[str]:
        """The query's tokens, one per query vector (what the per-token selector shows)."""
        proc = self.lm.processor
        t = self.index.template
        if t:
            text = t.format(text) if "{}" in t else t + text
        b = proc.process_queries([text])
        ids = b["input_ids"][0][b["attention_mask"][0].bool()].tolist()
        toks = proc.tokenizer.convert_ids_to_tokens(ids)
        return [proc.tokenizer.convert_tokens_to_string([t]) for t in toks]

    def heatmap(self, row_id: str, qemb: np.ndarray, query_token: int | None, mode: str):
        """``(png bytes | None, json)`` of one row's heatmap (runs on a worker thread)."""

        if self.index.info.kind != "colqwen":
            raise HTTPError(409, "this table holds Nomic (single-vector) embeddings: one vector per page, so "
                                 "there is no per-patch match to show; heatmaps need a ColNomic table")
        row = self.row(row_id)
        try:
            lay = hm.layout(self.lm.processor, row["width"], row["height"])
            maps = hm.similarity_maps(qemb, self.index.row_embedding(row_id), lay)
            grid = hm.combine(maps, query_token)
        except hm.HeatmapUnavailable as e:
            raise HTTPError(409, str(e)) from None
        except IndexError as e:
            raise HTTPError(400, str(e)) from None
        info = {"id": row_id, "grid": grid.tolist(), "grid_size": list(lay.grid), "size": [lay.size[1], lay.size[0]],
                "query_tokens": int(maps.shape[0]), "query_token": query_token}
        if mode == "json":
            return None, info
        h, w = lay.size
        if mode == "heat":
            img = hm.colourise(grid, (w, h))
        else:
            try:
                page = load_page(row, (w, h))
            except PageUnavailable as e:
                raise HTTPError(404, str(e)) from None
            img = hm.overlay(page, grid)
        buf = io.BytesIO()
        img.save(buf, "PNG")
        return buf.getvalue(), info

    def stats(self) -> dict:
        info = self.index.info
        return {"rows": self.index.table.count(), "store": str(self.index.store.path), "table": self.index.table.name,
                "model_id": info.model_id, "revision": info.revision, "kind": info.kind, "dim": info.dim,
                "fingerprint": info.fingerprint, "storage_dtype": info.storage_dtype,
                "dtype": self.lm.backend.dtype_name, "device": self.lm.backend.name,
                "uptime_seconds": round(time.time() - self.started, 3),
                "counters": {k: round(v, 4) if isinstance(v, float) else v for k, v in self.counters.items()},
                "exact_batching": self.config.exact_batching,
                "warnings": list(self.index.warnings)}


__all__ = ["ServeConfig", "SearchService", "HTTPError", "decode_image_bytes", "b64_image", "hit_json", "WEB_DIR"]
