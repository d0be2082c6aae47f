"""The on-disk embedding store: one LanceDB table per model.

LanceDB stores multi-vector columns natively (``list<fixed_size_list<float16, 128>>``), commits
each write atomically (a run killed mid-write loses at most the batch in flight), and the tables
are plain Lance datasets other tools (DuckDB, Polars, pandas, Spark) can read.

Rows are keyed by ``(root, path)``: the absolute directory that was embedded and the image's path
relative to it.  Each batch is written with one ``merge_insert`` on that key, so re-embedding a
changed file replaces its row and no key is ever stored twice.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Iterator

import numpy as np
import pyarrow as pa

META_KEY = b"nomic_memory"
SCHEMA_VERSION = 1


# Lance file format of new tables.  2.0 rather than LanceDB's default (2.1+/2.2 structural
# encoding): a search scans the whole embedding column, and 2.2 decodes
# list<fixed_size_list<float16, 128>> with ~6x the CPU of 2.0 (BENCHMARKS.md, Search), which
# halves single-query latency.  Existing tables keep the format they were made with.
LANCE_FORMAT = "2.0"


def is_uri(location: str | Path) -> bool:
    """An object-storage (or other non-local) location such as ``s3://bucket/prefix``."""
    return isinstance(location, str) and "://" in location and not location.startswith("file://")


def default_store_path() -> Path | str:
    """``$NOMIC_MEMORY_STORE``, else ``$XDG_DATA_HOME/nomic-memory/store`` (~/.local/share/...)."""
    env = os.environ.get("NOMIC_MEMORY_STORE")
    if env:
        return env if is_uri(env) else Path(env).expanduser()
    base = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(base) / "nomic-memory" / "store"


@dataclass(frozen=True)
class TableInfo:
    """What a table's embeddings were made with (saved in the Lance schema metadata)."""

    model_id: str
    revision: str
    kind: str
    dim: int
    fingerprint: str
    storage_dtype: str  # float16 | float32
    seed: int = 0

    def to_json(self) -> str:
        return json.dumps({**self.__dict__, "schema_version": SCHEMA_VERSION})

    @classmethod
    def from_json(cls, s: str | bytes) -> "TableInfo":
        d = json.loads(s)
        d.pop("schema_version", None)
        return cls(**d)


@dataclass
class Record:
    root: str
    path: str
    content_hash: str
    size: int
    mtime: float
    width: int
    height: int
    embedding: np.ndarray  # (n, dim) for colqwen, (dim,) for biqwen
    dtype: str  # compute dtype of the model that made it
    page: int = 0


def schema_for(info: TableInfo) -> pa.Schema:
    vt = pa.float16() if info.storage_dtype == "float16" else pa.float32()
    emb = pa.list_(pa.list_(vt, info.dim)) if info.kind == "colqwen" else pa.list_(vt, info.dim)
    fields = [
        pa.field("root", pa.string(), nullable=False),
        pa.field("path", pa.string(), nullable=False),
        pa.field("page", pa.int32()),
        pa.field("content_hash", pa.string()),
        pa.field("size", pa.int64()),
        pa.field("mtime", pa.float64()),
        pa.field("width", pa.int32()),
        pa.field("height", pa.int32()),
        pa.field("n_vectors", pa.int32()),
        pa.field("model_id", pa.string()),
        pa.field("model_revision", pa.string()),
        pa.field("proj_fingerprint", pa.string()),
        pa.field("dtype", pa.string()),
        pa.field("embedded_at", pa.timestamp("ms", tz="UTC")),
        pa.field("embedding", emb),
    ]
    return pa.schema(fields, metadata={META_KEY: info.to_json().encode()})


from .errors import StoreError  # noqa: E402  (re-exported)


