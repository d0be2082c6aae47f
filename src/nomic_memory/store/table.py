"""The on-disk embedding store: one LanceDB table per model.

LanceDB stores multi-vector columns natively (``list<fixed_size_list<float16, 128>>``), commits
each write atomically (a run killed mid-write loses at most the batch in flight), and the tables
are plain Lance datasets other tools (DuckDB, Polars, pandas, Spark) can read.

Rows are keyed by ``(root, path, page)``: the absolute directory that was embedded, the file's path
relative to it, and the page (0 for an image file).  Paths are stored as *keys*
(:func:`path_to_key`): the path itself when it is valid UTF-8, else a lossless escaped form, so a
file whose name is not UTF-8 is embedded, skipped when unchanged and pruned like any other.

Writes are safe against a second writer: on a local store every write takes a lock file beside
the table and re-reads, under it, which of the rows believed new already exist, so two runs on the
same folder never store a key twice; a store that holds duplicates anyway (an older version, or
object storage, which has no lock) is repaired by :meth:`EmbeddingTable.dedupe`.  Every row carries
a checksum of its stored vectors (``embedding_checksum``) that ``nomic-memory check`` verifies; rows
whose vectors are not finite are refused, never written.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import zlib
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import datetime as dt

import numpy as np
import pyarrow as pa

from nomic_memory.locations import default_store_path, is_uri  # noqa: F401  (re-exported: part of this module's API)

log = logging.getLogger(__name__)

META_KEY = b"nomic_memory"
#: 1: the original columns.  2: ``embedding_checksum`` (tables of version 1 still open and are
#: written without it; ``check`` then verifies what it can without checksums).
SCHEMA_VERSION = 2
KEY_COLUMNS = ("root", "path", "page")
#: Versions older than this are deleted by :meth:`EmbeddingTable.optimize` (a search that opened
#: the table less than this long ago can still finish reading the version it started with).
CLEANUP_GRACE = __import__("datetime").timedelta(minutes=5)


# Lance file format of new tables.  2.0 rather than LanceDB's default (2.1+/2.2 structural
# encoding): a search scans the whole embedding column, and 2.2 decodes
# list<fixed_size_list<float16, 128>> with ~6x the CPU of 2.0 (BENCHMARKS.md, Search), which
# halves single-query latency.  Existing tables keep the format they were made with.
LANCE_FORMAT = "2.0"


# --------------------------------------------------------------------------- path keys
def path_to_key(rel: str) -> str:
    r"""The form in which a path (relative path or root) is stored: lossless and readable.

    On POSIX a file name is bytes; Python decodes the bytes that are not UTF-8 to lone surrogates
    (``os.fsdecode``, surrogateescape), which Arrow cannot store.  The key writes each such byte
    as ``\xNN`` and, so that the escape stays unambiguous, a backslash that precedes ``\``, a
    raw byte or ``xNN`` as ``\\``.  Every valid UTF-8 path without such backslashes (nearly all
    of them, and every key earlier versions wrote) is its own key.  :func:`key_to_path` inverts
    it exactly, and ``os.fsencode(key_to_path(key))`` gives the file's real bytes.
    """
    if "\\" not in rel and not _SURROGATE.search(rel):
        return rel
    out = []
    n = len(rel)
    for i, c in enumerate(rel):
        o = ord(c)
        if 0xDC80 <= o <= 0xDCFF:
            out.append(f"\\x{o - 0xDC00:02x}")
        elif c == "\\":
            nxt = rel[i + 1] if i + 1 < n else ""
            ambiguous = nxt == "\\" or (nxt and 0xDC80 <= ord(nxt) <= 0xDCFF) or _HEX_ESCAPE.match(rel, i + 1)
            out.append("\\\\" if ambiguous else "\\")
        else:
            out.append(c)
    return "".join(out)


def key_to_path(key: str) -> str:
    """Inverse of :func:`path_to_key`: the path as ``os.fsdecode`` gives it (surrogates for bytes
    that are not UTF-8), ready for ``Path(root, ...)`` or ``os.fsencode``."""
    if "\\" not in key:
        return key
    return _UNESCAPE.sub(lambda m: "\\" if m.group(0) == "\\\\" else chr(0xDC00 + int(m.group(1), 16)), key)


_SURROGATE = re.compile("[\udc80-\udcff]")
_HEX_ESCAPE = re.compile(r"x[0-9a-f]{2}")
_UNESCAPE = re.compile(r"\\\\|\\x([89a-f][0-9a-f])")


@dataclass(frozen=True)
class TableInfo:
    """What a table's embeddings were made with (saved in the Lance schema metadata)."""

    model_id: str
    revision: str
    kind: str
    dim: int
    fingerprint: str
    storage_dtype: str  # float16 | float32: the dtype of the stored vectors
    seed: int = 0

    def to_json(self) -> str:
        return json.dumps({**self.__dict__, "schema_version": SCHEMA_VERSION})

    @classmethod
    def from_json(cls, s: str | bytes) -> TableInfo:
        d = json.loads(s)
        d.pop("schema_version", None)
        return cls(**{k: v for k, v in d.items() if k in cls.__dataclass_fields__})


