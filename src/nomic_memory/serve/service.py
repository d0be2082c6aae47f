"""The search service behind ``nomic-memory serve`` (the HTTP routes are in :mod:`.routes`).

The model is loaded once; requests are answered over HTTP (FastAPI on uvicorn):
* ``POST /search``: text and image queries -> the same hits, order and float32 scores as
  :meth:`nomic_memory.search.index.Index.search`;
* ``POST /embed``: embeddings in the request/response shape of vLLM's ``/pooling`` endpoint;
* ``GET /thumb/{id}``, ``GET|POST /heatmap/{id}``: a page's thumbnail, and the late-interaction map
  of which patches matched which query tokens (:mod:`nomic_memory.serve.heatmap`);
* ``GET /health``, ``GET /stats``, ``/openapi.json``, ``/docs``; the search page at ``/``.

**Micro-batching.**  Searches that arrive together share work: a single asyncio task takes the
first waiting request, collects whatever else arrives within ``batch_window_ms``, then runs ONE
embedding forward for all their texts (and one for their images) and ONE scan of the table per
distinct ``where`` filter, at the largest ``k`` asked, each request's hits cut to its own ``k``
(the scan's ranking does not depend on ``k`` or on which queries share it, so every request
gets exactly what it would alone).  The model runs on one dedicated thread (it is not thread-safe)
and never on the event loop, so a slow client or a long scan never stalls other connections.
**A bad request fails alone**: each request's texts are tokenised on their own first (a text
the tokenizer refuses, or one over ``max_query_tokens``, fails that request only), and if the
shared forward fails anyway, each request is embedded alone so only the failing one learns why.

**Safety.**  Files are served only by row id (a row of the store; never a client's path), and
only while their bytes match the stored content hash; bodies are capped in bytes, uploaded images
in pixels, text queries in tokens; page decodes run at most ``max_decodes`` at a time; every
error is a JSON ``{"error": ...}`` with a 4xx status (503 while the table is missing; a 500 says
"internal error" and logs the traceback server-side, never to the client).
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import hashlib
import io
import logging
import re
import threading
import time
from collections import OrderedDict
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from nomic_memory.errors import NomicMemoryError
from nomic_memory.ingest.images import ImageError, load_image
from nomic_memory.memory import trim_heap
from nomic_memory.search.liveindex import describe
from nomic_memory.serve import heatmap as hm
from nomic_memory.serve.availability import TableWatch
from nomic_memory.serve.config import HTTPError, ServeConfig
from nomic_memory.serve.thumbs import PageChanged, PageUnavailable, load_page

log = logging.getLogger("nomic_memory.serve")


WEB_DIR = Path(__file__).resolve().parent / "web"
ROW_ID = re.compile(r"^[0-9a-f]{16}$")


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
    try:
        return load_image(name, data=data, max_image_pixels=max_pixels)
    except ImageError as e:
        raise HTTPError(413 if "too large" in e.reason else 400, f"{name}: {e.reason}") from None


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
    return {"rank": h.rank, "score": h.score, "path": h.path, "root": h.root, "page": h.page, "id": h.id, "via": h.via}


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
        self.config = config or ServeConfig()
        self.lm = index.model  # load (and check against the table) now, not on the first request
        self.rows = LRU(4096)
        self.watch = TableWatch(index, self.config.refresh_seconds, on_reopen=self._forget_rows)
        self.model_thread = ThreadPoolExecutor(1, thread_name_prefix="nomic-memory-model")
        self.queue: asyncio.Queue | None = None
        self._task: asyncio.Task | None = None
        self._decodes: asyncio.Semaphore | None = None
        self._decoding = 0
        self.query_cache = LRU(256)
        self.started = time.time()
        self._refreshed = time.monotonic()
        self.on_stop: list = []  # callables run (in a thread) when the service stops, e.g. a watcher's stop
        self.counters = {
            "requests": 0,
            "queries": 0,
            "batches": 0,
            "forwards": 0,
            "scans": 0,
            "max_batch_requests": 0,
            "max_batch_queries": 0,
            "refused_queries": 0,
            "decodes": 0,
            "max_concurrent_decodes": 0,
            "embed_seconds": 0.0,
            "scan_seconds": 0.0,
        }

    @property
    def index(self):
        """The served index (a new one after its table was dropped and came back)."""
        return self.watch.index

    def available(self, force: bool = False):
        """The index if its table can be served now, else :class:`HTTPError` 503 with the reason."""
        return self.watch.current(force)

    def _forget_rows(self) -> None:
        with self.rows.lock:
            self.rows.clear()

    # ---- lifecycle (inside the event loop)
    def start(self) -> None:
        self.queue = asyncio.Queue()
        self._decodes = asyncio.Semaphore(max(1, self.config.max_decodes))
        self._task = asyncio.get_running_loop().create_task(self._batcher(), name="nomic-memory-batcher")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
        for fn in self.on_stop:
            await asyncio.to_thread(fn)
        self.model_thread.shutdown(wait=True)

    async def run_model(self, fn, *args):
        """Run ``fn`` on the model thread (never on the event loop, never two at once)."""
        return await asyncio.get_running_loop().run_in_executor(self.model_thread, fn, *args)

    async def decode(self, fn, *args):
        """Run a page decode ``fn`` on a worker thread, at most ``config.max_decodes`` at once (a
        large page costs hundreds of MB while it is decoded: concurrent requests wait their turn)."""
        assert self._decodes is not None, "the service is not started"
        async with self._decodes:
            self._decoding += 1
            c = self.counters
            c["decodes"] += 1
            c["max_concurrent_decodes"] = max(c["max_concurrent_decodes"], self._decoding)
            try:
                return await asyncio.to_thread(fn, *args)
            finally:
                self._decoding -= 1

    # ---- search
    async def search(self, queries: list, k: int, where: str | None) -> list[list]:
        fut = asyncio.get_running_loop().create_future()
        assert self.queue is not None, "the service is not started"
        await self.queue.put(_Job(queries, k, where, fut))
        return await fut

    async def _collect(self) -> list[_Job]:
        """The next batch: the first waiting job and whatever arrives within the window."""
        q = self.queue
        assert q is not None
        loop = asyncio.get_running_loop()
        jobs = [await q.get()]
        n = len(jobs[0].queries)
        deadline = loop.time() + self.config.batch_window_ms / 1000
        while n < self.config.max_batch_queries:
            timeout = deadline - loop.time()
            try:
                job = q.get_nowait() if timeout <= 0 else await asyncio.wait_for(q.get(), timeout)
            except (TimeoutError, asyncio.QueueEmpty):
                break
            jobs.append(job)
            n += len(job.queries)
        return [j for j in jobs if not j.future.cancelled()]  # clients that went away

    async def _batcher(self) -> None:
        while True:
            jobs = await self._collect()
            if not jobs:
                continue
            try:
                results = await self.run_model(self._run_batch, jobs)
            except Exception as e:  # the table is gone, or a bug: every request of the batch learns why
                if not isinstance(e, HTTPError):
                    log.exception("search batch failed")
                results = [e] * len(jobs)
            for j, r in zip(jobs, results):
                if j.future.done():
                    continue
                if isinstance(r, BaseException):
                    j.future.set_exception(r)
                else:
                    j.future.set_result(r)

    # ---- query embedding (on the model thread)
    def _template(self, texts: list[str]) -> list[str]:
        t = self.index.template
        if not t:
            return texts
        return [t.format(x) if "{}" in t else t + x for x in texts]

    def _token_ids(self, texts: list[str]) -> list[list[int]]:
        """Each text query's token ids as the model sees them (template and query prompt included)."""
        b = self.lm.processor.process_queries(self._template(texts))
        return [row[mask.bool()].tolist() for row, mask in zip(b["input_ids"], b["attention_mask"])]

    def _admit(self, queries: list) -> dict[int, int]:
        """Token count of each text query (by position), tokenised on their own: a text the tokenizer
        refuses or one over ``max_query_tokens`` raises :class:`HTTPError` 422 for its request."""
        cap = self.config.max_query_tokens
        lengths: dict[int, int] = {}
        texts = [(i, q) for i, q in enumerate(queries) if isinstance(q, str)]
        if not texts:
            return lengths
        try:
            ids = self._token_ids([q for _, q in texts])
        except Exception as e:  # noqa: BLE001 - the tokenizer's own reasons (ValueError, TypeError, ...)
            self.counters["refused_queries"] += 1
            raise HTTPError(422, f"a text query cannot be tokenised: {str(e).splitlines()[0][:200]}") from None
        for (i, _), row in zip(texts, ids):
            if len(row) > cap:
                self.counters["refused_queries"] += 1
                raise HTTPError(
                    422,
                    f"queries[{i}] is {len(row)} tokens long with the query prompt; text "
                    f"queries are limited to {cap} tokens (--max-query-tokens)",
                )
            lengths[i] = len(row)
        return lengths

    def _embed(self, queries: list, lengths: dict[int, int] | None = None) -> list[np.ndarray]:
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
        exact = self.config.exact_batching
        if exact and lengths is None:
            lengths = self._admit(queries)
        groups: dict = {}
        for i, q in enumerate(queries):
            if isinstance(q, str):
                groups.setdefault(("text", lengths[i] if exact and lengths else 0), []).append(i)
            else:
                groups.setdefault(("image", q.size if exact else 0), []).append(i)
        t0 = time.perf_counter()
        for (kind, _), members in groups.items():
            items = [queries[i] for i in members]
            if kind == "text":
                embs = [
                    e.float().numpy()
                    for e in embed_queries(self.lm, items, batch_size=len(items), template=self.index.template)
                ]
            else:
                embs = embed_inputs(self.lm, items, batch_size=len(items))
            for i, e in zip(members, embs):
                out[i] = np.asarray(e, dtype=np.float32)
            self.counters["forwards"] += 1
        self.counters["embed_seconds"] += time.perf_counter() - t0
        return out

    def embed_checked(self, queries: list) -> list[np.ndarray]:
        """Admit (:meth:`_admit`) then embed ``queries`` (on the model thread)."""
        return self._embed(queries, self._admit(queries))

    async def embed(self, queries: list) -> list[np.ndarray]:
        """Embeddings of texts (as queries) and images (as pages), each text admitted first."""
        return await self.run_model(self.embed_checked, queries)

    def _embed_jobs(self, jobs: list[_Job]) -> tuple[list, list]:
        """``(embeddings per job, error per job)``: admitted alone, embedded together; if the shared
        forward fails, each job is embedded alone, so only a failing request fails."""
        errors: list = [None] * len(jobs)
        lengths: list = [None] * len(jobs)
        for ji, j in enumerate(jobs):
            try:
                lengths[ji] = self._admit(j.queries)
            except HTTPError as e:
                errors[ji] = e
        live = [ji for ji in range(len(jobs)) if errors[ji] is None]
        flat: list = []
        flat_lengths: dict[int, int] = {}
        for ji in live:
            flat_lengths.update({len(flat) + i: n for i, n in lengths[ji].items()})
            flat.extend(jobs[ji].queries)
        per_job: list = [None] * len(jobs)
        try:
            embs = self._embed(flat, flat_lengths) if flat else []
        except Exception:  # noqa: BLE001 - whose fault? embed each request alone to find out
            log.warning("a batch of %d requests failed to embed; embedding each alone", len(live))
            for ji in live:
                try:
                    per_job[ji] = self._embed(jobs[ji].queries, lengths[ji])
                except Exception as e:  # noqa: BLE001 - this request's queries cannot be embedded
                    log.exception("a search request failed to embed")
                    errors[ji] = HTTPError(422, f"the query cannot be embedded: {str(e).splitlines()[0][:200]}")
            return per_job, errors
        pos = 0
        for ji in live:
            n = len(jobs[ji].queries)
            per_job[ji] = embs[pos : pos + n]
            pos += n
        return per_job, errors

    def _refresh(self, index) -> None:
        """A resident server must see what `embed` runs commit to the store meanwhile: at most every
        ``refresh_seconds``, move the table to its latest version (one manifest read)."""
        now = time.monotonic()
        if now - self._refreshed < self.config.refresh_seconds:
            return
        self._refreshed = now
        table = index.table
        before = table.version()
        table.refresh()
        if table.version() != before:
            self._forget_rows()  # row metadata may have changed with the rows

    def table_changed(self) -> None:
        """Rows were just committed (by a watcher in this process): the next search refreshes first."""
        self._refreshed = float("-inf")

    def _run_batch(self, jobs: list[_Job]) -> list:
        """Embed every job's queries at once, then one scan per distinct filter; a job that fails
        gets its own error in its place of the result list."""
        index = self.available()
        self._refresh(index)
        per_job, results = self._embed_jobs(jobs)
        live = [ji for ji in range(len(jobs)) if results[ji] is None]
        c = self.counters
        c["batches"] += 1
        c["requests"] += len(jobs)
        c["queries"] += sum(len(j.queries) for j in jobs)
        c["max_batch_requests"] = max(c["max_batch_requests"], len(jobs))
        c["max_batch_queries"] = max(c["max_batch_queries"], sum(len(j.queries) for j in jobs))
        groups: dict[str | None, list[int]] = {}
        for ji in live:
            groups.setdefault(jobs[ji].where, []).append(ji)
        for where, members in groups.items():
            out = self._scan(index, [jobs[ji] for ji in members], [per_job[ji] for ji in members], where)
            for ji, r in zip(members, out):
                results[ji] = r
        # A scan's float32 tiles and score buffers are freed in the scan threads' malloc arenas;
        # hand them back to the OS after each batch, or a resident server's RSS creeps up with
        # fragmentation over hours (a 10-minute soak grew 6 % without this).
        trim_heap()
        return results

    def _scan(self, index, jobs: list[_Job], embs: list[list], where: str | None) -> list:
        """One scan for ``jobs`` sharing a filter: each job's hits cut to its own k (or the error)."""
        k = max(j.k for j in jobs)
        t0 = time.perf_counter()
        try:
            hits = index.search_embeddings([e for je in embs for e in je], k, where=where)
        except NomicMemoryError as e:
            return [HTTPError(400, str(e))] * len(jobs)
        except Exception as e:  # Lance's parse/planning errors for a bad filter, or the table went away
            self.available(force=True)  # 503 if the table is gone
            if not where:
                raise
            return [HTTPError(400, f"bad filter {where!r}: {str(e).splitlines()[0][:300]}")] * len(jobs)
        self.counters["scans"] += 1
        self.counters["scan_seconds"] += time.perf_counter() - t0
        out, pos = [], 0
        for j in jobs:
            out.append([hs[: j.k] for hs in hits[pos : pos + len(j.queries)]])
            pos += len(j.queries)
        return out

    # ---- rows, query embeddings, heatmaps
    def row(self, row_id: str) -> dict:
        """The row with this id (its metadata), or :class:`HTTPError` 404 / 503."""
        if not ROW_ID.match(row_id):
            raise HTTPError(404, f"no row {row_id!r} (ids are 16 hex digits, as /search returns them)")
        index = self.available()
        try:
            r = self.rows.get_or(row_id, lambda: index.row(row_id))
        except Exception:
            self.available(force=True)  # 503 if the table is gone
            raise
        if r is None:
            with self.rows.lock:
                self.rows.pop(row_id, None)
            raise HTTPError(404, f"no row {row_id!r} in table {index.table.name!r}")
        return r

    async def query_embedding(self, query) -> np.ndarray:
        """One query's embedding (cached by text / image bytes), computed on the model thread."""
        key: tuple
        if isinstance(query, str):
            key = ("text", query)
        else:
            key = ("image", hashlib.sha256(query.tobytes()).hexdigest(), query.size)
        with self.query_cache.lock:
            hit = self.query_cache.get(key)
        if hit is not None:
            return hit
        emb = (await self.embed([query]))[0]
        self.query_cache.get_or(key, lambda: emb)
        return emb

    def query_tokens(self, text: str) -> tuple[list[str], list[bool]]:
        """The query's tokens, one per query vector (what the per-token selector shows), and which
        of them are special tokens (the query prompt's padding, ``<|endoftext|>``)."""
        self._admit([text])
        ids = self._token_ids([text])[0]
        tok = self.lm.processor.tokenizer
        special = set(tok.all_special_ids)
        texts = [tok.convert_tokens_to_string([t]) for t in tok.convert_ids_to_tokens(ids)]
        return texts, [i in special for i in ids]

    def heatmap(self, row_id: str, qemb: np.ndarray, query_token: int | None, mode: str):
        """``(png bytes | None, json)`` of one row's heatmap (runs on a worker thread)."""
        index = self.available()
        if index.info.kind != "colqwen":
            raise HTTPError(
                409,
                "this table holds Nomic (single-vector) embeddings: one vector per page, so "
                "there is no per-patch match to show; heatmaps need a ColNomic table",
            )
        row = self.row(row_id)
        try:
            lay = hm.layout(self.lm.processor, row["width"], row["height"])
            maps = hm.similarity_maps(qemb, index.row_embedding(row_id), lay)
            grid = hm.combine(maps, query_token)
        except hm.HeatmapUnavailable as e:
            raise HTTPError(409, str(e)) from None
        except IndexError as e:
            raise HTTPError(400, str(e)) from None
        info = {
            "id": row_id,
            "grid": grid.tolist(),
            "grid_size": list(lay.grid),
            "size": [lay.size[1], lay.size[0]],
            "query_tokens": int(maps.shape[0]),
            "query_token": query_token,
        }
        if mode == "json":
            return None, info
        h, w = lay.size
        img = hm.colourise(grid, (w, h)) if mode == "heat" else hm.overlay(page_or_error(row, (w, h)), grid)
        buf = io.BytesIO()
        img.save(buf, "PNG")
        return buf.getvalue(), info

    def stats(self) -> dict:
        index, reason = self.index, self.watch.reason
        info = index.info
        try:
            rows = index.table.count() if reason is None else None
        except Exception:  # noqa: BLE001 - the table went away since the last look
            rows = None
        return {
            "rows": rows,
            "available": reason is None,
            "reason": reason,
            "store": str(index.store.path),
            "table": index.table.name,
            "model_id": info.model_id,
            "revision": info.revision,
            "kind": info.kind,
            "dim": info.dim,
            "fingerprint": info.fingerprint,
            "storage_dtype": info.storage_dtype,
            "dtype": self.lm.backend.dtype_name,
            "device": self.lm.backend.name,
            "uptime_seconds": round(time.time() - self.started, 3),
            "counters": {k: round(v, 4) if isinstance(v, float) else v for k, v in self.counters.items()},
            "exact_batching": self.config.exact_batching,
            "max_query_tokens": self.config.max_query_tokens,
            "index": _index_stats(index) if reason is None else None,
            "warnings": list(index.warnings),
        }