class Store:
    """One LanceDB database of embedding tables: a local directory (``file://`` URIs too), or an
    object-storage URI (``s3://bucket/prefix``, ``gs://...``, ``az://...``) that LanceDB reads and
    writes directly, with credentials from the environment (``AWS_ACCESS_KEY_ID``, ...) or
    ``storage_options``.  Every write is one atomic commit by a single writer (the driver of a
    run), so object storage needs no locking here.

    ``path`` is a :class:`~pathlib.Path` for a local store and the URI string otherwise."""

    local: bool = True  # False for object storage (no side files such as the pooled index)

    def __init__(self, path: str | Path, create: bool = True, storage_options: dict[str, str] | None = None):
        import lancedb

        location = str(path)
        self.local = not is_uri(location)
        if self.local:
            if location.startswith("file://"):
                location = location[len("file://"):]
            self.path: Path | str = Path(location).expanduser().resolve()
            if not create and not self.path.is_dir():
                raise StoreError(f"no store at {self.path}")
            self.path.mkdir(parents=True, exist_ok=True)
        else:
            self.path = location.rstrip("/")
        try:
            self.db = lancedb.connect(str(self.path), storage_options={
                "new_table_data_storage_version": LANCE_FORMAT, **(storage_options or {})})
        except Exception as e:  # a malformed URI, an unknown scheme, missing credentials
            raise StoreError(f"cannot open the store at {self.path}: {e}") from None

    def all_table_names(self) -> list[str]:
        """Every table, including nomic-memory's own bookkeeping (names starting with ``_``)."""
        res = self.db.list_tables()
        names = getattr(res, "tables", res)
        return sorted(n for n in names)

    def table_names(self) -> list[str]:
        """The embedding tables (one per model)."""
        return [n for n in self.all_table_names() if not n.startswith("_")]

    def open_table(self, name: str) -> "EmbeddingTable":
        if name not in self.table_names():
            raise StoreError(f"store {self.path} has no table {name!r} (tables: {', '.join(self.table_names()) or 'none'})")
        return EmbeddingTable(self.db.open_table(name))

    def only_table(self) -> "EmbeddingTable":
        names = self.table_names()
        if not names:
            raise StoreError(f"store {self.path} is empty: embed a directory into it first")
        if len(names) > 1:
            raise StoreError(f"store {self.path} holds several models ({', '.join(names)}); choose one with --table")
        return self.open_table(names[0])

    def create_or_open(self, name: str, info: TableInfo) -> "EmbeddingTable":
        if name in self.table_names():
            t = EmbeddingTable(self.db.open_table(name))
            old = t.info
            if (old.kind, old.dim) != (info.kind, info.dim):
                raise StoreError(f"table {name!r} in {self.path} holds {old.kind} {old.dim}-d embeddings, "
                                 f"not {info.kind} {info.dim}-d")
            return t
        return EmbeddingTable(self.db.create_table(name, schema=schema_for(info)))


