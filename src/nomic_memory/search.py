"""Retrieval: search a store by text or by image.

Exact search streams the table from disk and scores every stored image, in float32 whatever the
storage dtype:

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

Approximate search (``--approx``) scores a compact copy of the table and re-ranks the best
candidates exactly, so the scores it returns are exact and only the candidate set is approximate:

* ``pooled`` (default, ColQwen): every document's vectors are clustered (k-means seeded with
  consecutive groups) into ``n / pool_factor`` normalised centroids, stored as a side dataset under
  ``<store>/_nomic_memory_approx/``; a search scans that ``pool_factor`` times smaller copy with
  the same engine and re-ranks the top ``rerank`` documents;
* ``lance``: LanceDB's own IVF_PQ index on the embedding column (a multivector index with the
  cosine metric for ColQwen), whose candidates are re-ranked the same way.

Queries are embedded with the model the table records (``TableInfo``: model id, revision, seed);
a model whose revision or projection fingerprint differs from the table's is refused, because its
scores would be silently meaningless, unless ``allow_mismatch`` is set.
"""

from __future__ import annotations

import json
import logging
import os
import time
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np
import pyarrow as pa

from .store import EmbeddingTable, Store, StoreError, TableInfo, default_store_path

log = logging.getLogger("nomic_memory")

APPROX_DIR = "_nomic_memory_approx"
APPROX_META = b"nomic_memory_approx"
APPROX_METHODS = ("pooled", "lance")
META_COLUMNS = ["root", "path", "page"]


from .errors import ModelMismatchError, SearchError  # noqa: E402  (re-exported)


@dataclass(frozen=True)
class Hit:
    rank: int
    score: float
    path: str  # relative to root
    root: str  # the directory that was embedded
    page: int = 0

    @property
    def file(self) -> str:
        return os.path.join(self.root, self.path)

    @property
    def id(self) -> str:  # serve stand-in for helper `search`'s Hit.id
        return row_id(self.root, self.path, self.page)

    def to_dict(self) -> dict:
        return {**asdict(self), "file": self.file, "id": self.id}


