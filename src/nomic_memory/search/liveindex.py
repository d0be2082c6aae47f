"""The live first-stage index kept beside each table of a local store.

What it records: for every row it covers, the row's stable key (the 64-bit value of its
:func:`~nomic_memory.search.index.row_id`), the checksum of its vectors (``embedding_checksum``) and its
Lance row id at the table version the index covers; plus the first stage itself (centroid codes
and inverted lists, :mod:`nomic_memory.search.firststage`, for ColQwen tables; a usearch HNSW graph of
int8 vectors for Nomic's single-vector tables).

**Always current.**  Before a search, :meth:`LiveIndex.view` compares the table version with the
one the index covers.  If it moved, the table's keys and checksums are read (small columns, never
the vectors) and compared with the index: rows that are new or whose vectors changed are indexed
(their vectors fetched with ``take``), entries whose row is gone or changed are dropped, and the
result is written as a new generation.  A search never misses a row and never returns a deleted
one: rows the index does not cover yet (another process holds the index lock while it updates
it) are scored exactly, as a *tail*, and entries without a row are masked out.

**Crash safety.**  A generation is a directory of ``.npy`` files written under a temporary name,
fsynced, renamed into place, and only then named in ``CURRENT`` (written to a temporary file and
renamed over the old one).  ``kill -9`` at any moment leaves ``CURRENT`` naming a complete old or
new generation; half-written directories are ignored and removed later.  A generation that does
not load (damaged files) is rebuilt.  The arrays are memory-mapped: a searching process holds
only the first stage, and reads only its candidates' vectors.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import logging
import os
import secrets
import shutil
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, TypeGuard

import numpy as np
import pyarrow as pa

from nomic_memory.errors import NomicMemoryError
from nomic_memory.search import firststage as fs
from nomic_memory.search.scoring import fixed_size_list_matrix, multivector_matrix
from nomic_memory.store.table import EmbeddingTable, Store

log = logging.getLogger("nomic_memory")

INDEX_DIR = "_nomic_memory_index"
FORMAT = 1
#: Tables with fewer rows are searched exactly (the index would not be faster; BENCHMARKS.md).
#: ``NOMIC_MEMORY_INDEX_MIN_ROWS`` overrides it.
DEFAULT_MIN_ROWS = 5000
TAKE_ROWS = 128  # rows of vectors fetched per ``take`` while indexing
OLD_GENERATION_GRACE = 120.0  # seconds a superseded generation stays for readers that opened it


class IndexUnusable(NomicMemoryError):
    """An index that cannot be used (damaged, or on a remote store)."""


def min_rows() -> int:
    env = os.environ.get("NOMIC_MEMORY_INDEX_MIN_ROWS")
    return int(env) if env and env.strip().isdigit() else DEFAULT_MIN_ROWS


def key_u64(root: str, path: str, page) -> int:
    """The 64-bit form of ``row_id(root, path, page)`` (its 16 hex digits as a number)."""
    return int.from_bytes(hashlib.sha256(f"{root}\0{path}\0{int(page or 0)}".encode()).digest()[:8], "big")


def table_rows(ds) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(keys u64, checksums i64, row ids u64)`` of every row of ``ds`` (key columns only)."""
    mark = "embedding_checksum" if "embedding_checksum" in ds.schema.names else "embedded_at"
    t = ds.to_table(columns=["root", "path", "page", mark], with_row_id=True)
    d = t.select(["root", "path", "page"]).to_pydict()
    keys = np.fromiter(
        (key_u64(r, p, pg) for r, p, pg in zip(d["root"], d["path"], d["page"])), dtype=np.uint64, count=t.num_rows
    )
    sums = t.column(mark).cast(pa.int64()).fill_null(0).to_numpy(zero_copy_only=False).astype(np.int64)
    return keys, sums, t.column("_rowid").to_numpy().astype(np.uint64)


# ------------------------------------------------------------------ one generation
@dataclass
class State:
    """One generation: which rows it covers (at ``version``) and its first stage."""

    meta: dict
    keys: np.ndarray
    sums: np.ndarray
    rowids: np.ndarray
    codes: fs.CodeIndex | None = None  # ColQwen
    coarse: np.ndarray | None = None
    vectors: Any = None  # usearch Index (BiQwen)
    path: Path | None = None

    @property
    def version(self) -> int:
        return int(self.meta["version"])

    @property
    def n(self) -> int:
        return len(self.keys)

    def nbytes(self) -> int:
        """Bytes of the first stage (what a searching process maps into memory)."""
        n = self.keys.nbytes + self.sums.nbytes + self.rowids.nbytes
        if self.codes is not None:
            c = self.codes
            n += sum(a.nbytes for a in (c.centroids, c.code_offsets, c.codes, c.inv_offsets, c.inv_entries))
        if self.vectors is not None:
            n += int(self.vectors.memory_usage)
        return n


