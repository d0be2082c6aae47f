"""Approximate search: a cheap candidate set, re-ranked exactly.

An approximate search scores a compact copy of the table and re-ranks the best candidates
exactly, so the scores it returns are exact and only the candidate set is approximate:

* ``pooled`` (default, ColQwen): every document's vectors are clustered (k-means seeded with
  consecutive groups) into ``n / pool_factor`` normalised centroids, stored as a side dataset under
  ``<store>/_nomic_memory_approx/``; a search scans that ``pool_factor`` times smaller copy with
  the exact engine (:mod:`nomic_memory.search.scoring`) and re-ranks the top ``rerank`` documents;
* ``lance``: LanceDB's own IVF_PQ index on the embedding column (a multivector index with the
  cosine metric for ColQwen), whose candidates are re-ranked the same way.

A row filter (``where``) restricts the candidates themselves (LanceDB's pre-filter; for the pooled
copy, a mask of the table's matching rows), so a filtered search re-ranks ``rerank`` matching
rows rather than whatever survives of an unfiltered candidate list.

The pooled copy records a signature of the table's data and is refused once the table changed.
"""

from __future__ import annotations

import json
import os
import shutil
import time
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import pyarrow as pa

from nomic_memory.errors import SearchError, UsageError
from nomic_memory.search.scoring import (
    META_COLUMNS,
    ScanOptions,
    TopK,
    documents,
    meta_getter,
    multivector_matrix,
    score_rows,
)
from nomic_memory.store.mapped import MappedVectors
from nomic_memory.store.table import EmbeddingTable, Store, TableInfo

APPROX_DIR = "_nomic_memory_approx"
APPROX_META = b"nomic_memory_approx"
APPROX_METHODS = ("pooled", "lance")


# ------------------------------------------------------------------ where the indexes are
def pooled_index_path(store: Store, table: EmbeddingTable) -> Path:
    """The pooled side dataset of ``table``: beside a local store (never inside the LanceDB
    database, whose table list must stay the store's tables)."""
    if not store.local:
        raise SearchError(
            f"the pooled approximate index is kept beside a local store; {store.path} is "
            "remote: use --index-method lance (LanceDB's own index, stored in the table)"
        )
    return Path(store.path) / APPROX_DIR / f"{table.name}-pooled.lance"


def lance_vector_index(table: EmbeddingTable):
    """LanceDB's index on the embedding column, or None."""
    try:
        for ix in table.table.list_indices():
            if "embedding" in list(getattr(ix, "columns", [])):
                return ix
    except Exception:  # an unreadable index list means no usable index
        return None
    return None


def approx_info(store: Store, table: EmbeddingTable) -> dict | None:
    """What the approximate index of ``table`` holds (None if there is none)."""
    p = pooled_index_path(store, table) if store.local else None
    if p is not None and p.exists():
        import lance

        return json.loads(lance.dataset(str(p)).schema.metadata[APPROX_META])
    ix = lance_vector_index(table)
    return {"method": "lance", "index": str(ix)} if ix is not None else None


def resolve_method(store: Store, table: EmbeddingTable, method: str | None) -> str:
    """The index a search uses: ``method``, or whichever exists (pooled first); refused if absent."""
    if method is not None and method not in APPROX_METHODS:
        raise UsageError(f"unknown approximate index {method!r}; choose one of {', '.join(APPROX_METHODS)}")
    has_pooled = (store.local or method == "pooled") and pooled_index_path(store, table).exists()
    has_lance = method != "pooled" and lance_vector_index(table) is not None
    if method is None:
        method = "pooled" if has_pooled else "lance" if has_lance else None
    if method is None or (method == "pooled" and not has_pooled) or (method == "lance" and not has_lance):
        raise SearchError(
            f"table {table.name!r} has no {method or 'approximate'} index: build one with "
            "`nomic-memory search --build-index` (or Index.build_approx_index())"
        )
    return method


# ------------------------------------------------------------------ building
def build_lance_index(
    table: EmbeddingTable, *, num_partitions: int | None = None, num_sub_vectors: int | None = None
) -> dict:
    """(Re)build LanceDB's IVF_PQ index on the embedding column (cosine: the vectors are unit)."""
    t0 = time.perf_counter()
    ds = table.table.to_lance()
    n_vec = int(
        np.asarray(
            ds.to_table(columns=["n_vectors"]).column("n_vectors").to_numpy(zero_copy_only=False), dtype=np.int64
        ).sum()
    )
    parts = num_partitions or max(1, min(4096, int(np.sqrt(max(n_vec, 1)))))
    subv = num_sub_vectors or max(1, table.info.dim // 8)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        table.table.create_index(
            metric="cosine",
            vector_column_name="embedding",
            index_type="IVF_PQ",
            num_partitions=parts,
            num_sub_vectors=subv,
            replace=True,
        )
    return {
        "method": "lance",
        "num_partitions": parts,
        "num_sub_vectors": subv,
        "vectors": n_vec,
        "seconds": round(time.perf_counter() - t0, 3),
    }


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
            counts = torch.zeros((len(docs), m), dtype=torch.float32).scatter_add_(
                1, grp, torch.ones_like(grp, dtype=torch.float32)
            )
            c = torch.where((counts > 0).unsqueeze(2), new, c)
        c = c / c.norm(dim=2, keepdim=True).clamp_min(1e-12)
        for j, i in enumerate(docs):
            out[i] = c[j]
    return out, [int(t.shape[0]) for t in out]