@dataclass
class Record:
    root: str  # as os.fsdecode gives it (the store converts to keys)
    path: str  # relative path, as os.fsdecode gives it
    # None: not known (an imported row whose source did not record it; ``embed`` always does)
    content_hash: str | None
    size: int | None
    mtime: float | None
    width: int | None
    height: int | None
    embedding: np.ndarray  # (n, dim) for colqwen, (dim,) for biqwen
    dtype: str  # compute dtype of the model that made it (the vectors are stored in the table's storage dtype)
    page: int = 0
    # The model that made it (None: the table's): a row embedded by a model whose projection
    # differs from the table's says so, and is re-embedded when that matters.
    model_revision: str | None = None
    proj_fingerprint: str | None = None


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
        pa.field("embedding_checksum", pa.int64()),
        pa.field("embedding", emb),
    ]
    return pa.schema(fields, metadata={META_KEY: info.to_json().encode()})


def embedding_checksum(stored: np.ndarray) -> int:
    """CRC-32 of one row's vectors as stored (storage dtype, little-endian, row-major).

    Written with every row and recomputed by ``check`` from what the table returns: a flipped
    bit in a data file that still decodes shows up as a mismatch instead of a silently wrong
    score."""
    a = np.ascontiguousarray(stored)
    if a.dtype.byteorder == ">":
        a = a.astype(a.dtype.newbyteorder("<"))
    return zlib.crc32(a.tobytes())


from nomic_memory.errors import StoreError  # noqa: E402  (re-exported)
from nomic_memory.store.failures import TABLE  # noqa: E402
from nomic_memory.store.roots import forget_roots  # noqa: E402


@dataclass
class WrittenRows:
    """The rows one write committed, as stored: keys as the table holds them, the storage-dtype
    vectors and their checksums; ``version_before``/``version`` are the table versions around the
    commit (read under the table's write lock)."""

    roots: list[str]
    paths: list[str]
    pages: list[int]
    checksums: list[int]
    embeddings: list[np.ndarray]
    version_before: int
    version: int


#: Called after every committed :meth:`EmbeddingTable.upsert` with ``(table, WrittenRows)``, under
#: the table's write lock.  A layer above the store registers what must follow a write (the search
#: layer's first-stage index codes the new rows from these vectors, so they are never read back).
#: A hook's failure is logged, never raised: the rows are committed by then.
COMMIT_HOOKS: list = []


def on_commit(hook) -> None:
    """Register ``hook(table, written: WrittenRows)`` (once; see :data:`COMMIT_HOOKS`)."""
    if hook not in COMMIT_HOOKS:
        COMMIT_HOOKS.append(hook)


def damaged(store_path, what: str, e: BaseException) -> StoreError:
    """The one-line error for a store whose files cannot be read (a damaged manifest or data file)."""
    reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
    return StoreError(
        f"cannot read {what} in the store at {store_path} ({reason[:200]}); "
        f"run `nomic-memory check --store {store_path}` to find and repair damaged rows"
    )