_ARRAYS = ("keys", "sums", "rowids")
_CODE_ARRAYS = ("centroids", "code_offsets", "codes", "inv_offsets", "inv_entries")


def _write_generation(base: Path, st: State) -> str:
    """Write ``st`` as a new generation directory under ``base``; returns its name."""
    name = f"gen-{st.version:08d}-{secrets.token_hex(4)}"
    tmp = base / f".tmp-{name}"
    tmp.mkdir(parents=True)
    for a in _ARRAYS:
        np.save(tmp / f"{a}.npy", getattr(st, a))
    if st.codes is not None:
        np.save(tmp / "coarse.npy", np.asarray(st.coarse))
        for a in _CODE_ARRAYS:
            np.save(tmp / f"{a}.npy", getattr(st.codes, a))
    if st.vectors is not None:
        st.vectors.save(str(tmp / "vectors.usearch"))
    (tmp / "meta.json").write_text(json.dumps(st.meta))
    for f in tmp.iterdir():
        _fsync(f)
    _fsync(tmp)
    os.rename(tmp, base / name)
    _fsync(base)
    return name


def _fsync(p: Path) -> None:
    fd = os.open(p, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _set_current(base: Path, name: str) -> None:
    tmp = base / f".CURRENT-{secrets.token_hex(4)}"
    tmp.write_text(name)
    _fsync(tmp)
    os.replace(tmp, base / "CURRENT")
    _fsync(base)


def _load_generation(gen: Path, kind: str) -> State:
    meta = json.loads((gen / "meta.json").read_text())
    arr = {a: np.load(gen / f"{a}.npy", mmap_mode="r") for a in _ARRAYS}
    st = State(meta, arr["keys"], arr["sums"], arr["rowids"], path=gen)
    n = len(st.keys)
    if len(st.sums) != n or len(st.rowids) != n or meta.get("rows") != n or meta.get("format") != FORMAT:
        raise IndexUnusable(f"index generation {gen.name} is inconsistent")
    if kind == "colqwen":
        c = {a: np.load(gen / f"{a}.npy", mmap_mode="r") for a in _CODE_ARRAYS}
        st.coarse = np.load(gen / "coarse.npy")
        st.codes = fs.CodeIndex(np.asarray(c["centroids"]), *(c[a] for a in _CODE_ARRAYS[1:]))
        ci = st.codes
        if (
            len(ci.code_offsets) != n + 1
            or int(ci.code_offsets[-1]) != len(ci.codes)
            or len(ci.inv_entries) != len(ci.codes)
            or len(ci.inv_offsets) != len(ci.centroids) + 1
        ):
            raise IndexUnusable(f"index generation {gen.name} is inconsistent")
    else:
        from usearch.index import Index as UIndex

        st.vectors = UIndex.restore(str(gen / "vectors.usearch"), view=True)
        if st.vectors is None or len(st.vectors) != n:
            raise IndexUnusable(f"index generation {gen.name} is inconsistent")
    return st


# ------------------------------------------------------------------ what a search sees
@dataclass
class View:
    """The index as one search uses it, for one table version."""

    state: State
    rowids: np.ndarray  # per entry: its row id in this version (meaningless where not alive)
    alive: np.ndarray | None = None  # None: every entry
    tail: np.ndarray = field(default_factory=lambda: np.zeros(0, np.uint64))  # rows scored exactly
    caught_up: int = 0  # rows indexed for this view


class LiveIndex:
    """The first-stage index of one table of a local store (``store/_nomic_memory_index/TABLE``)."""

    def __init__(self, store: Store, table: EmbeddingTable, settings: fs.Settings | None = None):
        if not store.local:
            raise IndexUnusable(f"the first-stage index is kept beside a local store; {store.path} is remote")
        self.store, self.table = store, table
        self.base = Path(store.path) / INDEX_DIR / table.name
        self.settings = settings or fs.Settings()
        self._state: State | None = None
        self._lock = threading.Lock()

    # ---- reading
    def current_name(self) -> str | None:
        try:
            return (self.base / "CURRENT").read_text().strip() or None
        except FileNotFoundError:
            return None

    def load(self) -> State | None:
        """The current generation (None if there is none); :class:`IndexUnusable` if damaged."""
        for _ in range(3):  # a generation removed between reading CURRENT and opening it: re-read
            name = self.current_name()
            if name is None:
                return None
            if self._state is not None and self._state.path is not None and self._state.path.name == name:
                return self._state
            try:
                st = _load_generation(self.base / name, self.table.info.kind)
            except FileNotFoundError:
                if self.current_name() != name:
                    continue
                raise IndexUnusable(f"index generation {name} is missing files") from None
            except IndexUnusable:
                raise
            except Exception as e:  # truncated or corrupt .npy/.usearch: rebuilt by the caller
                raise IndexUnusable(f"index generation {name} is damaged ({type(e).__name__}: {e})") from None
            if not self._compatible(st):
                return None
            self._state = st
            return st
        return None

    def _compatible(self, st: State) -> bool:
        info = self.table.info
        m = st.meta
        return (m.get("kind"), m.get("dim"), m.get("fingerprint"), m.get("model_id")) == (
            info.kind,
            info.dim,
            info.fingerprint,
            info.model_id,
        )

    @contextlib.contextmanager
    def _file_lock(self, wait: bool):
        self.base.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.base / ".lock", os.O_RDWR | os.O_CREAT, 0o644)
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB))
            except BlockingIOError:
                yield False
                return
            yield True
        finally:
            os.close(fd)  # releases the lock

    # ---- the view a search uses
    def view(self, ds, *, wait: bool = True) -> View:
        """The index for the table version ``ds``: caught up (and saved) if the version moved;
        if another process holds the index lock and ``wait`` is false, the old generation with
        the uncovered rows as an exact tail."""
        with self._lock:
            try:
                st = self.load()
            except IndexUnusable as e:
                log.warning("%s: rebuilding the index of table %s", e, self.table.name)
                st = None
            if _covers(st, ds):
                return View(st, np.asarray(st.rowids))
            with self._file_lock(wait or st is None) as locked:
                if not locked:
                    return _tail_view(st, ds)
                try:
                    st = self.load()  # another process may have caught up meanwhile
                except IndexUnusable:
                    st = None
                if _covers(st, ds):
                    return View(st, np.asarray(st.rowids))
                new, indexed = self._update(st, ds)
                self._persist(new)
                return View(new, np.asarray(new.rowids), caught_up=indexed)

    def rebuild(self, ds=None, progress=None) -> State:
        """Build the index from scratch over the table (``nomic-memory index rebuild``)."""
        ds = ds if ds is not None else self.table.table.to_lance()
        with self._lock, self._file_lock(True):
            st, _ = self._update(None, ds, progress=progress)
            self._persist(st)
            return st

    def _persist(self, st: State) -> None:
        name = _write_generation(self.base, st)
        _set_current(self.base, name)
        st.path = self.base / name
        self._state = st
        self._cleanup(name)

    def _cleanup(self, keep: str) -> None:
        now = time.time()
        for p in self.base.iterdir():
            if p.name == keep or not (
                p.name.startswith("gen-") or p.name.startswith(".tmp-") or p.name.startswith(".CURRENT-")
            ):
                continue
            try:
                if now - p.stat().st_mtime > OLD_GENERATION_GRACE or p.name.startswith(".tmp-"):
                    shutil.rmtree(p) if p.is_dir() else p.unlink()
            except OSError:
                pass

    # ---- building and catching up
    def _update(self, old: State | None, ds, progress=None) -> tuple[State, int]:
        """A new state covering exactly the rows of ``ds``: ``old``'s entries whose rows are
        unchanged, plus the rows it does not cover, indexed now.  Returns it and how many rows
        were indexed."""
        keys, sums, rowids = table_rows(ds)
        keep, rows_new = (
            _match(old, keys, sums) if old is not None else (np.zeros((0, 2), np.int64), np.arange(len(keys)))
        )
        info = self.table.info
        meta = {
            "format": FORMAT,
            "version": int(ds.version),
            "rows": len(keys),
            "kind": info.kind,
            "dim": info.dim,
            "fingerprint": info.fingerprint,
            "model_id": info.model_id,
            "table": self.table.name,
            "settings": asdict(self.settings),
            "updated_at": time.time(),
        }
        if old is not None:
            meta["settings"] = old.meta.get("settings", meta["settings"])
            meta["built_at"] = old.meta.get("built_at")
        else:
            meta["built_at"] = time.time()
        ent_keys = np.concatenate([np.asarray(old.keys)[keep[:, 0]] if old is not None else keys[:0], keys[rows_new]])
        ent_sums = np.concatenate([np.asarray(old.sums)[keep[:, 0]] if old is not None else sums[:0], sums[rows_new]])
        ent_rows = np.concatenate([rowids[keep[:, 1]], rowids[rows_new]])
        st = State(meta, ent_keys, ent_sums, ent_rows)
        if info.kind == "colqwen":
            self._update_codes(st, old, keep[:, 0], ds, rowids[rows_new], progress)
        else:
            self._update_vectors(st, old, keep[:, 0], ds, keys[rows_new], rowids[rows_new])
        st.meta["rows"] = st.n
        return st, len(rows_new)

    def _update_codes(
        self, st: State, old: State | None, keep: np.ndarray, ds, new_rowids: np.ndarray, progress
    ) -> None:
        s = fs.Settings(**st.meta["settings"])
        if old is not None and old.codes is not None and old.coarse is not None:
            coarse, cents = old.coarse, np.asarray(old.codes.centroids)
        else:
            coarse, cents = fs.train_codebook(_training_sample(ds, s), s)
        parts, counts = [], []
        if old is not None and old.codes is not None and len(keep):
            oc = old.codes
            a, b = np.asarray(oc.code_offsets[keep]), np.asarray(oc.code_offsets[keep + 1])
            lens = b - a
            parts.append(np.asarray(oc.codes)[fs._ranges(a, lens, int(lens.sum()))])
            counts.append(lens.astype(np.int64))
        done = 0
        for vecs, offs in _vectors(ds, new_rowids, "colqwen"):
            c, n = fs.page_code_sets(fs.assign(vecs, coarse, cents), offs, len(cents))
            parts.append(c)
            counts.append(n)
            done += len(n)
            if progress:
                progress(done, len(new_rowids))
        st.coarse = coarse
        st.codes = fs.assemble(cents, parts, counts)

    def _update_vectors(self, st: State, old: State | None, keep: np.ndarray, ds, new_keys, new_rowids) -> None:
        from usearch.index import Index as UIndex

        dim = self.table.info.dim
        ix: Any = UIndex(ndim=dim, metric="ip", dtype="i8", connectivity=16)
        if old is not None and old.vectors is not None and old.path is not None:
            ix = UIndex.restore(str(old.path / "vectors.usearch"))  # a writable copy
            gone = np.setdiff1d(np.asarray(old.keys), np.asarray(old.keys)[keep])
            if len(gone):
                ix.remove(gone)
        a = 0
        for vecs, _ in _vectors(ds, new_rowids, "biqwen"):
            ix.add(new_keys[a : a + len(vecs)], vecs)
            a += len(vecs)
        st.vectors = ix