def _pooled_batches(
    ds,
    info: TableInfo,
    schema: pa.Schema,
    pool_factor: int,
    iters: int,
    batch_rows: int,
    counters: dict,
    progress: Callable[[int, int], None] | None,
):
    """The pooled copy of ``ds``, batch by batch: ``pos`` (the row's position in the table's
    ordered scan) and its pooled vectors (float16)."""
    import torch

    vt = pa.float16()
    rows = counters["rows"]
    base = 0
    for batch in ds.to_batches(columns=["embedding"], batch_size=batch_rows, scan_in_order=True):
        vecs, offs = multivector_matrix(batch.column("embedding"))
        x = torch.from_numpy(vecs.astype(np.float32))  # a writable float32 copy
        pooled, lens = _pool_documents(x, offs, pool_factor, iters)
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


def build_pooled_index(
    table: EmbeddingTable,
    path: Path,
    *,
    pool_factor: int = 4,
    kmeans_iters: int = 4,
    batch_rows: int = 256,
    progress=None,
) -> dict:
    """Write the pooled side dataset for ``table`` to ``path`` (replacing any previous one)."""
    import lance

    if pool_factor < 1:
        raise UsageError("pool_factor must be at least 1")
    if table.info.kind != "colqwen":
        raise SearchError(
            "the pooled index is for ColQwen (multi-vector) tables; a BiQwen table holds one "
            "vector per image already: use method 'lance' (or exact search)"
        )
    t0 = time.perf_counter()
    info = table.info
    ds = table.table.to_lance()
    version, rows = ds.version, ds.count_rows()
    meta = {
        "method": "pooled",
        "source_table": table.name,
        "source_version": version,
        "rows": rows,
        "data_signature": data_signature(ds),
        "pool_factor": pool_factor,
        "kmeans_iters": kmeans_iters,
        "fingerprint": info.fingerprint,
    }
    schema = pa.schema(
        [pa.field("pos", pa.int64()), pa.field("embedding", pa.list_(pa.list_(pa.float16(), info.dim)))],
        metadata={APPROX_META: json.dumps(meta).encode()},
    )
    counters = {"vectors": 0, "pooled": 0, "rows": rows}
    tmp = path.with_name(path.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.parent.mkdir(parents=True, exist_ok=True)
    reader = pa.RecordBatchReader.from_batches(
        schema, _pooled_batches(ds, info, schema, pool_factor, kmeans_iters, batch_rows, counters, progress)
    )
    # format 2.0: its plain encoding of list<fixed_size_list> scans ~6x cheaper than 2.1+ (measured)
    lance.write_dataset(reader, str(tmp), schema=schema, mode="create", data_storage_version="2.0")
    shutil.rmtree(path, ignore_errors=True)
    os.replace(tmp, path)
    return {
        **meta,
        "vectors": counters["vectors"],
        "pooled_vectors": counters["pooled"],
        "seconds": round(time.perf_counter() - t0, 3),
        "path": str(path),
    }


def data_signature(ds) -> str:
    """A digest of the dataset's data fragments: changes when rows are added, deleted or
    rewritten, not when only an index or metadata is added (which also makes a new version)."""
    import hashlib

    h = hashlib.sha256()
    for f in ds.get_fragments():
        h.update(json.dumps(f.metadata.to_json(), sort_keys=True, default=str).encode())
    return h.hexdigest()[:16]


# ------------------------------------------------------------------ searching
def matching_row_ids(ds, where: str) -> np.ndarray:
    """The Lance row ids of the rows matching ``where`` (a checked predicate), sorted."""
    t = ds.to_table(columns=[], with_row_id=True, filter=where)
    return np.sort(t.column("_rowid").to_numpy())


def matching_mask(ds, where: str) -> np.ndarray:
    """Per position in the table's ordered scan (the pooled copy's ``pos``): does the row match?"""
    every = ds.to_table(columns=[], with_row_id=True, scan_in_order=True).column("_rowid").to_numpy()
    return np.isin(every, matching_row_ids(ds, where))


def pooled_candidates(
    store: Store,
    table: EmbeddingTable,
    embs: Sequence[np.ndarray],
    depth: int,
    scan: ScanOptions,
    where: str | None = None,
) -> list[list[int]]:
    """Each query's best ``depth`` rows (positions) by the pooled copy; refused if it is stale."""
    import lance

    ds = table.table.to_lance()
    side = lance.dataset(str(pooled_index_path(store, table)))
    meta = json.loads(side.schema.metadata[APPROX_META])
    if meta["data_signature"] != data_signature(ds):
        raise SearchError(
            f"the approximate index of table {table.name!r} is out of date (the table "
            f"changed since it was built at version {meta['source_version']}); rebuild it with "
            "`nomic-memory search --build-index` or search without --approx"
        )
    side_info = TableInfo(**{**table.info.__dict__, "storage_dtype": "float16"})
    mask = matching_mask(ds, where) if where else None
    top = scan.scan(side, side_info, embs, depth, batch_rows=4 * (scan.batch_rows or 32), column_meta=False, mask=mask)
    return [ps.tolist() for ps in top.pos]


def lance_candidates(
    table: EmbeddingTable, embs: Sequence[np.ndarray], depth: int, nprobes: int | None = None, where: str | None = None
) -> list[list[int]]:
    """Each query's best ``depth`` rows (Lance row ids) by LanceDB's index, pre-filtered by ``where``."""
    info = table.info
    # LanceDB pre-filters; the matching ids are checked too, so a candidate outside the filter
    # can never reach the results whatever the index does
    allowed = set(matching_row_ids(table.table.to_lance(), where).tolist()) if where else None
    cands = []
    for q in embs:
        qq = q.reshape(-1, info.dim) if info.kind == "colqwen" else q.reshape(info.dim)
        qb = table.table.search(qq, vector_column_name="embedding").limit(depth)
        if nprobes:
            qb = qb.nprobes(nprobes)
        if where:
            qb = qb.where(where, prefilter=True)
        # selecting _distance (and nothing heavy) is what LanceDB asks of a query that projects
        r = qb.with_row_id(True).select(["_distance"]).to_arrow()
        ids = r.column("_rowid").to_pylist()
        cands.append(ids if allowed is None else [i for i in ids if i in allowed])
    return cands


def rerank(
    ds,
    info: TableInfo,
    embs: Sequence[np.ndarray],
    k: int,
    cands: list[list[int]],
    scan: ScanOptions,
    rowids: bool = False,
    mapped: MappedVectors | None = None,
) -> list[TopK]:
    """Exact scores of each query's own candidates (row positions, or Lance row ids), their
    vectors read in parallel chunks (:func:`score_rows`): through ``mapped`` (row ids only),
    and with Lance's ``take`` for what it does not map; the metadata of the winners only, in
    one ``take``.  Ties break by candidate id."""
    take = ds._take_rows if rowids else ds.take

    def read(chunk: list[int]) -> list[np.ndarray]:
        got: list[np.ndarray | None] = mapped.rows(ds, chunk) if mapped is not None and rowids else [None] * len(chunk)
        missing = [i for i, d in enumerate(got) if d is None]
        if missing:
            for i, d in zip(missing, documents(take([chunk[i] for i in missing], columns=["embedding"]))):
                got[i] = d
        return got  # type: ignore[return-value]  # every None replaced

    ids = [np.unique(np.asarray(cs, dtype=np.int64)) for cs in cands]
    scores = score_rows(
        read,
        info,
        embs,
        ids,
        device=scan.device,
        tile_vectors=scan.tile_vectors,
        workers=scan.workers,
        release=(lambda chunk: mapped.release(ds, chunk)) if mapped is not None and rowids else None,
    )
    tops = []
    for mine, sc in zip(ids, scores):
        top = TopK(1, k)
        top.update(sc[None, :], mine)
        tops.append(top)
    winners = np.unique(np.concatenate([p for top in tops for p in top.pos] or [np.zeros(0, np.int64)]))
    if len(winners):
        meta = meta_getter(take(winners.tolist(), columns=META_COLUMNS).combine_chunks().to_batches()[0])
        found = dict(zip(winners.tolist(), meta(np.arange(len(winners)))))
        for top in tops:
            top.meta = {int(p): found[int(p)] for p in top.pos[0]}
    return tops


def recall_at_k(approx: list[list], exact: list[list], k: int = 10) -> float:
    """Mean fraction of the exact top-k (lists of hits) that the approximate top-k found."""
    vals = []
    for a, e in zip(approx, exact):
        want = {(h.root, h.path, h.page) for h in e[:k]}
        got = {(h.root, h.path, h.page) for h in a[:k]}
        vals.append(len(want & got) / max(1, len(want)))
    return float(np.mean(vals)) if vals else 0.0


__all__ = [
    "APPROX_DIR",
    "APPROX_META",
    "APPROX_METHODS",
    "approx_info",
    "build_lance_index",
    "build_pooled_index",
    "data_signature",
    "lance_candidates",
    "lance_vector_index",
    "matching_mask",
    "matching_row_ids",
    "pooled_candidates",
    "pooled_index_path",
    "recall_at_k",
    "rerank",
    "resolve_method",
]