@contextmanager
def page_errors(row: dict) -> Iterator[None]:
    """Reading the row's page inside, its failures become HTTP errors: 409 when the file no longer
    holds the bytes that were embedded, 404 when it cannot be read, 503 when decoding it runs out
    of memory."""
    try:
        yield
    except PageChanged as e:
        raise HTTPError(409, str(e)) from None
    except PageUnavailable as e:
        raise HTTPError(404, str(e)) from None
    except MemoryError:
        raise HTTPError(503, f"{row['path']}: out of memory while decoding the page; try again later") from None


def page_or_error(row: dict, size: tuple[int, int] | None = None, **kw):
    """The row's page (:func:`.thumbs.load_page`), its failures as HTTP errors (:func:`page_errors`)."""
    with page_errors(row):
        return load_page(row, size, **kw)


def _index_stats(index) -> dict | None:
    """The search index's state for ``/stats`` (None if it cannot be read right now)."""
    try:
        return {**describe(index.store, index.table), "used": index.uses_index(), "last_search": index.last_via}
    except Exception:  # noqa: BLE001 - /stats must answer while the table changes underneath
        return None


__all__ = [
    "ServeConfig",
    "SearchService",
    "HTTPError",
    "decode_image_bytes",
    "b64_image",
    "hit_json",
    "WEB_DIR",
    "page_errors",
    "page_or_error",
]