class Store:
    """One LanceDB database of embedding tables: a local directory (``file://`` URIs too), or an
    object-storage URI (``s3://bucket/prefix``, ``gs://...``, ``az://...``) that LanceDB reads and
    writes directly, with credentials from the environment (``AWS_ACCESS_KEY_ID``, ...) or
    ``storage_options``.  Every write is one atomic commit.  On a local store, writes also take a
    lock file beside the table (see :meth:`EmbeddingTable.upsert`); object storage has no lock, and
    duplicates two concurrent runs could leave there are removed by :meth:`EmbeddingTable.dedupe`.

    ``path`` is a :class:`~pathlib.Path` for a local store and the URI string otherwise."""

    local: bool = True  # False for object storage (no side files such as the pooled index)

    def __init__(self, path: str | Path, create: bool = True, storage_options: dict[str, str] | None = None):
        # late: lancedb takes a second to import; without its REST namespace client's API classes
        from nomic_memory.store.lancedb_import import import_lancedb

        lancedb = import_lancedb()
        location = str(path)
        self.local = not is_uri(location)
        if self.local:
            if location.startswith("file://"):
                location = location[len("file://") :]
            self.path: Path | str = Path(location).expanduser().resolve()
            if self.path.exists() and not self.path.is_dir():
                raise StoreError(
                    f"the store {self.path} is a file, not a store directory; "
                    "pass a directory (new or made by nomic-memory) with --store"
                )
            if not create and not self.path.is_dir():
                raise StoreError(f"no store at {self.path}")
            try:
                self.path.mkdir(parents=True, exist_ok=True)
            except OSError as e:
                raise StoreError(f"cannot create the store directory {self.path}: {e.strerror or e}") from None
        else:
            self.path = location.rstrip("/")
        try:
            self.db = lancedb.connect(
                str(self.path),
                storage_options={"new_table_data_storage_version": LANCE_FORMAT, **(storage_options or {})},
            )
        except Exception as e:  # a malformed URI, an unknown scheme, missing credentials
            raise StoreError(f"cannot open the store at {self.path}: {e}") from None

    def all_table_names(self) -> list[str]:
        """Every table, including nomic-memory's own bookkeeping (names starting with ``_``)."""
        try:
            res = self.db.list_tables()
        except Exception as e:
            raise damaged(self.path, "the list of tables", e) from None
        names: Any = getattr(res, "tables", res)  # newer lancedb: a response object with .tables
        return sorted(str(n) for n in names)

    def table_names(self) -> list[str]:
        """The embedding tables (one per model)."""
        return [n for n in self.all_table_names() if not n.startswith("_")]

    def _open(self, name: str) -> EmbeddingTable:
        try:
            t = self.db.open_table(name)
        except Exception as e:  # a damaged or missing manifest
            raise damaged(self.path, f"table {name!r}", e) from None
        return EmbeddingTable(t, self)

    def open_table(self, name: str) -> EmbeddingTable:
        if name not in self.table_names():
            raise StoreError(
                f"store {self.path} has no table {name!r} (tables: {', '.join(self.table_names()) or 'none'})"
            )
        return self._open(name)

    def only_table(self) -> EmbeddingTable:
        names = self.table_names()
        if not names:
            raise StoreError(f"store {self.path} is empty: embed a directory into it first")
        if len(names) > 1:
            raise StoreError(f"store {self.path} holds several models ({', '.join(names)}); choose one with --table")
        return self.open_table(names[0])

    def create_or_open(self, name: str, info: TableInfo) -> EmbeddingTable:
        with self.lock(name):  # two runs creating the same new table: one creates, one opens
            if name in self.table_names():
                t = self._open(name)
                old = t.info
                if (old.kind, old.dim) != (info.kind, info.dim):
                    raise StoreError(
                        f"table {name!r} in {self.path} holds {old.kind} {old.dim}-d embeddings, "
                        f"not {info.kind} {info.dim}-d"
                    )
                return t
            return EmbeddingTable(self.db.create_table(name, schema=schema_for(info)), self)

    @contextlib.contextmanager
    def lock(self, table: str, wait_message_after: float = 2.0):
        """Exclusive write lock on one table of a local store (no-op on object storage).

        A lock file (``.<table>.lock`` in the store directory) taken with the OS's advisory lock:
        it is released when the holder exits, even by ``kill -9``, so a crashed run never leaves
        a stale lock.  Held only for one write (a batch commit), so a second writer waits
        milliseconds; it logs once if it waits longer."""
        if not self.local:
            yield
            return
        from filelock import FileLock, Timeout

        lock = FileLock(str(Path(self.path) / f".{table}.lock"))
        try:
            try:
                lock.acquire(timeout=wait_message_after)
            except Timeout:
                log.warning("waiting for another nomic-memory process writing to table %s of %s", table, self.path)
                lock.acquire()
        except OSError as e:  # a store this user cannot write (the lock file cannot be created)
            raise StoreError(
                f"cannot write to the store at {self.path}: {e.strerror or e} (lock file {lock.lock_file})"
            ) from None
        try:
            yield
        finally:
            lock.release()

    # ---- housekeeping (``nomic-memory store ...``)
    def drop_table(self, name: str) -> None:
        """Delete a table, its remembered failures and, for a local store, the search side index
        built from it."""
        if name not in self.table_names():
            raise StoreError(
                f"store {self.path} has no table {name!r} (tables: {', '.join(self.table_names()) or 'none'})"
            )
        with self.lock(name):
            try:
                self.db.drop_table(name)
                self.forget_failures(f'"table" = {_sql_str(name)}')
                forget_roots(self, f'"table" = {_sql_str(name)}')
            except Exception as e:
                reason = e.strerror if isinstance(e, OSError) and e.strerror else str(e).strip().splitlines()[0][:200]
                raise StoreError(f"cannot drop table {name!r} in the store at {self.path}: {reason}") from None
        if self.local:  # search's pooled index: <store>/_nomic_memory_approx/<table>-<method>.lance
            import shutil

            for side in (Path(self.path) / "_nomic_memory_approx").glob(f"{name}-*.lance"):
                shutil.rmtree(side, ignore_errors=True)
            # search's first-stage index (search.liveindex.INDEX_DIR): a new table of this name
            # must not inherit it
            shutil.rmtree(Path(self.path) / "_nomic_memory_index" / name, ignore_errors=True)

    def forget_failures(self, where: str) -> None:
        """Delete the remembered failures (:mod:`nomic_memory.store.failures`) matching ``where``."""

        if TABLE in self.all_table_names():
            self.db.open_table(TABLE).delete(where)

    def disk_bytes(self, name: str) -> int | None:
        """Bytes the table's directory takes on disk, old versions included (local stores only)."""
        if not self.local:
            return None
        d = Path(self.path) / f"{name}.lance"
        return sum(f.stat().st_size for f in d.rglob("*") if f.is_file()) if d.is_dir() else 0