def _covers(st: State | None, ds) -> TypeGuard[State]:
    """``st`` covers exactly the table version ``ds`` (the row count guards against a table
    dropped and made again, whose versions start over)."""
    return st is not None and st.version == ds.version and st.n == ds.count_rows()


def _match(old: State, keys: np.ndarray, sums: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``(keep (m, 2): [old entry, table row], new table rows)``: entries whose row is still
    there with the same checksum, each matched once, and the rows no entry covers."""
    where: dict[tuple[int, int], int] = {}
    for i, (k, s) in enumerate(zip(np.asarray(old.keys).tolist(), np.asarray(old.sums).tolist())):
        where.setdefault((k, s), i)  # a key indexed twice (never written so): the first entry
    keep: list[tuple[int, int]] = []
    new: list[int] = []
    for j, (k, s) in enumerate(zip(keys.tolist(), sums.tolist())):
        i = where.pop((k, s), -1)
        if i < 0:
            new.append(j)
        else:
            keep.append((i, j))
    return np.asarray(keep, np.int64).reshape(-1, 2), np.asarray(new, np.int64)


def _tail_view(old: State | None, ds) -> View:
    """``old`` mapped onto the version ``ds`` without indexing: the rows it misses are the tail."""
    keys, sums, rowids = table_rows(ds)
    if old is None:
        return View(State({"version": -1, "rows": 0}, keys[:0], sums[:0], rowids[:0]), rowids[:0], None, rowids)
    keep, new = _match(old, keys, sums)
    mapped = np.zeros(old.n, np.uint64)
    alive = np.zeros(old.n, bool)
    mapped[keep[:, 0]] = rowids[keep[:, 1]]
    alive[keep[:, 0]] = True
    return View(old, mapped, alive, rowids[new])


def _training_sample(ds, s: fs.Settings) -> np.ndarray:
    """Vectors of rows spread evenly over the table, about ``s.train_vectors`` of them."""
    n = ds.count_rows()
    nv = ds.to_table(columns=["n_vectors"]).column("n_vectors").to_numpy(zero_copy_only=False)
    per = max(1.0, float(np.mean(nv))) if len(nv) else 1.0
    want = min(n, max(1, int(np.ceil(s.train_vectors / per))))
    pos = np.unique(np.linspace(0, n - 1, want).astype(np.int64)) if n else np.zeros(0, np.int64)
    parts = []
    for a in range(0, len(pos), TAKE_ROWS):
        t = ds.take(pos[a : a + TAKE_ROWS], columns=["embedding"])
        parts.append(multivector_matrix(t.column("embedding"))[0].astype(np.float32))
    return np.concatenate(parts) if parts else np.zeros((0, 128), np.float32)


def _vectors(ds, rowids: np.ndarray, kind: str):
    """``(float32 vectors, offsets)`` of the rows ``rowids``, ``TAKE_ROWS`` rows at a time."""
    for a in range(0, len(rowids), TAKE_ROWS):
        ids = [int(r) for r in rowids[a : a + TAKE_ROWS]]
        col = ds._take_rows(ids, columns=["embedding"]).column("embedding")
        if kind == "colqwen":
            v, o = multivector_matrix(col)
            yield v.astype(np.float32), o
        else:
            yield np.ascontiguousarray(fixed_size_list_matrix(col), dtype=np.float32), None


def describe(store: Store, table: EmbeddingTable) -> dict:
    """The index state for ``store list`` and ``/stats`` (reads no vectors, changes nothing)."""
    if not store.local:
        return {"state": "none (remote store: exact search)"}
    li = LiveIndex(store, table)
    try:
        st = li.load()
    except IndexUnusable as e:
        return {"state": "damaged (rebuilt by the next search)", "reason": str(e)}
    if st is None:
        return {"state": "none", "min_rows": min_rows()}
    current = table.version() == st.version
    return {
        "state": "current" if current else "behind (caught up by the next search)",
        "rows": st.n,
        "version": st.version,
        "table_version": table.version(),
        "bytes": st.nbytes(),
        "bytes_per_row": round(st.nbytes() / max(st.n, 1), 1),
        "min_rows": min_rows(),
        "kind": "centroid codes" if st.codes is not None else "usearch hnsw i8",
    }


# ------------------------------------------------------------------ check and repair
def verify(store: Store, table: EmbeddingTable) -> dict:
    """Coverage of the index of ``table``: every row indexed once, no entry without a row, the
    arrays consistent.  ``{"state", "problems": [...], ...}``; an index that is only behind the
    table (caught up by the next search) is not a problem."""
    if not store.local:
        return {"state": "none (remote store)", "problems": []}
    li = LiveIndex(store, table)
    try:
        st = li.load()
    except IndexUnusable as e:
        return {"state": "damaged", "problems": [str(e)]}
    if st is None:
        return {"state": "none", "problems": []}
    problems = _internal_problems(st)
    ds = table.table.to_lance()
    keys, sums, rowids = table_rows(ds)
    if st.version == ds.version:
        keep, new = _match(st, keys, sums)
        orphans = st.n - len(keep)
        if len(new):
            problems.append(f"{len(new)} rows of the table are not in the index")
        if orphans:
            problems.append(f"{orphans} index entries have no row in the table")
        if len(keep) and not np.array_equal(np.asarray(st.rowids)[keep[:, 0]], rowids[keep[:, 1]]):
            problems.append("index entries point at the wrong rows")
        state = "current"
    else:
        keep, new = _match(st, keys, sums)
        state = f"behind: {len(new)} rows to index, {st.n - len(keep)} entries to drop (done by the next search)"
    return {"state": state, "entries": st.n, "rows": len(keys), "problems": problems}


def _internal_problems(st: State) -> list[str]:
    out = []
    keys = np.asarray(st.keys)
    if len(np.unique(keys)) != len(keys):
        out.append(f"{len(keys) - len(np.unique(keys))} rows are indexed more than once")
    if st.codes is not None:
        c = st.codes
        if len(c.codes) and int(np.max(c.codes)) >= len(c.centroids):
            out.append("codes out of range")
        counts = np.bincount(np.asarray(c.codes).astype(np.int64), minlength=len(c.centroids))
        if not np.array_equal(np.diff(np.asarray(c.inv_offsets)), counts):
            out.append("inverted lists do not match the codes")
    return out


def repair(store: Store, table: EmbeddingTable) -> dict:
    """Rebuild the index (what ``check --repair`` does when :func:`verify` found problems)."""
    st = LiveIndex(store, table).rebuild()
    return {"rebuilt": True, "entries": st.n, "version": st.version}


__all__ = [
    "DEFAULT_MIN_ROWS",
    "INDEX_DIR",
    "IndexUnusable",
    "LiveIndex",
    "State",
    "View",
    "describe",
    "key_u64",
    "repair",
    "verify",
    "min_rows",
    "table_rows",
]