def row_id(root: str, path: str, page: int = 0) -> str:
    """serve stand-in (helper `search` owns the real one): a row's stable id."""
    import hashlib

    return hashlib.sha256(f"{root}\0{path}\0{int(page or 0)}".encode()).hexdigest()[:16]


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
    return flat[start:start + len(arr) * dim].reshape(len(arr), dim)


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
class Scorer:
    """Scores a fixed batch of queries against chunks of stored embeddings.

    ``queries``: one float array per query, ``(tokens, dim)`` for ColQwen, ``(dim,)`` for BiQwen.
    Buffers are allocated once and reused: a fresh multi-MB tensor per tile costs more in page
    faults than the fp16 -> fp32 conversion itself.
    """

    def __init__(self, queries: Sequence[np.ndarray], kind: str, dim: int, *, device: str = "cpu",
                 tile_vectors: int | None = None):
        import torch

        self.torch = torch
        self.kind = kind
        self.dim = dim
        self.device = torch.device(device)
        qs = [np.asarray(q, dtype=np.float32) for q in queries]
        if not qs:
            raise ValueError("no queries")
        if kind == "colqwen":
            qs = [q.reshape(-1, dim) for q in qs]
            lens = [q.shape[0] for q in qs]
            if min(lens) == 0:
                raise ValueError("a query has no vectors")
            self.qidx = torch.repeat_interleave(torch.arange(len(qs)), torch.tensor(lens)).to(self.device)
        else:
            qs = [q.reshape(dim) for q in qs]
        self.nq = len(qs)
        self.Q = torch.from_numpy(np.ascontiguousarray(np.stack(qs) if kind != "colqwen" else np.concatenate(qs))).to(self.device)
        self.T = self.Q.shape[0]
        if tile_vectors is None:
            # S = Q @ X.T is (T, n): keep it and the float32 tile cache-sized for short queries,
            # large enough that the matmul dominates for long query batches.
            # (measured on one core: 8192 for 20-token queries, 2048 for 2000 query tokens)
            budget = 1 << 24 if self.device.type == "cuda" else 1 << 21
            tile_vectors = int(min(max(budget // max(self.T, 1), 2048), 8192 if self.device.type != "cuda" else 1 << 20))
        self.tile_vectors = max(1, int(tile_vectors))
        self._buf = None
        self._res = None

    def _buffers(self, n: int):
        torch = self.torch
        if self._buf is None or self._buf.shape[0] < n:
            self._buf = torch.empty((max(n, self.tile_vectors), self.dim), dtype=torch.float32, device=self.device)
            self._res = torch.empty(self.T * self._buf.shape[0], dtype=torch.float32, device=self.device)
        return self._buf, self._res

    def _load(self, x: np.ndarray):
        """A float32 torch view/copy of ``x`` (n, dim) on the scoring device."""
        torch = self.torch
        n = x.shape[0]
        with warnings.catch_warnings():  # read-only Arrow memory: only ever read
            warnings.simplefilter("ignore", UserWarning)
            src = torch.from_numpy(np.ascontiguousarray(x))
        if x.dtype == np.float32 and self.device.type == "cpu":
            return src  # zero-copy
        buf, _ = self._buffers(n)
        out = buf[:n]
        if self.device.type == "cpu":
            out.copy_(src)
        else:
            out.copy_(src.to(self.device, non_blocking=False))
        return out

    def score(self, vectors: np.ndarray, offsets: np.ndarray | None = None) -> np.ndarray:
        """Scores ``(n_queries, n_docs)`` float32 of one chunk.

        ColQwen: ``vectors`` (total, dim) with ``offsets`` (n_docs+1,); BiQwen: ``vectors`` (n_docs, dim).
        """
        torch = self.torch
        if self.kind != "colqwen":
            n = vectors.shape[0]
            out = np.empty((self.nq, n), dtype=np.float32)
            step = self.tile_vectors
            for a in range(0, n, step):
                x = self._load(vectors[a:a + step])
                out[:, a:a + x.shape[0]] = (self.Q @ x.T).cpu().numpy()
            return out
        assert offsets is not None
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
                    x = self._load(vectors[a:b])
                    _, res = self._buffers(b - a)
                    s = res[: self.T * (b - a)].view(self.T, b - a)
                    torch.mm(self.Q, x.T, out=s)
                    L = int(lens[0])
                    if L > 0 and (lens == L).all():
                        m = s.view(self.T, nd, L).amax(dim=2)
                    else:
                        seg = torch.from_numpy(np.repeat(np.arange(nd), lens)).to(self.device)
                        m = torch.zeros((self.T, nd), dtype=torch.float32, device=self.device)
                        m.scatter_reduce_(1, seg.unsqueeze(0).expand(self.T, b - a), s, "amax", include_self=False)
                    # one summation order for every query-batch composition: a query scores
                    # the same alone or with others
                    out[:, r0:r1].index_add_(0, self.qidx, m)
                r0 = r1
        return out.cpu().numpy()

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

    def hits(self) -> list[list[Hit]]:
        out = []
        for s, p in zip(self.scores, self.pos):
            out.append([Hit(i + 1, float(sc), *self.meta[int(pp)]) for i, (sc, pp) in enumerate(zip(s, p))])
        return out


def _meta_getter(batch):
    def get(local: np.ndarray) -> list[tuple]:
        idx = pa.array(np.asarray(local, dtype=np.int64))
        roots = batch.column("root").take(idx).to_pylist()
        paths = batch.column("path").take(idx).to_pylist()
        pages = batch.column("page").take(idx).to_pylist() if "page" in batch.schema.names else [0] * len(roots)
        return [(p, r, int(pg or 0)) for r, p, pg in zip(roots, paths, pages)]

    return get


def default_workers() -> int:
    """Scan threads: torch's intra-op thread count (honours ``OMP_NUM_THREADS``/``set_num_threads``)."""
    import torch

    return max(1, torch.get_num_threads())


def exact_scan(ds, info: TableInfo, queries: Sequence[np.ndarray], k: int, *, batch_rows: int | None = None,
               tile_vectors: int | None = None, device: str = "cpu", column_meta: bool = True,
               filter: str | None = None, workers: int | None = None, limit: int | None = None) -> TopK:
    """Score every row of the Lance dataset ``ds`` against ``queries``; one streaming pass.

    On the CPU, ``workers`` threads (default: torch's thread count) each score whole Arrow batches
    with single-threaded torch ops, while Lance decodes ahead in its own threads.  Batch-level
    parallelism keeps every core busy with no barrier per tile: with intra-op threads, one
    descheduled thread (a busy, shared machine) stalls every matmul, which measured 4-18x slower
    here.  Results do not depend on ``workers``, ``batch_rows`` or ``tile_vectors``.
    ``filter`` (a Lance SQL predicate) and ``limit`` (the first rows only) restrict the scan.
    """
    import threading
    from collections import deque
    from concurrent.futures import ThreadPoolExecutor

    import torch

    first = Scorer(queries, info.kind, info.dim, device=device, tile_vectors=tile_vectors)
    top = TopK(first.nq, k)
    cols = (META_COLUMNS if column_meta else []) + ["embedding"]
    if batch_rows is None:
        batch_rows = 32 if info.kind == "colqwen" else 8192
    batches = ds.to_batches(columns=cols, batch_size=batch_rows, scan_in_order=True, filter=filter, limit=limit)
    workers = default_workers() if workers is None else max(1, workers)
    base = 0

    def consume(batch, scores) -> None:
        nonlocal base
        n = batch.num_rows
        top.update(scores, np.arange(base, base + n, dtype=np.int64), _meta_getter(batch) if column_meta else None)
        base += n

    if first.device.type != "cpu":
        for batch in batches:
            if batch.num_rows:
                consume(batch, first.score_batch(batch))
        return top

    local = threading.local()

    def work(batch):
        sc = getattr(local, "scorer", None)
        if sc is None:
            sc = local.scorer = Scorer(queries, info.kind, info.dim, device=device, tile_vectors=first.tile_vectors)
        return sc.score_batch(batch)

    prev = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        if workers == 1:
            for batch in batches:
                if batch.num_rows:
                    consume(batch, first.score_batch(batch))
            return top
        with ThreadPoolExecutor(workers, thread_name_prefix="nomic-memory-scan") as ex:
            pending: deque = deque()
            for batch in batches:
                if not batch.num_rows:
                    continue
                pending.append((batch, ex.submit(work, batch)))
                while len(pending) > 2 * workers:
                    b, f = pending.popleft()
                    consume(b, f.result())
            while pending:
                b, f = pending.popleft()
                consume(b, f.result())
    finally:
        torch.set_num_threads(prev)
    return top


# ------------------------------------------------------------------ model checks
def _fingerprints(model) -> set[str]:
    """The projection fingerprint, plus what it would be had the weights been rounded to a 16-bit
    dtype (a table embedded in bf16 from a float32 checkpoint is the same model)."""
    import hashlib

    import torch

    from .loading import projection_fingerprint

    out = {projection_fingerprint(model)}
    proj = getattr(model, "custom_text_proj", None)
    if proj is None:
        return out
    for dt in (torch.bfloat16, torch.float16):
        h = hashlib.sha256()
        for t in (proj.weight, proj.bias):
            if t is not None:
                h.update(t.detach().to(dt).to(torch.float32).cpu().contiguous().numpy().tobytes())
        out.add(h.hexdigest()[:16])
    return out


def check_model(lm, info: TableInfo) -> list[str]:
    """Why ``lm`` would give wrong scores on a table made with ``info`` (empty: compatible)."""
    problems = []
    if lm.kind != info.kind:
        problems.append(f"the table holds {info.kind} embeddings but the model is {lm.kind}")
    elif lm.dim != info.dim:
        problems.append(f"the table holds {info.dim}-d embeddings but the model makes {lm.dim}-d ones")
    if lm.revision != info.revision:
        problems.append(f"model revision {lm.revision} differs from the table's {info.revision}")
    if info.fingerprint and info.fingerprint not in _fingerprints(lm.model):
        problems.append(f"projection fingerprint {lm.fingerprint} differs from the table's {info.fingerprint}"
                        f" (a different custom_text_proj: another seed, checkpoint or dtype)")
    return problems


# ------------------------------------------------------------------ the index
class Index:
    """A searchable view of one store table.

    >>> idx = Index.open("~/my-store")
    >>> for hit in idx.search("a red bicycle", k=5): print(hit.rank, hit.score, hit.file)
    >>> idx.search(PIL.Image.open("q.png"))            # image query (also a pathlib.Path)
    """

    def __init__(self, store: Store, table: EmbeddingTable, *, backend: str = "auto",
                 model_name: str | None = None, allow_mismatch: bool = False, template: str | None = None,
                 device: str | None = None, batch_rows: int | None = None, tile_vectors: int | None = None,
                 workers: int | None = None):
        self.store = store
        self.table = table
        self.info: TableInfo = table.info
        self.backend_name = backend
        self.model_name = model_name
        self.allow_mismatch = allow_mismatch
        self.template = template
        self.device = device
        self.batch_rows = batch_rows
        self.tile_vectors = tile_vectors
        self.workers = workers
        self._lm = None
        self.warnings: list[str] = []

    @classmethod
    def open(cls, path: str | Path | Store | None = None, table: str | None = None, backend: str = "auto",
             **kwargs) -> "Index":
        """Open ``table`` (default: the store's only table) of the store at ``path``."""
        store = path if isinstance(path, Store) else Store(path if path is not None else default_store_path(), create=False)
        t = store.open_table(table) if table else store.only_table()
        return cls(store, t, backend=backend, **kwargs)

    # ---- model
    @property
    def model(self):
        """The query model, loaded (and checked against the table) on first use."""
        if self._lm is None:
            self._lm = self._load_model()
        return self._lm

    def _load_model(self):
        from .backends import select_backend
        from .loading import ModelLoadError, load_model

        info = self.info
        name = self.model_name or info.model_id
        pin = None
        if self.model_name is None and not Path(name).expanduser().is_dir() and not info.revision.startswith("local-"):
            pin = info.revision  # the hub commit the table was embedded with
        be = select_backend(self.backend_name)
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                lm = load_model(name, None, backend=be, kind=info.kind, seed=info.seed, revision=pin)
        except ModelLoadError as e:
            hint = "" if self.model_name else (f" (the table {self.table.name!r} was embedded with {info.model_id}; "
                                               "pass --model-name to load it from elsewhere)")
            raise ModelLoadError(f"{e}{hint}") from None
        problems = check_model(lm, info)
        if problems:
            msg = (f"the query model {lm.model_id} does not match table {self.table.name!r} "
                   f"(embedded with {info.model_id}): " + "; ".join(problems))
            if not self.allow_mismatch:
                raise ModelMismatchError(msg + ". Its scores would be meaningless; use the model the table was "
                                         "embedded with, re-embed, or pass --allow-mismatch to search anyway.")
            if lm.kind != info.kind or lm.dim != info.dim:
                raise ModelMismatchError(msg)
            log.warning("%s (--allow-mismatch: searching anyway)", msg)
            self.warnings.append(msg)
        return lm

    def _device(self) -> str:
        if self.device:
            return self.device
        if self._lm is not None and self._lm.backend.name == "cuda":
            return "cuda"
        return "cpu"

    # ---- query embedding
    def embed_queries(self, queries: Sequence) -> list[np.ndarray]:
        """float32 query embeddings: text with ``process_queries`` (and the template), images
        (PIL images or ``os.PathLike`` paths) with the document path."""
        from .encode import embed_queries
        from .pipeline import embed_pil_images

        lm = self.model
        out: list[np.ndarray | None] = [None] * len(queries)
        texts = [(i, q) for i, q in enumerate(queries) if isinstance(q, str)]
        images = [(i, q) for i, q in enumerate(queries) if not isinstance(q, str)]
        if texts:
            for (i, _), e in zip(texts, embed_queries(lm, [q for _, q in texts], template=self.template)):
                out[i] = e.float().numpy()
        if images:
            for (i, _), e in zip(images, embed_pil_images(lm, [q for _, q in images])):
                out[i] = e.float().numpy()
        return out  # type: ignore[return-value]

    # ---- search
    def search(self, query, k: int = 10, *, approx: bool = False, **kw) -> list[Hit]:
        """The ``k`` best images for one query: a text ``str``, a ``PIL.Image`` or a path
        (``pathlib.Path``) to an image."""
        return self.search_many([query], k, approx=approx, **kw)[0]

    def search_many(self, queries: Sequence, k: int = 10, *, approx: bool = False, **kw) -> list[list[Hit]]:
        """Several queries sharing one scan of the table."""
        queries = list(queries)
        if not queries:
            return []
        return self.search_embeddings(self.embed_queries(queries), k, approx=approx, **kw)

    def search_embeddings(self, embeddings: Sequence[np.ndarray], k: int = 10, *, approx: bool = False,
                          rerank: int | None = None, nprobes: int | None = None,
                          method: str | None = None, where: str | None = None) -> list[list[Hit]]:
        """Search with precomputed query embeddings (float32 ``(tokens, dim)`` / ``(dim,)``).

        ``approx``: use the approximate index (``method`` pooled or lance; default whichever
        exists, pooled first), re-ranking the best ``rerank`` candidates exactly."""
        if k < 1:
            raise ValueError("k must be at least 1")
        embs = [np.asarray(e, dtype=np.float32) for e in embeddings]
        if not embs:
            return []
        for e in embs:
            if e.shape[-1] != self.info.dim:
                raise SearchError(f"query embedding is {e.shape[-1]}-d but table {self.table.name!r} holds "
                                  f"{self.info.dim}-d embeddings")
        if approx:
            return self._approx_search(embs, k, rerank=rerank, nprobes=nprobes, method=method)
        ds = self.table.table.to_lance()
        top = exact_scan(ds, self.info, embs, k, batch_rows=self.batch_rows, tile_vectors=self.tile_vectors,
                         device=self._device(), workers=self.workers, filter=where)
        return top.hits()

    # ---- approximate index
    def approx_path(self, method: str = "pooled") -> Path:
        if not self.store.local:
            raise SearchError(f"the pooled approximate index is kept beside a local store; {self.store.path} is "
                              "remote: use --index-method lance (LanceDB's own index, stored in the table)")
        return self.store.path / APPROX_DIR / f"{self.table.name}-{method}.lance"

    def approx_info(self) -> dict | None:
        """What the approximate index holds (None if there is none)."""
        p = self.approx_path("pooled") if self.store.local else None
        if p is not None and p.exists():
            import lance

            ds = lance.dataset(str(p))
            return json.loads(ds.schema.metadata[APPROX_META])
        lance_idx = self._lance_index()
        if lance_idx is not None:
            return {"method": "lance", "index": str(lance_idx)}
        return None

    def _lance_index(self):
        try:
            for ix in self.table.table.list_indices():
                if "embedding" in list(getattr(ix, "columns", [])):
                    return ix
        except Exception:
            return None
        return None

    def build_approx_index(self, method: str = "pooled", *, pool_factor: int = 4, kmeans_iters: int = 4,
                           num_partitions: int | None = None, num_sub_vectors: int | None = None,
                           batch_rows: int = 256, progress=None) -> dict:
        """Build (or rebuild) the approximate index; see the module docstring.  Returns its description."""
        if method not in APPROX_METHODS:
            raise ValueError(f"unknown approximate index {method!r}; choose one of {', '.join(APPROX_METHODS)}")
        t0 = time.perf_counter()
        if method == "lance":
            n_vec = self._n_vectors()
            parts = num_partitions or max(1, min(4096, int(np.sqrt(max(n_vec, 1)))))
            subv = num_sub_vectors or max(1, self.info.dim // 8)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                self.table.table.create_index(metric="cosine", vector_column_name="embedding", index_type="IVF_PQ",
                                              num_partitions=parts, num_sub_vectors=subv, replace=True)
            desc = {"method": "lance", "num_partitions": parts, "num_sub_vectors": subv,
                    "vectors": n_vec, "seconds": round(time.perf_counter() - t0, 3)}
            return desc
        if self.info.kind != "colqwen":
            raise SearchError("the pooled index is for ColQwen (multi-vector) tables; a BiQwen table holds one "
                              "vector per image already: use method 'lance' (or exact search)")
        return build_pooled_index(self.table, self.approx_path("pooled"), pool_factor=pool_factor,
                                  kmeans_iters=kmeans_iters, batch_rows=batch_rows, progress=progress)

    def _n_vectors(self) -> int:
        ds = self.table.table.to_lance()
        t = ds.to_table(columns=["n_vectors"])
        return int(np.asarray(t.column("n_vectors").to_numpy(zero_copy_only=False), dtype=np.int64).sum())

    def _approx_search(self, embs: list[np.ndarray], k: int, rerank: int | None, nprobes: int | None,
                       method: str | None = None) -> list[list[Hit]]:
        import lance

        ds = self.table.table.to_lance()
        depth = max(k, rerank if rerank is not None else max(10 * k, 100))
        local = self.store.local
        p = self.approx_path("pooled") if local or method == "pooled" else None
        if method is None:
            method = "pooled" if p is not None and p.exists() else "lance" if self._lance_index() is not None else None
        if method is None or (method == "pooled" and not p.exists()) or (method == "lance" and self._lance_index() is None):
            raise SearchError(f"table {self.table.name!r} has no {method or 'approximate'} index: build one with "
                              "`nomic-memory search --build-index` (or Index.build_approx_index())")
        if method == "lance":
            cands = []
            for q in embs:
                qq = q.reshape(-1, self.info.dim) if self.info.kind == "colqwen" else q.reshape(self.info.dim)
                qb = self.table.table.search(qq, vector_column_name="embedding").limit(depth)
                if nprobes:
                    qb = qb.nprobes(nprobes)
                r = qb.with_row_id(True).select(["page"]).to_arrow()
                cands.append(r.column("_rowid").to_pylist())
            return self._rerank(ds, embs, k, cands, rowids=True)
        side = lance.dataset(str(p))
        meta = json.loads(side.schema.metadata[APPROX_META])
        if meta["data_signature"] != data_signature(ds):
            raise SearchError(f"the approximate index of table {self.table.name!r} is out of date (the table "
                              f"changed since it was built at version {meta['source_version']}); rebuild it with "
                              "`nomic-memory search --build-index` or search without --approx")
        side_info = TableInfo(**{**self.info.__dict__, "storage_dtype": "float16"})
        top = exact_scan(side, side_info, embs, depth, batch_rows=4 * (self.batch_rows or 32),
                         tile_vectors=self.tile_vectors, device=self._device(), column_meta=False,
                         workers=self.workers)
        return self._rerank(ds, embs, k, [ps.tolist() for ps in top.pos])

    def _rerank(self, ds, embs, k: int, cands: list[list[int]], rowids: bool = False) -> list[list[Hit]]:
        """Exact scores of each query's own candidates (row positions, or Lance row ids), fetched
        from the table in one ``take``."""
        union = sorted({c for cs in cands for c in cs})
        if not union:
            return [[] for _ in embs]
        cols = META_COLUMNS + ["embedding"]
        t = ds._take_rows(union, columns=cols) if rowids else ds.take(union, columns=cols)
        batch = t.combine_chunks().to_batches()[0]
        where = {c: i for i, c in enumerate(union)}
        out = []
        for q, cs in zip(embs, cands):
            ids = np.asarray(sorted(set(cs)), dtype=np.int64)
            local = np.asarray([where[int(c)] for c in ids], dtype=np.int64)
            sub = batch.take(pa.array(local))
            scorer = Scorer([q], self.info.kind, self.info.dim, device=self._device(), tile_vectors=self.tile_vectors)
            top = TopK(1, k)
            top.update(scorer.score_batch(sub), ids, _meta_getter(sub))
            out.append(top.hits()[0])
        return out


    # ---- serve stand-ins for helper `search`'s row lookup (replace with theirs on merge)
    def row(self, id: str) -> dict | None:
        ds = self.table.table.to_lance()
        cols = [c for c in ds.schema.names if c != "embedding"]
        for b in ds.to_batches(columns=cols):
            for r in b.to_pylist():
                if row_id(r["root"], r["path"], r["page"] or 0) == id:
                    return r
        return None

    def row_embedding(self, id: str) -> np.ndarray:
        from .store import embedding_to_numpy, _sql_str

        r = self.row(id)
        if r is None:
            raise SearchError(f"no row {id!r}")
        ds = self.table.table.to_lance()
        t = ds.to_table(columns=["embedding"], filter=f"root = {_sql_str(r['root'])} AND path = {_sql_str(r['path'])}"
                        f" AND page = {int(r['page'] or 0)}")
        return embedding_to_numpy(t.column("embedding")[0], self.info.kind, self.info.dim)


def _pool_documents(x, offsets: np.ndarray, pool_factor: int, iters: int):
    """k-means-pool each document's vectors into ``ceil(n / pool_factor)`` unit centroids.

    ``x``: float32 torch (total, dim).  Seeds are the means of consecutive groups (neighbouring
    patches of the image), then ``iters`` Lloyd steps with cosine assignment (an emptied cluster
    keeps its previous centroid).  Documents of equal length are pooled together in one batched
    pass.  Returns one ``(m_i, dim)`` tensor per document.
    """
    import torch

    lens = np.diff(offsets)
    out: list = [None] * len(lens)
    dim = x.shape[1]
    for n in np.unique(lens):
        n = int(n)
        docs = np.flatnonzero(lens == n)
        if n == 0:
            for i in docs:
                out[i] = x.new_zeros((0, dim))
            continue
        m = -(-n // pool_factor)
        idx = torch.from_numpy((offsets[docs][:, None] + np.arange(n)[None, :]).reshape(-1))
        d = x[idx].view(len(docs), n, dim)  # (B, n, dim)
        grp = (torch.arange(n) * m // n).unsqueeze(0).expand(len(docs), n)  # consecutive groups
        c = torch.zeros((len(docs), m, dim), dtype=torch.float32)
        c.scatter_add_(1, grp.unsqueeze(2).expand(-1, -1, dim), d)
        for _ in range(iters):
            c = c / c.norm(dim=2, keepdim=True).clamp_min(1e-12)
            grp = torch.bmm(d, c.transpose(1, 2)).argmax(dim=2)  # (B, n)
            new = torch.zeros_like(c).scatter_add_(1, grp.unsqueeze(2).expand(-1, -1, dim), d)
            counts = torch.zeros((len(docs), m), dtype=torch.float32).scatter_add_(1, grp, torch.ones_like(grp, dtype=torch.float32))
            c = torch.where((counts > 0).unsqueeze(2), new, c)
        c = c / c.norm(dim=2, keepdim=True).clamp_min(1e-12)
        for j, i in enumerate(docs):
            out[i] = c[j]
    return out, [int(t.shape[0]) for t in out]


def build_pooled_index(table: EmbeddingTable, path: Path, *, pool_factor: int = 4, kmeans_iters: int = 4,
                       batch_rows: int = 256, progress=None) -> dict:
    """Write the pooled side dataset for ``table`` to ``path`` (replacing any previous one)."""
    import shutil

    import lance
    import torch

    if pool_factor < 1:
        raise ValueError("pool_factor must be at least 1")
    t0 = time.perf_counter()
    info = table.info
    ds = table.table.to_lance()
    version, rows = ds.version, ds.count_rows()
    meta = {"method": "pooled", "source_table": table.name, "source_version": version, "rows": rows,
            "data_signature": data_signature(ds),
            "pool_factor": pool_factor, "kmeans_iters": kmeans_iters, "fingerprint": info.fingerprint}
    vt = pa.float16()
    schema = pa.schema([pa.field("pos", pa.int64()), pa.field("embedding", pa.list_(pa.list_(vt, info.dim)))],
                       metadata={APPROX_META: json.dumps(meta).encode()})
    counters = {"vectors": 0, "pooled": 0}

    def batches():
        base = 0
        for batch in ds.to_batches(columns=["embedding"], batch_size=batch_rows, scan_in_order=True):
            vecs, offs = multivector_matrix(batch.column("embedding"))
            x = torch.from_numpy(vecs.astype(np.float32))  # a writable float32 copy
            pooled, lens = _pool_documents(x, offs, pool_factor, kmeans_iters)
            flat = torch.cat(pooled).numpy().astype(np.float16) if pooled else np.zeros((0, info.dim), np.float16)
            inner = pa.FixedSizeListArray.from_arrays(pa.array(flat.reshape(-1), type=vt), info.dim)
            o = np.concatenate([[0], np.cumsum(lens)]).astype(np.int32)
            emb = pa.ListArray.from_arrays(pa.array(o), inner)
            n = batch.num_rows
            counters["vectors"] += int(offs[-1])
            counters["pooled"] += int(o[-1])
            yield pa.RecordBatch.from_arrays([pa.array(np.arange(base, base + n, dtype=np.int64)), emb], schema=schema)
            base += n
            if progress:
                progress(base, rows)

    tmp = path.with_name(path.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.parent.mkdir(parents=True, exist_ok=True)
    reader = pa.RecordBatchReader.from_batches(schema, batches())
    # format 2.0: its plain encoding of list<fixed_size_list> scans ~6x cheaper than 2.1+ (measured)
    lance.write_dataset(reader, str(tmp), schema=schema, mode="create", data_storage_version="2.0")
    shutil.rmtree(path, ignore_errors=True)
    os.replace(tmp, path)
    return {**meta, "vectors": counters["vectors"], "pooled_vectors": counters["pooled"],
            "seconds": round(time.perf_counter() - t0, 3), "path": str(path)}


def data_signature(ds) -> str:
    """A digest of the dataset's data fragments: changes when rows are added, deleted or
    rewritten, not when only an index or metadata is added (which also makes a new version)."""
    import hashlib

    h = hashlib.sha256()
    for f in ds.get_fragments():
        h.update(json.dumps(f.metadata.to_json(), sort_keys=True, default=str).encode())
    return h.hexdigest()[:16]


def recall_at_k(approx: list[list[Hit]], exact: list[list[Hit]], k: int = 10) -> float:
    """Mean fraction of the exact top-k that the approximate top-k found."""
    vals = []
    for a, e in zip(approx, exact):
        want = {(h.root, h.path, h.page) for h in e[:k]}
        got = {(h.root, h.path, h.page) for h in a[:k]}
        vals.append(len(want & got) / max(1, len(want)))
    return float(np.mean(vals)) if vals else 0.0


__all__ = ["Hit", "Index", "SearchError", "ModelMismatchError", "Scorer", "TopK", "exact_scan",
           "multivector_matrix", "fixed_size_list_matrix", "check_model", "build_pooled_index", "recall_at_k"]
_ = (Iterable, StoreError)
