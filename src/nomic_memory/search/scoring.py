"""Exact scoring: Arrow batches of stored embeddings -> scores -> a running top-k per query.

Every score is computed in float32 whatever the storage dtype:

* ColQwen (late interaction): ``score(q, d) = sum_i max_j <q_i, d_j>`` (MaxSim), exactly
  colpali-engine's ``score_multi_vector``;
* BiQwen: the dot product of the pooled vectors (``score_single_vector``).

The scan never loops over documents in Python.  Each Arrow batch's ``list<fixed_size_list>``
column is viewed as one flat ``(vectors, dim)`` array plus row offsets (zero-copy), cut into tiles
of whole documents, and each tile costs one matmul of *all* query tokens against the tile's
vectors (``(T, dim) @ (dim, n)``, float32), one segment-max per document (a strided ``amax`` when
the tile's documents have equal lengths, a ``scatter_reduce`` otherwise) and one sum per query.
A running top-k per query keeps memory bounded, so stores larger than memory work, and a batch of
queries shares one scan.
"""

from __future__ import annotations

import contextlib
import threading
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import pyarrow as pa

from nomic_memory.errors import UsageError
from nomic_memory.store.table import TableInfo
from nomic_memory.threads import CountedSetting

# The row columns a hit reports (in a Hit's field order: path, root, page).
META_COLUMNS = ["root", "path", "page"]


# ------------------------------------------------------------------ Arrow -> numpy (zero-copy)
def _values_view(arr: pa.Array) -> np.ndarray:
    """A flat numpy view of a primitive float array (a copy only if it has nulls)."""
    if arr.null_count:
        return np.asarray(arr.fill_null(0).to_numpy(zero_copy_only=False))
    return arr.to_numpy(zero_copy_only=True)


def fixed_size_list_matrix(arr: pa.Array) -> np.ndarray:
    """``fixed_size_list<float, dim>`` (n rows) -> ``(n, dim)`` numpy view."""
    if isinstance(arr, pa.ChunkedArray):
        arr = arr.combine_chunks()
    dim = arr.type.list_size
    flat = _values_view(arr.values)  # .values ignores the slice offset
    start = arr.offset * dim
    return flat[start : start + len(arr) * dim].reshape(len(arr), dim)


def multivector_matrix(arr: pa.Array) -> tuple[np.ndarray, np.ndarray]:
    """``list<fixed_size_list<float, dim>>`` (n rows) -> ``((total, dim) view, (n+1,) int64 offsets)``."""
    if isinstance(arr, pa.ChunkedArray):
        arr = arr.combine_chunks()
    offsets = arr.offsets.to_numpy().astype(np.int64)  # honours the slice offset
    inner = arr.values  # every row's vectors, ignoring the slice
    vecs = fixed_size_list_matrix(inner)
    lo, hi = int(offsets[0]), int(offsets[-1])
    return vecs[lo:hi], offsets - lo


# ------------------------------------------------------------------ the scoring engine
_WIDEN_ELEMENTS = 32_768  # torch's grain for a parallel copy: slices this size run on one thread


