"""Retrieval: search a store by text or by image.

:class:`Index` is a searchable view of one store table.  It embeds queries with the model the
table records (``TableInfo``: model id, revision, seed), or with an already-loaded model handed to
it; a model whose revision or projection fingerprint differs from the table's is refused, because
its scores would be silently meaningless, unless ``allow_mismatch`` is set.

Exact search streams the table through :mod:`nomic_memory.search.scoring`; ``approx=True`` ranks
candidates with an approximate index and re-ranks them exactly (:mod:`nomic_memory.search.approx`).
Both take ``where``, a SQL predicate over the row columns (:data:`WHERE_COLUMNS`), which Lance
evaluates in the scan itself.

Every hit and every row has an :func:`row_id`: a short stable string derived from its key
``(root, path, page)``, by which :meth:`Index.row` and :meth:`Index.row_embedding` fetch it.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
import threading
import warnings
from dataclasses import asdict, dataclass, field
from functools import cached_property
from pathlib import Path

import numpy as np

from nomic_memory.errors import ModelLoadError, ModelMismatchError, SearchError, UsageError, WrongTypeError
from nomic_memory.search import approx as _approx
from nomic_memory.search import firststage as _fs
from nomic_memory.search import liveindex as _live
from nomic_memory.search.scoring import ScanOptions, TopK
from nomic_memory.store.mapped import MappedVectors
from nomic_memory.store.table import EmbeddingTable, Store, TableInfo, default_store_path, embedding_to_numpy

log = logging.getLogger("nomic_memory")

# The columns a ``where`` predicate may name: what a user knows about a file, not the internals
# (hashes, model columns, the embedding itself).
WHERE_COLUMNS = ("path", "root", "page", "mtime", "size", "width", "height")


def row_id(root: str, path: str, page: int = 0) -> str:
    """The stable id of the row keyed ``(root, path, page)``: 16 hex digits of its sha256.
    Short enough for a URL, the same in every process and across re-embedding."""
    return hashlib.sha256(f"{root}\0{path}\0{int(page or 0)}".encode()).hexdigest()[:16]


@dataclass(frozen=True)
class Hit:
    """One result: its rank (1 = best) and exact score for the query, and the row it names."""

    rank: int
    score: float
    path: str  # relative to root
    root: str  # the directory that was embedded
    page: int = 0
    #: how the candidates were found: "index" (first-stage index, re-ranked exactly) or "exact"
    #: (every row scored); the score is exact either way
    via: str = field(default="exact", compare=False)

    @property
    def file(self) -> str:
        return os.path.join(self.root, self.path)

    @cached_property
    def id(self) -> str:
        """The row's :func:`row_id` (what :meth:`Index.row` takes)."""
        return row_id(self.root, self.path, self.page)

    def to_dict(self) -> dict:
        return {**asdict(self), "id": self.id, "file": self.file}


def to_hits(top: TopK, via: str = "exact") -> list[list[Hit]]:
    """Hits of a scan made with row metadata (``column_meta``), one list per query."""
    return [
        [Hit(i + 1, score, *(meta or ()), via=via) for i, (score, meta) in enumerate(rows)]  # type: ignore[misc]
        for rows in top.results()
    ]


# ------------------------------------------------------------------ where
_SQL_WORDS = frozenset(
    """and or not like ilike in is null true false between as cast try_cast escape similar to
    case when then else end distinct from int integer bigint smallint tinyint float double real decimal
    varchar string text boolean date timestamp interval""".split()
)
_SQL_TOKEN = re.compile(
    r"""'(?:[^']|'')*'|(?P<open>')|"(?P<dq>(?:[^"]|"")*)"|`(?P<bq>[^`]*)`"""
    r"""|\d+(?:\.\d*)?(?:[eE][+-]?\d+)?|(?P<word>[A-Za-z_][A-Za-z0-9_]*)(?P<call>\s*\()?"""
)


def _lance_reason(e: Exception) -> str:
    """Lance's error message without its Rust source locations and wrappers."""
    msg = re.sub(r",\s*/\S+\.rs:\d+:\d+", "", str(e)).replace("Invalid user input: ", "")
    return msg.replace("SELECT 1 FROM t WHERE ", "").strip().rstrip(".")