class EmbeddingTable:
    def __init__(self, table, store: Store | None = None):
        self.table = table
        self.store = store
        self.name = table.name
        try:
            meta = table.schema.metadata or {}
        except Exception as e:
            raise damaged(getattr(store, "path", "?"), f"table {self.name!r}", e) from None
        if META_KEY not in meta:
            raise StoreError(f"table {self.name!r} was not written by nomic-memory")
        self.info = TableInfo.from_json(meta[META_KEY])
        self.schema_version = int(json.loads(meta[META_KEY]).get("schema_version", 1))
        # (version, fragment ids) whose every row of root ``_seen_root`` this process knows: read
        # by stored_keys(), written by itself, or keys of other writers' rows in ``_foreign``.
        self._seen: tuple[int, frozenset[int]] | None = None
        self._seen_root: str | None = None
        self._foreign: set[tuple[str, str, int]] = set()
        self._written: list | None = None  # during upsert with hooks: (records, vectors, checksums) written

    @property
    def has_checksums(self) -> bool:
        return "embedding_checksum" in self.table.schema.names

    @property
    def vector_type(self) -> pa.DataType:
        return pa.float16() if self.info.storage_dtype == "float16" else pa.float32()

    @property
    def _where(self) -> str:
        return str(getattr(self.store, "path", "the store"))

    def _lock(self):
        return self.store.lock(self.name) if self.store is not None else contextlib.nullcontext()

    @contextlib.contextmanager
    def _write_errors(self, what: str):
        """A failed commit (disk full, read-only store, damaged table) as one StoreError line;
        the commit is atomic, so nothing of the batch was written."""
        try:
            yield
        except StoreError:
            raise
        except Exception as e:
            reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            if isinstance(e, OSError) and e.strerror:
                reason = e.strerror
            raise StoreError(
                f"cannot {what} table {self.name!r} in the store at {self._where}: {reason[:200]} "
                "(the rows committed before are intact)"
            ) from None

    def refresh(self) -> None:
        """See the writes other processes committed since this table was opened."""
        try:
            self.table.checkout_latest()
        except Exception:  # noqa: BLE001 - already at the latest version
            pass

    def count(self) -> int:
        return self.table.count_rows()

    def version(self) -> int:
        return self.table.version

    def stored_keys(self, root: str | None = None) -> dict[tuple[str, int], dict]:
        """``(path, page) -> {content_hash, model_revision, proj_fingerprint, root}`` (for one root,
        if given).  Paths are given back as ``os.fsdecode`` gives them (see :func:`key_to_path`)."""
        cols = ["root", "path", "page", "content_hash", "model_revision", "proj_fingerprint"]
        try:
            seen = self._snapshot()  # taken before the read: at worst later lookups look at more
            q = self.table.search().select(cols)
            if root is not None:
                q = q.where(f"root = {_sql_str(path_to_key(root))}")
            t = q.limit(None).to_arrow() if hasattr(q, "limit") else q.to_arrow()
        except Exception as e:
            raise damaged(self._where, f"table {self.name!r}", e) from None
        self._seen, self._seen_root, self._foreign = seen, root, set()  # see _present_keys
        d = t.to_pydict()
        return {
            (key_to_path(p), int(pg or 0)): {
                "content_hash": h,
                "model_revision": r,
                "proj_fingerprint": f,
                "root": key_to_path(ro),
            }
            for ro, p, pg, h, r, f in zip(
                d["root"], d["path"], d["page"], d["content_hash"], d["model_revision"], d["proj_fingerprint"]
            )
        }

    def validate(self, records: list[Record]) -> tuple[list[Record], list[tuple[Record, str]]]:
        """Split ``records`` into writable ones and refused ones with the reason: vectors that
        are not finite once in the storage dtype (NaN, or an overflow to inf in float16), the
        wrong width, or no vectors at all.  Such a row would poison every search."""
        np_dt = np.float16 if self.info.storage_dtype == "float16" else np.float32
        ok, bad = [], []
        for r in records:
            with np.errstate(over="ignore", invalid="ignore"):
                e = np.asarray(r.embedding, dtype=np_dt)
            want_ndim = 2 if self.info.kind == "colqwen" else 1
            if e.ndim != want_ndim or e.shape[-1] != self.info.dim or e.size == 0:
                bad.append(
                    (
                        r,
                        f"embedding has shape {tuple(e.shape)}, expected "
                        f"{'(n, ' if want_ndim == 2 else '('}{self.info.dim})",
                    )
                )
            elif not np.isfinite(e).all():
                what = "NaN" if np.isnan(e).any() else f"infinite (out of {self.info.storage_dtype} range)"
                bad.append((r, f"embedding contains {what} values: not stored"))
            else:
                ok.append(r)
        return ok, bad

    def _arrow(self, records: list[Record]) -> pa.Table:
        import datetime as dt

        info = self.info
        np_dt = np.float16 if info.storage_dtype == "float16" else np.float32
        now = dt.datetime.now(dt.UTC)
        embs = [np.ascontiguousarray(np.asarray(r.embedding, dtype=np_dt)) for r in records]
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
            "root": [path_to_key(r.root) for r in records],
            "path": [path_to_key(r.path) for r in records],
            "page": [r.page for r in records],
            "content_hash": [r.content_hash for r in records],
            "size": [r.size for r in records],
            "mtime": [r.mtime for r in records],
            "width": [r.width for r in records],
            "height": [r.height for r in records],
            "n_vectors": nvec,
            "model_id": [info.model_id] * len(records),
            "model_revision": [r.model_revision or info.revision for r in records],
            "proj_fingerprint": [
                info.fingerprint if r.proj_fingerprint is None else r.proj_fingerprint for r in records
            ],
            "dtype": [r.dtype for r in records],
            "embedded_at": [now] * len(records),
            "embedding_checksum": [embedding_checksum(e) for e in embs],
        }
        if self._written is not None:  # what the commit hooks are told (see upsert)
            self._written.append((records, embs, cols["embedding_checksum"]))
        schema = self.table.schema
        arrays = [pa.array(cols[f.name], type=f.type) for f in schema if f.name != "embedding"]
        arrays.append(emb_arr.cast(schema.field("embedding").type))
        return pa.Table.from_arrays(arrays, schema=schema)

    def upsert(self, records: list[Record], known_new: set | None = None) -> list[tuple[Record, str]]:
        """Write one batch atomically, replacing rows with the same (root, path, page).

        Returns the records refused (:meth:`validate`) with the reason; the caller reports them
        as failed files.  ``known_new``: paths (or ``(path, page)`` keys) the caller believes are
        not in the table (it read :meth:`stored_keys` at the start of the run).  Appending those
        costs O(batch) where ``merge_insert``'s key join scans the table; but another process may have written them
        since, so under the table's write lock the batch's keys are looked up again in what other
        writers committed since this process last saw the table (:meth:`_present_keys`), and only
        the truly new rows are appended.  The commit's cost therefore does not grow with the rows
        already stored.
        """
        records, refused = self.validate(records)
        if not records:
            return refused
        with self._write_errors("write a batch to"), self._lock():
            self.refresh()
            before = self.table.version
            self._written = [] if COMMIT_HOOKS else None
            try:
                self._write_batch(records, known_new)
                if self._written:
                    self._after_commit(self._written, before)
            finally:
                self._written = None
        return refused

    def _write_batch(self, records: list[Record], known_new: set | None) -> None:
        """:meth:`upsert`'s commits, under the write lock."""
        if known_new is None:
            self._merge(records)
            return
        tracked = self._catch_up()
        fresh = [r for r in records if r.path in known_new or (r.path, r.page) in known_new]
        if fresh:
            present = self._present_keys(fresh, tracked)
            fresh = [r for r in fresh if (path_to_key(r.root), path_to_key(r.path), r.page) not in present]
        fresh_ids = {id(r) for r in fresh}
        rest = [r for r in records if id(r) not in fresh_ids]
        if rest:
            self._merge(rest)
        if fresh:
            self.table.add(self._arrow(fresh))
        if tracked:
            self._seen = self._snapshot()  # our own commits: nothing in them to look up later
            self._compact_small()

    def _after_commit(self, parts: list, before: int) -> None:
        """Tell the :data:`COMMIT_HOOKS` what was just committed (under the write lock)."""
        records = [r for rs, _, _ in parts for r in rs]
        written = WrittenRows(
            [path_to_key(r.root) for r in records],
            [path_to_key(r.path) for r in records],
            [int(r.page or 0) for r in records],
            [int(c) for _, _, cs in parts for c in cs],
            [e for _, es, _ in parts for e in es],
            int(before),
            int(self.table.version),
        )
        for hook in list(COMMIT_HOOKS):
            try:
                hook(self, written)
            except Exception as e:  # noqa: BLE001 - the rows are committed; the hook only saves later work
                log.warning("after writing to table %s: %s failed (%s: %s)", self.name, hook, type(e).__name__, e)

    def _compact_small(self, max_fragments: int = 64, target_rows: int = 2048) -> None:
        """Under the write lock, during a run: once the table has more than ``max_fragments``
        fragments, merge the small ones (under ``target_rows`` rows) into fragments of about
        ``target_rows``.  Each batch commit adds a fragment, and a commit's cost grows with the
        fragments the manifest lists; merging only small fragments costs at most ``target_rows``
        rows each time, so a long run's commits stay as cheap as its first ones."""
        if self._seen is None or len(self._seen[1]) <= max_fragments:
            return
        try:
            self.table.to_lance().optimize.compact_files(target_rows_per_fragment=target_rows)
        except Exception as e:  # noqa: BLE001 - an optimisation; the end of the run compacts anyway
            log.info("compaction of table %s during the run skipped: %s", self.name, e)
        self.refresh()
        self._seen = self._snapshot()  # our own rewrite: nothing new to look up

    def _snapshot(self) -> tuple[int, frozenset[int]]:
        """``(version, fragment ids)`` of the table as now checked out."""
        ds = self.table.to_lance()
        return ds.version, frozenset(f.fragment_id for f in ds.get_fragments())

    def _catch_up(self) -> bool:
        """Under the write lock: read the keys other writers committed since this process last saw
        the table (their new fragments only) into ``_foreign``.  False when nothing is tracked
        (no :meth:`stored_keys` read), and lookups must search the table."""
        if self._seen is None:
            return False
        ds = self.table.to_lance()
        if ds.version != self._seen[0]:
            frags = [f for f in ds.get_fragments() if f.fragment_id not in self._seen[1]]
            if frags:
                d = ds.scanner(columns=list(KEY_COLUMNS), fragments=frags).to_table().to_pydict()
                self._foreign.update(zip(d["root"], d["path"], [0 if p is None else p for p in d["page"]]))
            self._seen = (ds.version, frozenset(f.fragment_id for f in ds.get_fragments()))
        return True

    def _present_keys(self, records: list[Record], tracked: bool) -> set[tuple[str, str, int]]:
        """Which of the records' keys the table holds (under the write lock).

        After :meth:`stored_keys` read the root's rows, only what other writers committed since can
        hold them (:meth:`_catch_up` keeps their keys): the batch is compared with those, at a
        cost that follows what others wrote, never the rows already stored.  Otherwise (no stored_keys
        read, or another root): an exact (root, path, page) lookup over the table."""
        keys = {(path_to_key(r.root), path_to_key(r.path), int(r.page)) for r in records}
        if tracked and all(k[0] == path_to_key(self._seen_root or "") for k in keys):
            return keys & self._foreign
        ds = self.table.to_lance()
        out: set[tuple[str, str, int]] = set()
        for where in _key_filters(records):
            d = ds.to_table(columns=list(KEY_COLUMNS), filter=where).to_pydict()
            out.update(zip(d["root"], d["path"], [0 if p is None else p for p in d["page"]]))
        return out

    def _merge(self, records: list[Record]) -> None:
        (
            self.table.merge_insert(list(KEY_COLUMNS))
            .when_matched_update_all()
            .when_not_matched_insert_all()
            .execute(self._arrow(records))
        )

    def append_replacing(self, records: list[Record], old_row_ids: Iterable[int]) -> list[tuple[Record, str]]:
        """Append ``records``, then delete the rows ``old_row_ids`` they replace (repair's write).

        Needs to read nothing of the table, so it works beside a data file that cannot be read;
        the new rows are committed before the old ones go, so a process killed between the two
        commits leaves both (a duplicate the next check or run removes), never neither."""
        records, refused = self.validate(records)
        ids = [int(r) for r in old_row_ids]
        if not records and not ids:
            return refused
        with self._write_errors("write repaired rows to"), self._lock():
            self.refresh()
            if records:
                self.table.add(self._arrow(records))
            for i in range(0, len(ids), 1000):
                self.table.delete(f"_rowid IN ({', '.join(str(r) for r in ids[i : i + 1000])})")
        return refused

    def delete_paths(self, root: str, paths: Iterable[str]) -> int:
        """Delete every row (all pages) of ``paths`` under ``root``; returns the rows deleted."""
        keys = [path_to_key(p) for p in paths]
        n = 0
        with self._write_errors("delete rows from"), self._lock():
            self.refresh()
            for i in range(0, len(keys), 500):
                chunk = keys[i : i + 500]
                before = self.count()
                self.table.delete(
                    f"root = {_sql_str(path_to_key(root))} AND path IN ({', '.join(_sql_str(p) for p in chunk)})"
                )
                n += before - self.count()
        return n

    def delete_keys(self, root: str, keys: Iterable[tuple[str, int]]) -> int:
        """Delete the rows of single pages, ``(path, page)`` under ``root`` (e.g. the pages a
        shrunk document no longer has); returns the rows deleted."""
        keys = [(path_to_key(p), int(pg)) for p, pg in keys]
        n = 0
        with self._write_errors("delete rows from"), self._lock():
            self.refresh()
            for i in range(0, len(keys), 200):
                cond = " OR ".join(f"(path = {_sql_str(p)} AND page = {pg})" for p, pg in keys[i : i + 200])
                before = self.count()
                self.table.delete(f"root = {_sql_str(path_to_key(root))} AND ({cond})")
                n += before - self.count()
        return n

    # ------------------------------------------------------------ duplicates
    def _key_table(self) -> pa.Table:
        ds = self.table.to_lance()
        return ds.to_table(columns=["root", "path", "page", "embedded_at"], with_row_id=True)

    def duplicate_count(self) -> int:
        """Rows beyond the first for each key (0 for a healthy table).  Reads only the key columns
        (a few MB for 100 000 rows), so the driver can call it at the start of every run."""
        t = self.table.to_lance().to_table(columns=["root", "path", "page"])
        if t.num_rows == 0:
            return 0
        groups = t.group_by(["root", "path", "page"]).aggregate([])
        return t.num_rows - groups.num_rows

    def ensure_unique(self) -> int:
        """:meth:`dedupe` when :meth:`duplicate_count` finds any (the driver's call at the start of
        a run: a read of the key columns when the table is healthy).  Returns rows removed."""
        try:
            return self.dedupe() if self.duplicate_count() else 0
        except StoreError:
            raise
        except Exception as e:
            raise damaged(self._where, f"table {self.name!r}", e) from None

    def dedupe(self) -> int:
        """Delete all but the newest row (by ``embedded_at``) of each key; returns rows deleted.

        Needed for stores written concurrently without a lock (object storage, or versions
        before the lock), where two runs could each append the same new file."""
        with self._lock():
            self.refresh()
            t = self._key_table()
            if t.num_rows == 0:
                return 0
            d = t.to_pydict()
            best: dict[tuple, tuple] = {}
            drop: list[int] = []
            for root, path, page, at, rid in zip(d["root"], d["path"], d["page"], d["embedded_at"], d["_rowid"]):
                k = (root, path, page)
                cur = best.get(k)
                stamp = (at is not None, at or 0, rid)
                if cur is None:
                    best[k] = (stamp, rid)
                elif stamp > cur[0]:
                    drop.append(cur[1])
                    best[k] = (stamp, rid)
                else:
                    drop.append(rid)
            for i in range(0, len(drop), 1000):
                self.table.delete(f"_rowid IN ({', '.join(str(int(r)) for r in drop[i : i + 1000])})")
        if drop:
            log.warning("table %s held %d duplicate rows (concurrent writers): removed", self.name, len(drop))
        return len(drop)

    def drop_fragments(self, fragment_ids: Iterable[int]) -> int:
        """Remove whole fragments (data files) from the table: the only repair for a data file
        so damaged that not even its rows' keys can be read.  Returns the fragments removed."""
        import lance

        ids = sorted({int(f) for f in fragment_ids})
        if not ids:
            return 0
        with self._lock():
            self.refresh()
            ds = self.table.to_lance()
            present = {f.fragment_id for f in ds.get_fragments()}
            ids = [f for f in ids if f in present]
            if ids:
                op = lance.LanceOperation.Delete([], ids, "false")
                lance.LanceDataset.commit(ds.uri, op, read_version=ds.version)
            self.refresh()
        return len(ids)

    # ------------------------------------------------------------ maintenance
    def fragment_count(self) -> int:
        try:
            return len(self.table.to_lance().get_fragments())
        except Exception:  # noqa: BLE001
            return 0

    def optimize(self, cleanup_older_than: dt.timedelta | None = None, strict: bool = False) -> None:
        """Compact the small per-batch fragments into few large ones and delete the files of
        versions older than ``cleanup_older_than`` (default :data:`CLEANUP_GRACE`).  Each batch
        commit makes a version; without the cleanup a store keeps every compacted fragment's
        old copy and grows with every run and every re-embedded file.  The grace period keeps
        the versions a concurrent reader (a search started a moment ago) may still be reading."""
        import warnings

        grace = CLEANUP_GRACE if cleanup_older_than is None else cleanup_older_than
        if strict and self.store is not None and self.store.local and not os.access(self.store.path, os.W_OK):
            raise StoreError(f"cannot compact table {self.name!r}: the store at {self._where} is not writable")
        try:
            with self._lock():
                self.refresh()
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore", UserWarning)  # "removes every version" (grace 0)
                    self.table.optimize(cleanup_older_than=grace, delete_unverified=False)
        except Exception as e:  # compaction is an optimisation; a failure must not fail the run
            if strict:  # ``store compact``: what was asked could not be done
                if isinstance(e, StoreError):
                    raise
                reason = e.strerror if isinstance(e, OSError) and e.strerror else str(e).strip().splitlines()[0][:200]
                raise StoreError(
                    f"cannot compact table {self.name!r} in the store at {self._where}: {reason}"
                ) from None
            log.info("compaction of table %s skipped: %s", self.name, e)

    def maintain(self, max_fragments: int = 16, cleanup_older_than: dt.timedelta | None = None) -> bool:
        """End-of-run upkeep, cheap when there is nothing to do (reads the manifest only).

        Compacts when the table has more than ``max_fragments`` fragments, or versions older
        than the grace period to remove.  Returns whether it did.  The driver calls it at the
        end of every run, including runs that embedded nothing: a run killed before its own
        compaction left its small fragments behind."""
        import datetime as dt

        grace = CLEANUP_GRACE if cleanup_older_than is None else cleanup_older_than
        try:
            self.refresh()
            frags = self.fragment_count()
            versions = self.table.list_versions()
        except Exception:  # noqa: BLE001
            return False
        now = dt.datetime.now()
        latest = max((v["version"] for v in versions), default=0)
        old = [v for v in versions if v["version"] != latest and _naive(v["timestamp"]) <= now - grace]
        if frags <= max_fragments and not old:
            return False
        self.optimize(grace)
        return True

    def to_arrow(self, columns: list[str] | None = None) -> pa.Table:
        try:
            t = self.table.to_arrow()
        except Exception as e:
            raise damaged(self._where, f"table {self.name!r}", e) from None
        return t.select(columns) if columns else t

    def iter_batches(self, columns: list[str] | None = None, batch_size: int = 1024) -> Iterator[pa.RecordBatch]:
        """Stream the table from disk without materialising it."""
        try:
            ds = self.table.to_lance()
            yield from ds.to_batches(columns=columns, batch_size=batch_size)
        except StoreError:
            raise
        except Exception as e:
            raise damaged(self._where, f"table {self.name!r}", e) from None

    # ---- housekeeping (``nomic-memory store ...``)
    def roots(self) -> dict[str, int]:
        """``root -> rows``: the embedded directories this table holds (as stored: see
        :func:`key_to_path`)."""
        import pyarrow.compute as pc

        counts = pc.value_counts(self.table.to_lance().to_table(columns=["root"]).column("root"))
        return dict(sorted((c["values"].as_py(), c["counts"].as_py()) for c in counts))

    def delete_root(self, root: str) -> int:
        """Remove every row embedded from the directory ``root`` (and its remembered failures);
        return how many rows."""
        with self._write_errors("delete rows from"), self._lock():
            self.refresh()
            before = self.count()
            self.table.delete(f"root = {_sql_str(path_to_key(root))}")
            if self.store is not None:
                self.store.forget_failures(f'"table" = {_sql_str(self.name)} AND root = {_sql_str(root)}')
                forget_roots(self.store, f'"table" = {_sql_str(self.name)} AND root = {_sql_str(path_to_key(root))}')
            return before - self.count()

    def stats(self) -> dict:
        """Rows, fragments, versions and data bytes of the current version."""
        st = self.table.stats()
        st = st if isinstance(st, dict) else st.__dict__
        frag = st.get("fragment_stats") or {}
        frag = frag if isinstance(frag, dict) else frag.__dict__
        return {
            "rows": self.count(),
            "fragments": frag.get("num_fragments"),
            "versions": len(self.table.list_versions()),
            "data_bytes": st.get("total_bytes"),
        }


def _key_filters(records: list[Record], per_filter: int = 200) -> Iterator[str]:
    """SQL filters matching exactly the records' (root, path, page) keys, ``per_filter`` paths each."""
    by_path: dict[tuple[str, str], set[int]] = {}
    for r in records:
        by_path.setdefault((path_to_key(r.root), path_to_key(r.path)), set()).add(int(r.page))
    items = sorted(by_path.items())
    for i in range(0, len(items), per_filter):
        yield " OR ".join(
            f"(root = {_sql_str(root)} AND path = {_sql_str(path)} AND page IN "
            f"({', '.join(str(p) for p in sorted(pages))}))"
            for (root, path), pages in items[i : i + per_filter]
        )


def _naive(ts):
    return ts.replace(tzinfo=None) if getattr(ts, "tzinfo", None) is not None else ts


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