class Scorer:
    """Scores a fixed batch of queries against chunks of stored embeddings.

    ``queries``: one float array per query, ``(tokens, dim)`` for ColQwen, ``(dim,)`` for BiQwen.
    Buffers are allocated once and reused: a fresh multi-MB tensor per tile costs more in page
    faults than the fp16 -> fp32 conversion itself.
    """

    def __init__(
        self,
        queries: Sequence[np.ndarray],
        kind: str,
        dim: int,
        *,
        device: str = "cpu",
        tile_vectors: int | None = None,
    ):
        import torch

        self.torch = torch
        self.kind = kind
        self.dim = dim
        self.device = torch.device(device)
        qs = [np.asarray(q, dtype=np.float32) for q in queries]
        if not qs:
            raise UsageError("no queries")
        if kind == "colqwen":
            qs = [q.reshape(-1, dim) for q in qs]
            lens = [q.shape[0] for q in qs]
            if min(lens) == 0:
                raise UsageError("a query has no vectors")
            self.qidx = torch.repeat_interleave(torch.arange(len(qs)), torch.tensor(lens)).to(self.device)
        else:
            qs = [q.reshape(dim) for q in qs]
        self.nq = len(qs)
        self.Q = torch.from_numpy(np.ascontiguousarray(np.stack(qs) if kind != "colqwen" else np.concatenate(qs))).to(
            self.device
        )
        self.T = self.Q.shape[0]
        if tile_vectors is None:
            # S = Q @ X.T is (T, n): keep it and the float32 tile cache-sized for short queries,
            # large enough that the matmul dominates for long query batches.
            # (measured on one core: 8192 for 20-token queries, 2048 for 2000 query tokens)
            budget = 1 << 24 if self.device.type == "cuda" else 1 << 21
            tile_vectors = int(
                min(max(budget // max(self.T, 1), 2048), 8192 if self.device.type != "cuda" else 1 << 20)
            )
        self.tile_vectors = max(1, int(tile_vectors))
        self._buf = None
        self._res = None

    def _buffers(self, n: int):
        torch = self.torch
        buf = self._buf
        if buf is None or buf.shape[0] < n:
            buf = self._buf = torch.empty(
                (max(n, self.tile_vectors), self.dim), dtype=torch.float32, device=self.device
            )
        need = self.T * buf.shape[0]
        if self._res is None or self._res.numel() < need:
            self._res = torch.empty(need, dtype=torch.float32, device=self.device)
        return buf, self._res

    def borrow_buffers(self, other: Scorer) -> None:
        """Use ``other``'s buffers (same thread, one scorer at a time): a re-rank scores each
        query's candidates with its own scorer, and several queries need not hold a tile each."""
        if other.device == self.device and other.dim == self.dim:
            self._buf, self._res = other._buf, other._res

    def _load(self, x: np.ndarray):
        """A float32 torch view/copy of ``x`` (n, dim) on the scoring device."""
        torch = self.torch
        if x.dtype == np.float32 and self.device.type == "cpu":
            with warnings.catch_warnings():  # read-only Arrow memory: only ever read
                warnings.simplefilter("ignore", UserWarning)
                return torch.from_numpy(np.ascontiguousarray(x))  # zero-copy
        buf, _ = self._buffers(x.shape[0])
        return self._widen(x, buf[: x.shape[0]])

    def _gather(self, docs: Sequence[np.ndarray], n: int):
        """The float32 tile of ``docs`` (each ``(n_i, dim)``, ``n`` vectors in all), each copied
        (and widened) straight into the tile buffer."""
        buf, _ = self._buffers(n)
        pos = 0
        for d in docs:
            self._widen(d, buf[pos : pos + len(d)])
            pos += len(d)
        return buf[:n]

    def _widen(self, x: np.ndarray, out):
        """``x`` copied into ``out`` (float32, same shape, on the scoring device)."""
        torch = self.torch
        with warnings.catch_warnings():  # read-only Arrow or memory-mapped data: only ever read
            warnings.simplefilter("ignore", UserWarning)
            src = torch.from_numpy(np.ascontiguousarray(x))
        if self.device.type == "cpu" and torch.get_num_threads() == 1:
            # a scan's or a re-rank's single-threaded torch: one call (200 pages: 22 ms against 26 in slices)
            out.copy_(src)
        elif self.device.type == "cpu":
            # Widened in slices below torch's parallel grain (32,768 elements): one thread each,
            # vectorised.  On a tile of 8,192 x 128 float16 (2 cores, other work running) the
            # single-threaded copy took 0.3-0.4 ms, numpy's 1.5-3 ms, and torch's own two-thread
            # copy 8 ms (125 ms in slices just above the grain): its threads wait for each other.
            rows = max(1, _WIDEN_ELEMENTS // max(1, self.dim))
            for r in range(0, len(x), rows):
                out[r : r + rows].copy_(src[r : r + rows])
        else:
            out.copy_(src.to(self.device, non_blocking=False))
        return out

    def score(self, vectors: np.ndarray, offsets: np.ndarray | None = None) -> np.ndarray:
        """Scores ``(n_queries, n_docs)`` float32 of one chunk.

        ColQwen: ``vectors`` (total, dim) with ``offsets`` (n_docs+1,); BiQwen: ``vectors`` (n_docs, dim).
        """
        if self.kind != "colqwen":
            n = vectors.shape[0]
            out = np.empty((self.nq, n), dtype=np.float32)
            step = self.tile_vectors
            for a in range(0, n, step):
                x = self._load(vectors[a : a + step])
                out[:, a : a + x.shape[0]] = (self.Q @ x.T).cpu().numpy()
            return out
        assert offsets is not None
        return self._late_interaction(offsets, lambda r0, r1, a, b: self._load(vectors[a:b]))

    def score_documents(self, docs: Sequence[np.ndarray]) -> np.ndarray:
        """Scores ``(n_queries, len(docs))`` of documents given one array each (ColQwen ``(n_i,
        dim)``, BiQwen ``(dim,)`` or ``(1, dim)``): views of memory-mapped or Arrow memory, each
        widened straight into the scoring tile, so the batch is never copied first.  The same
        scores as :meth:`score` of them concatenated."""
        if self.kind != "colqwen":
            return self.score(np.stack([np.asarray(d).reshape(self.dim) for d in docs]))
        offsets = np.zeros(len(docs) + 1, np.int64)
        np.cumsum([len(d) for d in docs], out=offsets[1:])
        return self._late_interaction(offsets, lambda r0, r1, a, b: self._gather(docs[r0:r1], b - a))

    def _late_interaction(self, offsets: np.ndarray, tile) -> np.ndarray:
        """MaxSim scores ``(n_queries, n_docs)`` of the documents ``offsets`` delimits, whose
        vectors ``tile(r0, r1, a, b)`` gives as a float32 ``(b - a, dim)`` tensor (documents
        ``r0:r1``, vectors ``a:b``), a tile of whole documents at a time."""
        torch = self.torch
        n_docs = len(offsets) - 1
        out = torch.zeros((self.nq, n_docs), dtype=torch.float32, device=self.device)
        lens_all = np.diff(offsets)
        r0 = 0
        with torch.inference_mode():
            while r0 < n_docs:
                # the most whole documents that fit the tile (at least one)
                r1 = int(np.searchsorted(offsets, offsets[r0] + self.tile_vectors, side="right")) - 1
                r1 = min(max(r1, r0 + 1), n_docs)
                a, b = int(offsets[r0]), int(offsets[r1])
                nd = r1 - r0
                lens = lens_all[r0:r1]
                if b > a:
                    x = tile(r0, r1, a, b)
                    _, res = self._buffers(b - a)
                    s = res[: self.T * (b - a)].view(self.T, b - a)
                    torch.mm(self.Q, x.T, out=s)
                    L = int(lens[0])
                    if L > 0 and (lens == L).all():
                        m = s.view(self.T, nd, L).amax(dim=2)
                    elif self.device.type == "cpu":
                        # each document's best vector per query token; max is exact in any order,
                        # and numpy's segmented max is ~100x faster than torch's CPU scatter_reduce
                        starts = np.zeros(nd, np.int64)
                        np.cumsum(lens[:-1], out=starts[1:])
                        m = self._max_per_document(s, starts, lens)
                    else:
                        seg = torch.from_numpy(np.repeat(np.arange(nd), lens)).to(self.device)
                        m = torch.zeros((self.T, nd), dtype=torch.float32, device=self.device)
                        m.scatter_reduce_(1, seg.unsqueeze(0).expand(self.T, b - a), s, "amax", include_self=False)
                    # one summation order for every query-batch composition: a query scores
                    # the same alone or with others
                    out[:, r0:r1].index_add_(0, self.qidx, m)
                r0 = r1
        return out.cpu().numpy()

    def _max_per_document(self, s, starts: np.ndarray, lens: np.ndarray):
        """``(T, n_docs)``: the maximum of each document's columns of ``s`` (``(T, vectors)``, on
        the CPU); a document without vectors gets 0, as the scatter on other devices gives it."""
        torch = self.torch
        if (lens > 0).all():
            return torch.from_numpy(np.maximum.reduceat(s.numpy(), starts, axis=1))
        m = np.zeros((self.T, len(lens)), np.float32)
        some = lens > 0
        if some.any():
            m[:, some] = np.maximum.reduceat(s.numpy(), starts[some], axis=1)
        return torch.from_numpy(m)

    def score_batch(self, batch: pa.RecordBatch | pa.Table) -> np.ndarray:
        col = batch.column("embedding")
        if self.kind == "colqwen":
            v, o = multivector_matrix(col)
            return self.score(v, o)
        return self.score(fixed_size_list_matrix(col))


class TopK:
    """A running top-k per query over a stream of scored chunks (ties: earlier row first)."""

    def __init__(self, n_queries: int, k: int):
        self.k = k
        self.scores = [np.empty(0, np.float32) for _ in range(n_queries)]
        self.pos = [np.empty(0, np.int64) for _ in range(n_queries)]
        self.meta: dict[int, tuple] = {}

    def update(self, scores: np.ndarray, positions: np.ndarray, meta_of=None) -> None:
        """``scores`` (n_queries, n); ``positions`` (n,) row ids; ``meta_of(local_indices)`` ->
        metadata tuples for rows that enter a top-k."""
        n = scores.shape[1]
        if n == 0:
            return
        k = self.k
        if n > k:
            kth = np.partition(scores, n - k, axis=1)[:, n - k]
        else:
            kth = np.full(scores.shape[0], -np.inf, dtype=np.float32)
        wanted: set[int] = set()
        for qi in range(scores.shape[0]):
            sel = np.flatnonzero(scores[qi] >= kth[qi])
            s = np.concatenate([self.scores[qi], scores[qi, sel]])
            p = np.concatenate([self.pos[qi], positions[sel]])
            order = np.lexsort((p, -s.astype(np.float64)))[:k]
            self.scores[qi], self.pos[qi] = s[order], p[order]
            wanted.update(int(x) for x in self.pos[qi])
        if meta_of is not None:
            new = [int(x) for x in wanted if int(x) not in self.meta]
            if new:
                local = np.searchsorted(positions, new)
                for p_, m in zip(new, meta_of(local)):
                    self.meta[p_] = m
            self.meta = {p_: self.meta[p_] for p_ in wanted}

    def results(self) -> list[list[tuple[float, tuple | None]]]:
        """Per query, best first: ``(score, meta)`` with ``meta`` what ``meta_of`` gave (the
        ``(path, root, page)`` of the row for a scan with ``column_meta``)."""
        return [[(float(sc), self.meta.get(int(pp))) for sc, pp in zip(s, p)] for s, p in zip(self.scores, self.pos)]


def meta_getter(batch) -> Callable[[np.ndarray], list[tuple]]:
    """``local row indices -> [(path, root, page)]`` of ``batch`` (a table without ``page`` is page 0)."""

    def get(local: np.ndarray) -> list[tuple]:
        idx = pa.array(np.asarray(local, dtype=np.int64))
        roots = batch.column("root").take(idx).to_pylist()
        paths = batch.column("path").take(idx).to_pylist()
        pages = batch.column("page").take(idx).to_pylist() if "page" in batch.schema.names else [0] * len(roots)
        return [(p, r, int(pg or 0)) for r, p, pg in zip(roots, paths, pages)]

    return get


def default_workers() -> int:
    """Scan threads: torch's intra-op thread count (honours ``OMP_NUM_THREADS``/``set_num_threads``),
    as it was before any scan in progress set it to 1."""
    import torch

    return max(1, _SINGLE_THREADED.saved_or(torch.get_num_threads))


def _one_torch_thread() -> int:
    import torch

    saved = torch.get_num_threads()
    torch.set_num_threads(1)
    return saved


def _set_torch_threads(n: int) -> None:
    import torch

    torch.set_num_threads(n)


# CPU scans run torch single-threaded (their parallelism is across batches) and torch's thread
# count is one per process: concurrent scans (a server's threads) share one "set to 1" and the
# last to finish restores the count the first one found.
_SINGLE_THREADED = CountedSetting(_one_torch_thread, _set_torch_threads)
_torch_single_threaded = _SINGLE_THREADED.held


def exact_scan(
    ds,
    info: TableInfo,
    queries: Sequence[np.ndarray],
    k: int,
    *,
    batch_rows: int | None = None,
    tile_vectors: int | None = None,
    device: str = "cpu",
    column_meta: bool = True,
    filter: str | None = None,
    workers: int | None = None,
    limit: int | None = None,
    mask: np.ndarray | None = None,
) -> TopK:
    """Score every row of the Lance dataset ``ds`` against ``queries``; one streaming pass.

    Results do not depend on ``workers``, ``batch_rows`` or ``tile_vectors`` (see
    :func:`_scored_batches`).  ``filter`` (a Lance SQL predicate, checked by the caller) and
    ``limit`` (the first rows only) restrict the scan in Lance; ``mask`` (bool, by position in
    the scanned stream) keeps only the rows it marks, for a restriction Lance cannot express on
    ``ds`` itself (the pooled copy of a table filtered on the table's columns).  Positions in the
    result are positions in the scanned stream.
    """
    first = Scorer(queries, info.kind, info.dim, device=device, tile_vectors=tile_vectors)
    top = TopK(first.nq, k)
    cols = (META_COLUMNS if column_meta else []) + ["embedding"]
    if batch_rows is None:
        batch_rows = 32 if info.kind == "colqwen" else 8192
    batches = (
        b
        for b in ds.to_batches(columns=cols, batch_size=batch_rows, scan_in_order=True, filter=filter, limit=limit)
        if b.num_rows
    )
    base = 0
    with contextlib.closing(_scored_batches(batches, first, queries, info, workers)) as scored:
        for batch, scores in scored:
            n = batch.num_rows
            pos = np.arange(base, base + n, dtype=np.int64)
            base += n
            meta_of = meta_getter(batch) if column_meta else None
            if mask is not None:
                keep = np.flatnonzero(mask[pos])
                scores, pos = scores[:, keep], pos[keep]
                if meta_of is not None:
                    meta_of = _through(meta_of, keep)
            top.update(scores, pos, meta_of)
    return top


def _through(meta_of, keep: np.ndarray):
    """``meta_of`` for a batch's kept rows: local indices among the kept -> the batch's own."""
    return lambda local: meta_of(keep[np.asarray(local, dtype=np.int64)])


def _scored_batches(batches, first: Scorer, queries, info: TableInfo, workers: int | None):
    """``(batch, scores)`` for each batch, in scan order.

    On the CPU, ``workers`` threads (default: torch's thread count) each score whole Arrow batches
    with single-threaded torch ops, while Lance decodes ahead in its own threads.  Batch-level
    parallelism keeps every core busy with no barrier per tile: with intra-op threads, one
    descheduled thread (a busy, shared machine) stalls every matmul, which measured 4-18x slower
    here.  A GPU scores batch by batch (its own parallelism is inside each matmul).
    """
    from collections import deque
    from concurrent.futures import ThreadPoolExecutor

    if first.device.type != "cpu":
        for batch in batches:
            yield batch, first.score_batch(batch)
        return
    workers = default_workers() if workers is None else max(1, workers)
    local = threading.local()

    def work(batch):
        sc = getattr(local, "scorer", None)
        if sc is None:
            sc = local.scorer = Scorer(
                queries, info.kind, info.dim, device=str(first.device), tile_vectors=first.tile_vectors
            )
        return sc.score_batch(batch)

    with _torch_single_threaded():
        if workers == 1:
            for batch in batches:
                yield batch, first.score_batch(batch)
            return
        with ThreadPoolExecutor(workers, thread_name_prefix="nomic-memory-scan") as ex:
            pending: deque = deque()
            for batch in batches:
                pending.append((batch, ex.submit(work, batch)))
                while len(pending) > 2 * workers:
                    b, f = pending.popleft()
                    yield b, f.result()
            while pending:
                b, f = pending.popleft()
                yield b, f.result()


RERANK_CHUNK_ROWS = 64


def documents(table: pa.Table | pa.RecordBatch) -> list[np.ndarray]:
    """Each row's vectors of an Arrow ``embedding`` column as numpy views (``(n_i, dim)`` for
    ColQwen, ``(dim,)`` for BiQwen): the form :func:`score_rows` reads."""
    col = table.column("embedding")
    if isinstance(col, pa.ChunkedArray):
        col = col.combine_chunks()
    if pa.types.is_fixed_size_list(col.type):
        return list(fixed_size_list_matrix(col))
    v, o = multivector_matrix(col)
    return [v[o[i] : o[i + 1]] for i in range(len(o) - 1)]


def score_rows(
    read: Callable[[list[int]], list[np.ndarray]],
    info: TableInfo,
    queries: Sequence[np.ndarray],
    rows: Sequence[np.ndarray],
    *,
    device: str = "cpu",
    tile_vectors: int | None = None,
    workers: int | None = None,
    release: Callable[[list[int]], None] | None = None,
) -> list[np.ndarray]:
    """Exact scores of each query against its own rows (``rows[i]``: sorted, unique ids), whose
    vectors ``read(ids)`` gives, one array per id in ``ids``' order (views of a memory map, or
    :func:`documents` of Lance's ``take``); ``release(ids)``, if given, is called once a chunk's
    vectors are scored (:meth:`~nomic_memory.store.mapped.MappedVectors.release`).

    The rows' union is read in chunks of at most :data:`RERANK_CHUNK_ROWS`, which ``workers``
    threads each read and score (single-threaded torch, as in a scan): Lance's ``take`` of 200
    pages' vectors (38 MB) took 44 ms in one call, 20 ms as four calls of 50 rows and 15 ms
    with two threads (a warm 100,000-page store); through a memory map
    (:class:`~nomic_memory.store.mapped.MappedVectors`) the reading is ~2 ms and each document is
    widened straight into the scoring tile (:meth:`Scorer.score_documents`).  Scores do not
    depend on the chunking (a document's score is its own rows' maximum, see
    :func:`_scored_batches`).  A GPU scores chunk by chunk in the calling thread."""
    from concurrent.futures import ThreadPoolExecutor

    rows = [np.asarray(r, dtype=np.int64) for r in rows]
    union = np.unique(np.concatenate(rows)) if rows else np.zeros(0, np.int64)
    if len(union) == 0:
        return [np.zeros(0, np.float32) for _ in rows]
    cpu = str(device).split(":")[0] == "cpu"
    workers = (default_workers() if workers is None else max(1, workers)) if cpu else 1
    size = min(RERANK_CHUNK_ROWS, max(8, -(-len(union) // (2 * workers))))
    chunks = [union[i : i + size] for i in range(0, len(union), size)]
    local = threading.local()

    def scorer(qi: int) -> Scorer:
        sc = Scorer([queries[qi]], info.kind, info.dim, device=device, tile_vectors=tile_vectors)
        last = getattr(local, "last", None)
        if last is not None:
            sc.borrow_buffers(last)
        local.last = sc
        return sc

    def work(chunk: np.ndarray) -> list[tuple[int, np.ndarray]]:
        ids = chunk.tolist()
        docs = read(ids)
        out = []
        for qi, mine in enumerate(rows):
            inside = np.isin(chunk, mine, assume_unique=True)
            if inside.any():
                sub = docs if inside.all() else [d for d, keep in zip(docs, inside) if keep]
                out.append((qi, scorer(qi).score_documents(sub)[0]))
        if release is not None:
            release(ids)
        return out

    parts: list[list[np.ndarray]] = [[] for _ in rows]
    with contextlib.ExitStack() as stack:
        if cpu:
            stack.enter_context(_torch_single_threaded())
        if workers > 1 and len(chunks) > 1:
            ex = stack.enter_context(ThreadPoolExecutor(workers, thread_name_prefix="nomic-memory-rerank"))
            done = ex.map(work, chunks)
        else:
            done = map(work, chunks)
        for got in done:
            for qi, sc in got:
                parts[qi].append(sc)
    return [np.concatenate(p) if p else np.zeros(0, np.float32) for p in parts]


@dataclass(frozen=True)
class ScanOptions:
    """How a scan runs, never what it returns (see :func:`exact_scan`): the scoring device,
    Arrow batch size, tile width and CPU worker threads (None: the defaults)."""

    device: str = "cpu"
    batch_rows: int | None = None
    tile_vectors: int | None = None
    workers: int | None = None

    def scan(self, ds, info: TableInfo, queries: Sequence[np.ndarray], k: int, **kw) -> TopK:
        return exact_scan(
            ds,
            info,
            queries,
            k,
            batch_rows=kw.pop("batch_rows", self.batch_rows),
            tile_vectors=self.tile_vectors,
            device=self.device,
            workers=self.workers,
            **kw,
        )

    def scorer(self, queries: Sequence[np.ndarray], info: TableInfo) -> Scorer:
        return Scorer(queries, info.kind, info.dim, device=self.device, tile_vectors=self.tile_vectors)

    def score_batch(self, queries: Sequence[np.ndarray], info: TableInfo, batch: pa.RecordBatch) -> np.ndarray:
        """Scores of one batch of rows (a re-rank's candidates), with torch single-threaded on the
        CPU as in a scan: a tile's matmul took 0.5 ms on one thread against 7-8 ms on two while
        the other core was busy (the threads wait for each other at every parallel region)."""
        sc = self.scorer(queries, info)
        if sc.device.type != "cpu":
            return sc.score_batch(batch)
        with _torch_single_threaded():
            return sc.score_batch(batch)


__all__ = [
    "META_COLUMNS",
    "Scorer",
    "TopK",
    "ScanOptions",
    "exact_scan",
    "documents",
    "score_rows",
    "default_workers",
    "meta_getter",
    "multivector_matrix",
    "fixed_size_list_matrix",
]