def check_where(ds, where: str | None) -> str | None:
    """``where`` if it is a predicate Lance can evaluate over :data:`WHERE_COLUMNS` of ``ds``;
    :class:`SearchError` naming the problem otherwise.  (None or blank: no filter.)"""
    if where is None or not where.strip():
        return None
    for m in _SQL_TOKEN.finditer(where):
        if m.group("open"):
            break  # an unterminated string: Lance's parser says where
        if m.group("word") and (m.group("call") or m.group("word").lower() in _SQL_WORDS):
            continue
        name = m.group("dq") or m.group("bq") or (m.group("word") or "").lower()
        if name and name not in WHERE_COLUMNS:
            raise SearchError(
                f"invalid where {where!r}: unknown column {name!r} (a filter can use {', '.join(WHERE_COLUMNS)})"
            )
    try:
        ds.scanner(filter=where, columns=[], with_row_id=True).explain_plan()
    except Exception as e:  # Lance raises ValueError/OSError with a Rust trace; the user needs the reason
        raise SearchError(f"invalid where {where!r}: {_lance_reason(e)}") from None
    return where


# ------------------------------------------------------------------ model checks
def check_model(lm, info: TableInfo) -> list[str]:
    """Why ``lm`` would give wrong scores on a table made with ``info`` (empty: compatible)."""
    problems = []
    if lm.kind != info.kind:
        problems.append(f"the table holds {info.kind} embeddings but the model is {lm.kind}")
    elif lm.dim != info.dim:
        problems.append(f"the table holds {info.dim}-d embeddings but the model makes {lm.dim}-d ones")
    if lm.revision != info.revision:
        problems.append(f"model revision {lm.revision} differs from the table's {info.revision}")
    if info.fingerprint and info.fingerprint not in _fingerprints(lm):
        problems.append(
            f"projection fingerprint {lm.fingerprint} differs from the table's {info.fingerprint}"
            f" (a different custom_text_proj: another seed, checkpoint or dtype)"
        )
    return problems


def _fingerprints(lm) -> frozenset[str]:
    """Every fingerprint a table made with ``lm``'s projection may record (whatever the dtype)."""
    # late: torch (a second); a search by embeddings needs none
    from nomic_memory.model.loading import fingerprint_variants

    return getattr(lm, "fingerprints", None) or fingerprint_variants(lm.model)


def _as_loaded_model(model):
    """A ``LoadedModel`` from ``model``: one itself, or an object holding one as ``.loaded``
    (an :class:`~nomic_memory.api.Embedder`)."""
    from nomic_memory.model.loading import LoadedModel  # late: torch, as above

    lm = getattr(model, "loaded", model)
    if not isinstance(lm, LoadedModel):
        raise WrongTypeError(
            f"model must be a LoadedModel or hold one as .loaded (an Embedder), not {type(model).__name__}"
        )
    return lm


def _holds_model(model) -> bool:
    """``model`` is a ``LoadedModel`` or has a ``loaded`` attribute (without reading it, which
    would load an Embedder's model)."""
    from nomic_memory.model.loading import LoadedModel  # late: torch, as above

    return (
        isinstance(model, LoadedModel) or hasattr(type(model), "loaded") or "loaded" in getattr(model, "__dict__", {})
    )


def _query_list(queries) -> list:
    """A single query (text, PIL image, path) as a one-element list; a sequence as a list."""
    from PIL import Image

    if isinstance(queries, (str, os.PathLike, Image.Image)):
        return [queries]
    return list(queries)


def _vector_candidates(st, q: np.ndarray, depth: int, allowed: np.ndarray | None) -> np.ndarray:
    """Entries of a single-vector index nearest ``q`` (usearch HNSW, inner product), restricted
    to ``allowed``: searched deeper in proportion to how few entries are allowed, and when
    fewer than ``depth`` are, those entries themselves (all of them are then re-ranked)."""
    n_ok = st.n if allowed is None else int(np.count_nonzero(allowed))
    if n_ok <= depth or n_ok * 20 < st.n:
        return np.arange(st.n) if allowed is None else np.flatnonzero(allowed)
    count = min(st.n, int(depth * st.n / n_ok) + depth)
    m = st.vectors.search(np.asarray(q, dtype=np.float32).reshape(-1), count, exact=False)
    keys = np.asarray(m.keys, dtype=np.uint64)
    order = getattr(st, "_key_order", None)
    if order is None:
        order = st._key_order = np.argsort(np.asarray(st.keys), kind="stable")
    sk = np.asarray(st.keys)[order]
    pos = np.clip(np.searchsorted(sk, keys), 0, len(sk) - 1)
    ents = order[pos[sk[pos] == keys]]
    if allowed is not None:
        ents = ents[allowed[ents]]
    return ents[:depth]