class EmbeddingTable:
    def __init__(self, table):
        self.table = table
        self.name = table.name
        meta = table.schema.metadata or {}
        if META_KEY not in meta:
            raise StoreError(f"table {self.name!r} was not written by nomic-memory")
        self.info = TableInfo.from_json(meta[META_KEY])

    @property
    def vector_type(self) -> pa.DataType:
        return pa.float16() if self.info.storage_dtype == "float16" else pa.float32()

    def count(self) -> int:
        return self.table.count_rows()

    def version(self) -> int:
        return self.table.version

    def index(self, root: str | None = None) -> dict[str, dict]:
        """``path -> {content_hash, model_revision, proj_fingerprint}`` (for one root, if given)."""
        cols = ["root", "path", "content_hash", "model_revision", "proj_fingerprint"]
        q = self.table.search().select(cols)
        if root is not None:
            q = q.where(f"root = {_sql_str(root)}")
        t = q.limit(None).to_arrow() if hasattr(q, "limit") else q.to_arrow()
        d = t.to_pydict()
        return {p: {"content_hash": h, "model_revision": r, "proj_fingerprint": f, "root": ro}
                for ro, p, h, r, f in zip(d["root"], d["path"], d["content_hash"], d["model_revision"], d["proj_fingerprint"])}

    def _arrow(self, records: list[Record]) -> pa.Table:
        import datetime as dt

        info = self.info
        np_dt = np.float16 if info.storage_dtype == "float16" else np.float32
        now = dt.datetime.now(dt.timezone.utc)
        embs = []
        for r in records:
            e = np.asarray(r.embedding, dtype=np_dt)
            embs.append(e)
        if info.kind == "colqwen":
            flat = np.concatenate([e.reshape(-1) for e in embs]) if embs else np.zeros(0, np_dt)
            inner = pa.FixedSizeListArray.from_arrays(pa.array(flat, type=self.vector_type), info.dim)
            offsets = np.concatenate([[0], np.cumsum([e.shape[0] for e in embs])]).astype(np.int32)
            emb_arr = pa.ListArray.from_arrays(pa.array(offsets), inner)
            nvec = [int(e.shape[0]) for e in embs]
        else:
            flat = np.concatenate([e.reshape(-1) for e in embs])
            emb_arr = pa.FixedSizeListArray.from_arrays(pa.array(flat, type=self.vector_type), info.dim)
            nvec = [1] * len(embs)
        cols = {
            "root": [r.root for r in records], "path": [r.path for r in records],
            "page": [r.page for r in records],
            "content_hash": [r.content_hash for r in records], "size": [r.size for r in records],
            "mtime": [r.mtime for r in records], "width": [r.width for r in records],
            "height": [r.height for r in records], "n_vectors": nvec,
            "model_id": [info.model_id] * len(records), "model_revision": [info.revision] * len(records),
            "proj_fingerprint": [info.fingerprint] * len(records), "dtype": [r.dtype for r in records],
            "embedded_at": [now] * len(records),
        }
        schema = self.table.schema
        arrays = [pa.array(cols[f.name], type=f.type) for f in schema if f.name != "embedding"]
        arrays.append(emb_arr.cast(schema.field("embedding").type))
        return pa.Table.from_arrays(arrays, schema=schema)

    def upsert(self, records: list[Record], known_new: set[str] | None = None) -> None:
        """Write one batch atomically, replacing rows with the same (root, path).

        ``known_new``: paths the caller knows are not in the table (it read the table's index at
        the start of the run, and is its only writer).  Those are appended, which costs
        O(batch); the rest go through ``merge_insert``, whose key join scans the table.
        """
        if not records:
            return
        if known_new is not None:
            fresh = [r for r in records if r.path in known_new]
            if len(fresh) == len(records):
                self.table.add(self._arrow(fresh))
                return
            if fresh:
                self.table.add(self._arrow(fresh))
                records = [r for r in records if r.path not in known_new]
        data = self._arrow(records)
        (self.table.merge_insert(["root", "path"]).when_matched_update_all()
         .when_not_matched_insert_all().execute(data))

    def delete_paths(self, root: str, paths: Iterable[str]) -> int:
        paths = list(paths)
        n = 0
        for i in range(0, len(paths), 500):
            chunk = paths[i:i + 500]
            before = self.count()
            self.table.delete(f"root = {_sql_str(root)} AND path IN ({', '.join(_sql_str(p) for p in chunk)})")
            n += before - self.count()
        return n

    def optimize(self) -> None:
        """Compact the small per-batch fragments into few large ones."""
        try:
            self.table.optimize()
        except Exception:  # compaction is an optimisation; a failure must not fail the run
            pass

    def to_arrow(self, columns: list[str] | None = None) -> pa.Table:
        t = self.table.to_arrow()
        return t.select(columns) if columns else t

    def iter_batches(self, columns: list[str] | None = None, batch_size: int = 1024) -> Iterator[pa.RecordBatch]:
        """Stream the table from disk without materialising it."""
        ds = self.table.to_lance()
        yield from ds.to_batches(columns=columns, batch_size=batch_size)


def _sql_str(s: str) -> str:
    return "'" + s.replace("'", "''") + "'"


def embedding_to_numpy(value, kind: str, dim: int) -> np.ndarray:
    """Convert one row's Arrow embedding to float32 numpy."""
    if isinstance(value, pa.Scalar):  # a ListScalar's ``values`` is a slice; flatten() honours it
        vals = value.values
        if pa.types.is_fixed_size_list(vals.type) or pa.types.is_list(vals.type):
            vals = vals.flatten()
        value = vals.to_numpy(zero_copy_only=False)
    a = np.asarray(value, dtype=np.float32)
    return a.reshape(-1, dim) if kind == "colqwen" else a.reshape(dim)