# ------------------------------------------------------------------ the index
def check_k(k) -> int:
    """``k`` (results per query) must be a whole number of at least 1 (``True`` is not one)."""
    import numbers

    if isinstance(k, bool) or not isinstance(k, numbers.Integral):
        raise UsageError(f"k must be a whole number of results (at least 1), not {k!r}")
    if k < 1:
        raise UsageError("k must be at least 1")
    return int(k)


class Index:
    """A searchable view of one store table.

    >>> idx = Index.open("~/my-store")
    >>> for hit in idx.search("a red bicycle", k=5): print(hit.rank, hit.score, hit.file)
    >>> idx.search(PIL.Image.open("q.png"))            # image query (also a pathlib.Path)
    >>> idx.search(Path("report.pdf#3"))               # a document's page 3 as the image query
    >>> idx.search("invoice", where="page > 1 AND path LIKE 'scans/%'")
    >>> idx.row(hit.id), idx.row_embedding(hit.id)     # the row's metadata and stored vectors

    ``model``: an already-loaded model to embed queries with (a ``LoadedModel`` or an
    ``Embedder``) instead of loading the one the table records; it is checked against the table
    the same way.
    """

    def __init__(
        self,
        store: Store,
        table: EmbeddingTable,
        *,
        backend: str = "auto",
        model_name: str | None = None,
        model=None,
        allow_mismatch: bool = False,
        template: str | None = None,
        device: str | None = None,
        batch_rows: int | None = None,
        tile_vectors: int | None = None,
        workers: int | None = None,
        index_min_rows: int | None = None,
        index_wait: bool = False,
    ):
        self.store = store
        # the first-stage index is used from this many rows on (None: liveindex.min_rows());
        # index_wait: a search waits for another process's index update instead of scoring
        # the rows that update covers exactly
        self.index_min_rows = index_min_rows
        self.index_wait = index_wait
        self._live_index: _live.LiveIndex | None = None
        self._mapped = MappedVectors() if store.local else None  # the re-rank's reads (see its module)
        self.last_via: str | None = None  # how the last search found its candidates
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
        if model is not None and not _holds_model(model):
            raise WrongTypeError(
                f"model must be a LoadedModel or hold one as .loaded (an Embedder), not {type(model).__name__}"
            )
        self._given = model  # an Embedder may load its model lazily: resolved on first use
        self._lm = None
        self._model_lock = threading.Lock()
        self._rows_lock = threading.Lock()
        self._rows_cache: tuple | None = None
        self.warnings: list[str] = []

    @classmethod
    def open(
        cls, path: str | Path | Store | None = None, table: str | None = None, backend: str = "auto", **kwargs
    ) -> Index:
        """Open ``table`` (default: the store's only table) of the store at ``path``."""
        store = (
            path if isinstance(path, Store) else Store(path if path is not None else default_store_path(), create=False)
        )
        t = store.open_table(table) if table else store.only_table()
        return cls(store, t, backend=backend, **kwargs)

    # ---- model
    @property
    def model_loaded(self) -> bool:
        """Whether the query model is loaded (or given) and checked already."""
        return self._lm is not None

    @property
    def model(self):
        """The query model, loaded (or taken as given) and checked against the table on first use."""
        if self._lm is None:
            with self._model_lock:
                if self._lm is None:
                    lm = _as_loaded_model(self._given) if self._given is not None else self._load_model()
                    self._check_model(lm)
                    self._lm = lm
        return self._lm

    def _load_model(self):
        from nomic_memory.model.backends import select_backend  # late: torch, as above
        from nomic_memory.model.loading import load_model  # late: torch, as above

        info = self.info
        name = self.model_name or info.model_id
        pin = None
        if self.model_name is None and not Path(name).expanduser().is_dir() and not info.revision.startswith("local-"):
            pin = info.revision  # the hub commit the table was embedded with
        be = select_backend(self.backend_name)
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                return load_model(name, None, backend=be, kind=info.kind, seed=info.seed, revision=pin)
        except ModelLoadError as e:
            hint = (
                ""
                if self.model_name
                else (
                    f" (the table {self.table.name!r} was embedded with {info.model_id}; "
                    "pass --model-name to load it from elsewhere)"
                )
            )
            raise ModelLoadError(f"{e}{hint}") from None

    def _check_model(self, lm) -> None:
        """Refuse (or, with ``allow_mismatch``, warn about) a model that does not match the table."""
        info = self.info
        problems = check_model(lm, info)
        if not problems:
            return
        msg = (
            f"the query model {lm.model_id} does not match table {self.table.name!r} "
            f"(embedded with {info.model_id}): " + "; ".join(problems)
        )
        if not self.allow_mismatch:
            raise ModelMismatchError(
                msg + ". Its scores would be meaningless; use the model the table was "
                "embedded with, re-embed, or pass --allow-mismatch to search anyway."
            )
        if lm.kind != info.kind or lm.dim != info.dim:
            raise ModelMismatchError(msg)
        log.warning("%s (--allow-mismatch: searching anyway)", msg)
        self.warnings.append(msg)

    def _device(self) -> str:
        if self.device:
            return self.device
        if self._lm is not None and self._lm.backend.name == "cuda":
            return "cuda"
        return "cpu"

    def _scan(self) -> ScanOptions:
        return ScanOptions(
            device=self._device(), batch_rows=self.batch_rows, tile_vectors=self.tile_vectors, workers=self.workers
        )

    # ---- query embedding
    def embed_queries(self, queries) -> list[np.ndarray]:
        """float32 numpy query embeddings.  A ``str`` is a text query (``process_queries``, after
        the template); a ``pathlib.Path`` (any ``os.PathLike``) or a ``PIL.Image`` is an image
        query, embedded as stored images are.  A path may name a page of a document:
        ``Path("report.pdf#3")``, or ``Path("report.pdf")`` for page 1.  A single query is taken
        as a list of one."""
        from nomic_memory.model.queries import (  # late: transformers' model code (seconds)
            check_queries,
            embed_any_queries,
        )

        queries = _query_list(queries)
        check_queries(queries)  # before the model loads
        return embed_any_queries(self.model, queries, template=self.template)

    # ---- search
    def search(
        self, query, k: int = 10, *, exact: bool = False, approx: bool = False, where: str | None = None, **kw
    ) -> list[Hit]:
        """The ``k`` best images for one query: a text ``str``, or an image: a ``PIL.Image`` or a
        ``pathlib.Path`` to an image file or a document page (``Path("report.pdf#3")``; page 1
        without ``#N``).  ``where``: only rows matching this SQL predicate; ``exact``: score every
        row (never the first-stage index)."""
        return self.search_many([query], k, exact=exact, approx=approx, where=where, **kw)[0]

    def search_many(
        self, queries, k: int = 10, *, exact: bool = False, approx: bool = False, where: str | None = None, **kw
    ) -> list[list[Hit]]:
        """Several queries sharing one scan of the table (one list of hits per query)."""
        check_k(k)  # before a query is embedded
        queries = _query_list(queries)
        if not queries:
            return []
        return self.search_embeddings(self.embed_queries(queries), k, exact=exact, approx=approx, where=where, **kw)

    def search_embeddings(
        self,
        embeddings,
        k: int = 10,
        *,
        exact: bool = False,
        approx: bool = False,
        where: str | None = None,
        rerank: int | None = None,
        nprobes: int | None = None,
        method: str | None = None,
    ) -> list[list[Hit]]:
        """Search with precomputed query embeddings (float32 ``(tokens, dim)`` / ``(dim,)``; one
        such array is one query).

        From :func:`index_min_rows` rows on, candidates come from the table's first-stage index
        (kept current automatically, :mod:`nomic_memory.search.liveindex`) and the best ``rerank``
        (default: 100, or more as more pages share the index's lists: :meth:`~.firststage.Settings.depth_for`) of them are
        scored exactly; below it, and with ``exact=True``, every row is
        scored.  Scores are exact either way; each hit's ``via`` (and :attr:`last_via`) says
        which was used.
        ``where``: a SQL predicate over :data:`WHERE_COLUMNS` (Lance/DataFusion syntax, e.g.
        ``"page > 2 AND path LIKE 'reports/%'"``); the results are the best rows that match it.
        ``approx``: the older hand-built approximate index (``method`` pooled or lance)."""
        check_k(k)
        embs = self._query_arrays(embeddings)
        if not embs:
            return []
        ds = self.table.table.to_lance()
        where = check_where(ds, where)
        if approx:
            self.last_via = "approx"
            return self._approx_search(ds, embs, k, rerank=rerank, nprobes=nprobes, method=method, where=where)
        if not exact and self.uses_index(ds):
            try:
                hits = self._index_search(ds, embs, k, where, rerank)
                self.last_via = "index"
                return hits
            except _live.IndexUnusable as e:  # e.g. an index directory that cannot be written
                log.warning("first-stage index not used: %s", e)
        self.last_via = "exact"
        return to_hits(self._scan().scan(ds, self.info, embs, k, filter=where))

    # ---- first-stage index
    def min_rows(self) -> int:
        """Rows from which a search uses the first-stage index."""
        return _live.min_rows() if self.index_min_rows is None else self.index_min_rows

    def uses_index(self, ds=None) -> bool:
        """Whether a search (not ``exact``) of the table as it is now goes through the index."""
        ds = ds if ds is not None else self.table.table.to_lance()
        return self.store.local and ds.count_rows() >= self.min_rows()

    def live_index(self) -> _live.LiveIndex:
        if self._live_index is None:
            self._live_index = _live.LiveIndex(self.store, self.table)
        return self._live_index

    def _index_search(self, ds, embs: list[np.ndarray], k: int, where: str | None, rerank: int | None):
        view = self.live_index().view(ds, wait=self.index_wait)
        st = view.state
        depth = max(k, rerank if rerank is not None else _fs.Settings().depth_for(st.n, st.pages_per_list))
        allowed, tail = view.alive, view.tail
        if where:
            match = _approx.matching_row_ids(ds, where).astype(np.uint64)
            inside = np.isin(view.rowids, match)
            allowed = inside if allowed is None else allowed & inside
            tail = tail[np.isin(tail, match)]
        cands = [
            np.union1d(view.rowids[ents], tail).astype(np.int64).tolist()
            for ents in self._candidates(view, embs, depth, allowed)
        ]
        tops = _approx.rerank(ds, self.info, embs, k, cands, self._scan(), rowids=True, mapped=self._mapped)
        return [to_hits(top, via="index")[0] for top in tops]

    def _candidates(self, view: _live.View, embs: list[np.ndarray], depth: int, allowed) -> list[np.ndarray]:
        """Each query's candidate entries (indices into ``view``'s entries)."""
        st = view.state
        if st.n == 0:
            return [np.zeros(0, np.int64) for _ in embs]
        if st.codes is not None:
            s = st.settings
            return [_fs.candidates(st.parts, q.reshape(-1, self.info.dim), s, allowed, depth) for q in embs]
        return [_vector_candidates(st, q, depth, allowed) for q in embs]

    def _query_arrays(self, embeddings) -> list[np.ndarray]:
        single_ndim = 2 if self.info.kind == "colqwen" else 1
        if hasattr(embeddings, "ndim") and embeddings.ndim == single_ndim:
            embeddings = [embeddings]  # one query's array, not a batch of them
        embs = [np.asarray(e, dtype=np.float32) for e in embeddings]
        for e in embs:
            if e.shape[-1] != self.info.dim:
                raise SearchError(
                    f"query embedding is {e.shape[-1]}-d but table {self.table.name!r} holds "
                    f"{self.info.dim}-d embeddings"
                )
        return embs

    # ---- approximate index
    def approx_path(self, method: str = "pooled") -> Path:
        """Where the pooled index of this table lives (beside a local store)."""
        return _approx.pooled_index_path(self.store, self.table)

    def approx_info(self) -> dict | None:
        """What the approximate index holds (None if there is none)."""
        return _approx.approx_info(self.store, self.table)

    def build_approx_index(
        self,
        method: str = "pooled",
        *,
        pool_factor: int = 4,
        kmeans_iters: int = 4,
        num_partitions: int | None = None,
        num_sub_vectors: int | None = None,
        batch_rows: int = 256,
        progress=None,
    ) -> dict:
        """Build (or rebuild) the approximate index (see :mod:`nomic_memory.search.approx`); returns its
        description."""
        if method not in _approx.APPROX_METHODS:
            raise UsageError(f"unknown approximate index {method!r}; choose one of {', '.join(_approx.APPROX_METHODS)}")
        if method == "lance":
            return _approx.build_lance_index(self.table, num_partitions=num_partitions, num_sub_vectors=num_sub_vectors)
        if self.info.kind != "colqwen":
            raise SearchError(
                "the pooled index is for ColQwen (multi-vector) tables; a BiQwen table holds one "
                "vector per image already: use method 'lance' (or exact search)"
            )
        return _approx.build_pooled_index(
            self.table,
            self.approx_path("pooled"),
            pool_factor=pool_factor,
            kmeans_iters=kmeans_iters,
            batch_rows=batch_rows,
            progress=progress,
        )

    def _approx_search(
        self,
        ds,
        embs: list[np.ndarray],
        k: int,
        rerank: int | None,
        nprobes: int | None,
        method: str | None,
        where: str | None,
    ) -> list[list[Hit]]:
        depth = max(k, rerank if rerank is not None else max(10 * k, 100))
        method = _approx.resolve_method(self.store, self.table, method)
        scan = self._scan()
        if method == "lance":
            cands = _approx.lance_candidates(self.table, embs, depth, nprobes=nprobes, where=where)
        else:
            cands = _approx.pooled_candidates(self.store, self.table, embs, depth, scan, where=where)
        tops = _approx.rerank(ds, self.info, embs, k, cands, scan, rowids=method == "lance")
        return [to_hits(top)[0] for top in tops]

    # ---- rows by id
    def _rows(self) -> tuple:
        """``(dataset, metadata table, id -> position)`` of the current table version, cached
        until the table changes (one scan of the small columns, never of the embeddings)."""
        ds = self.table.table.to_lance()
        with self._rows_lock:
            if self._rows_cache is None or self._rows_cache[0].version != ds.version:
                cols = [f.name for f in ds.schema if f.name != "embedding"]
                meta = ds.to_table(columns=cols, scan_in_order=True)
                keys = meta.select(["root", "path", "page"]).to_pydict()
                ids = {
                    row_id(r, p, pg): i for i, (r, p, pg) in enumerate(zip(keys["root"], keys["path"], keys["page"]))
                }
                self._rows_cache = (ds, meta, ids)
            return self._rows_cache

    def row(self, id: str) -> dict | None:
        """The metadata columns of the row with this :func:`row_id` (None if there is none), as
        JSON-ready values (``embedded_at`` an ISO 8601 string), plus ``id`` and ``file``."""
        return self.rows([id])[0]

    def rows(self, ids: list[str]) -> list[dict | None]:
        """:meth:`row` of each id, in order, looked up together (one ``take`` of the metadata)."""
        _, meta, positions = self._rows()
        found = [(i, positions[id]) for i, id in enumerate(ids) if id in positions]
        out: list[dict | None] = [None] * len(ids)
        if not found:
            return out
        for (i, _), d in zip(found, meta.take([pos for _, pos in found]).to_pylist()):
            for key, v in d.items():
                if hasattr(v, "isoformat"):
                    d[key] = v.isoformat()
            d["page"] = int(d.get("page") or 0)
            out[i] = {**d, "id": ids[i], "file": os.path.join(d["root"], d["path"])}
        return out

    def row_embedding(self, id: str) -> np.ndarray | None:
        """The stored vectors of the row with this id, float32: ``(n_vectors, dim)`` for ColQwen,
        ``(dim,)`` for BiQwen (None if there is no such row)."""
        ds, _, ids = self._rows()
        pos = ids.get(id)
        if pos is None:
            return None
        t = ds.take([pos], columns=["embedding"])
        return embedding_to_numpy(t.column("embedding")[0], self.info.kind, self.info.dim)


__all__ = [
    "Hit",
    "Index",
    "SearchError",
    "ModelMismatchError",
    "WHERE_COLUMNS",
    "check_model",
    "check_where",
    "row_id",
    "to_hits",
]
