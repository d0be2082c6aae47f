"""The live first-stage index kept beside each table of a local store.

What it records: for every row it covers, the row's stable key (the 64-bit value of its
:func:`~nomic_memory.search.index.row_id`), the checksum of its vectors (``embedding_checksum``) and its
Lance row id at the table version the index covers; plus the first stage itself (centroid codes
and inverted lists, :mod:`nomic_memory.search.firststage`, for ColQwen tables; a usearch HNSW graph of
int8 vectors for Nomic's single-vector tables).

**Always current.**  Before a search, :meth:`LiveIndex.view` compares the table version with the
one the index covers.  If it moved, the table's keys and checksums are read (small columns, never
the vectors) and compared with the index: entries whose row is gone or changed are marked dead,
and rows it does not cover are indexed, and the result is saved as a new generation.  A search
never misses a row and never returns a deleted one: rows the index does not cover yet (another
process holds the index lock while it updates it) are scored exactly, as a *tail*, and entries
without a row are masked out.

**Coded by the writer.**  Embed and import commit through
:meth:`~nomic_memory.store.table.EmbeddingTable.upsert`, which hands each commit's rows (keys,
checksums, the vectors as stored) to the store's commit hooks; the hook registered here codes them
against the codebook in the writing process and saves them as a *segment*
(``segments/seg-CODEBOOK-BEFORE-AFTER-ROWS-*.npz``, written under a temporary name and renamed).
An update takes a row's codes from a segment whose key and checksum match it, and reads the
vectors back from the table (``take``) only for rows no segment holds (a writer killed between its
commit and its segment, another process's writes).  Segments match by content, so their order and
the table's compactions (new row ids) do not matter; an update removes the segments it folded in.

**Appended, compacted past a fraction.**  An update does not rewrite the base's arrays: it writes a
generation that names its base and holds only each entry's row id and liveness plus the codes of
the entries added since (their own small inverted lists).  Once those and the base's dead entries
pass :data:`COMPACT_FRACTION` of the base, the update writes a full generation instead.

**Crash safety.**  A generation is a directory of ``.npy`` files written under a temporary name,
fsynced, renamed into place, and only then named in ``CURRENT`` (written to a temporary file and
renamed over the old one).  ``kill -9`` at any moment leaves ``CURRENT`` naming a complete old or
new generation (an appended one and the base it names); half-written directories are ignored and
removed later.  A generation that does not load (damaged files) is rebuilt.  The arrays are memory-mapped: a searching process holds
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
from nomic_memory.store.table import EmbeddingTable, Store, WrittenRows, on_commit

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


def base_settings() -> fs.Settings:
    """The settings an index is built with (before :meth:`~.firststage.Settings.sized_for`):
    the defaults, with ``NOMIC_MEMORY_INDEX_GROW_FROM`` (rows from which the codebook is larger)
    if it is set to a number (anything else is ignored, as ``NOMIC_MEMORY_INDEX_MIN_ROWS``)."""
    grow = os.environ.get("NOMIC_MEMORY_INDEX_GROW_FROM")
    return fs.Settings(grow_from=int(grow)) if grow and grow.strip().isdigit() else fs.Settings()


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
    """One generation: which rows it covers (at ``version``) and its first stage.

    Its entries are a *base* (a full generation's arrays) followed by the entries added since
    (``delta``, ColQwen); ``alive`` marks the entries that are still rows (None: all are)."""

    meta: dict
    keys: np.ndarray  # per entry
    sums: np.ndarray
    rowids: np.ndarray
    codes: fs.CodeIndex | None = None  # ColQwen: the base's entries
    coarse: np.ndarray | None = None
    vectors: Any = None  # usearch Index (BiQwen)
    path: Path | None = None
    alive: np.ndarray | None = None
    delta: fs.CodeIndex | None = None  # ColQwen: the entries after the base's

    @property
    def version(self) -> int:
        return int(self.meta["version"])

    @property
    def entries(self) -> int:
        return len(self.keys)

    @property
    def n(self) -> int:
        """Rows covered (entries that are still rows)."""
        return self.entries if self.alive is None else int(np.count_nonzero(self.alive))

    @property
    def parts(self) -> list[fs.CodeIndex]:
        return [c for c in (self.codes, self.delta) if c is not None]

    @property
    def pages_per_list(self) -> float | None:
        """The code index's postings per centroid: how many pages share an inverted list on
        average (None: not a code index).  The re-rank depth follows it
        (:meth:`~.firststage.Settings.depth_for`)."""
        if self.codes is None or not len(self.codes.centroids):
            return None
        return sum(len(c.codes) for c in self.parts) / len(self.codes.centroids)

    @property
    def base_name(self) -> str | None:
        return self.meta.get("base") or (self.path.name if self.path is not None else None)

    @property
    def settings(self) -> fs.Settings:
        """What it was built with (the codebook's nominal size: a small table trains fewer
        centroids, :func:`~.firststage.train_codebook`)."""
        return fs.Settings(**self.meta["settings"])

    @property
    def codebook(self) -> str:
        """Names the codebook (the segments writers code against it say which)."""
        return str(self.meta.get("codebook") or f"b{int(float(self.meta.get('built_at') or 0) * 1000) % 10**10}")

    def nbytes(self) -> int:
        """Bytes of the first stage (what a searching process maps into memory)."""
        n = self.keys.nbytes + self.sums.nbytes + self.rowids.nbytes
        if self.alive is not None:
            n += self.alive.nbytes
        for c in self.parts:
            n += sum(a.nbytes for a in (c.code_offsets, c.codes, c.inv_offsets, c.inv_entries))
        if self.codes is not None:
            n += self.codes.centroids.nbytes
        if self.vectors is not None:
            n += int(self.vectors.memory_usage)
        return n


_ARRAYS = ("keys", "sums", "rowids")
_CODE_ARRAYS = ("centroids", "code_offsets", "codes", "inv_offsets", "inv_entries")
_DELTA_ARRAYS = ("code_offsets", "codes", "inv_offsets", "inv_entries")


def _write_dir(base: Path, version: int, files: dict, meta: dict, usearch=None) -> str:
    """Write ``files`` (name -> array) and ``meta`` as a new generation directory; its name."""
    name = f"gen-{version:08d}-{secrets.token_hex(4)}"
    tmp = base / f".tmp-{name}"
    tmp.mkdir(parents=True)
    for f, arr in files.items():
        np.save(tmp / f"{f}.npy", arr)
    if usearch is not None:
        usearch.save(str(tmp / "vectors.usearch"))
    (tmp / "meta.json").write_text(json.dumps(meta))
    for f in tmp.iterdir():
        _fsync(f)
    _fsync(tmp)
    os.rename(tmp, base / name)
    _fsync(base)
    return name


def _write_generation(base: Path, st: State) -> str:
    """Write ``st`` as a new full generation directory under ``base``; returns its name."""
    files = {a: getattr(st, a) for a in _ARRAYS}
    if st.codes is not None:
        files["coarse"] = np.asarray(st.coarse)
        files.update({a: getattr(st.codes, a) for a in _CODE_ARRAYS})
    meta = {k: v for k, v in st.meta.items() if k != "base"}
    return _write_dir(base, st.version, files, meta, st.vectors)


def _write_overlay(base: Path, st: State) -> str:
    """Write ``st`` as a generation that refers to its base's arrays and holds only what changed:
    the row ids and liveness of every entry, and the entries added since the base."""
    assert st.delta is not None and st.alive is not None and st.codes is not None
    nb = st.codes.n
    files = {"rowids": st.rowids, "alive": st.alive, "d_keys": st.keys[nb:], "d_sums": st.sums[nb:]}
    files.update({f"d_{a}": getattr(st.delta, a) for a in _DELTA_ARRAYS})
    return _write_dir(base, st.version, files, st.meta)


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
    if meta.get("base"):
        return _load_overlay(gen, meta, kind)
    arr = {a: np.load(gen / f"{a}.npy", mmap_mode="r") for a in _ARRAYS}
    st = State(meta, arr["keys"], arr["sums"], arr["rowids"], path=gen)
    n = len(st.keys)
    if len(st.sums) != n or len(st.rowids) != n or meta.get("rows") != n or meta.get("format") != FORMAT:
        raise IndexUnusable(f"index generation {gen.name} is inconsistent")
    if kind == "colqwen":
        c = {a: np.load(gen / f"{a}.npy", mmap_mode="r") for a in _CODE_ARRAYS}
        st.coarse = np.load(gen / "coarse.npy")
        # the centroids in RAM (8-134 MB), the lists memory-mapped: every query multiplies all of
        # the centroids, which took 38 ms from RAM against 50 ms memory-mapped at 262,144 centroids
        st.codes = fs.CodeIndex(np.array(c["centroids"]), *(c[a] for a in _CODE_ARRAYS[1:]))
        if not _consistent(st.codes, n):
            raise IndexUnusable(f"index generation {gen.name} is inconsistent")
    else:
        from usearch.index import Index as UIndex  # late: only single-vector tables need usearch

        st.vectors = UIndex.restore(str(gen / "vectors.usearch"), view=True)
        if st.vectors is None or len(st.vectors) != n:
            raise IndexUnusable(f"index generation {gen.name} is inconsistent")
    return st


def _consistent(ci: fs.CodeIndex, n: int) -> bool:
    return (
        len(ci.code_offsets) == n + 1
        and int(ci.code_offsets[-1]) == len(ci.codes)
        and len(ci.inv_entries) == len(ci.codes)
        and len(ci.inv_offsets) == len(ci.centroids) + 1
    )


def _load_overlay(gen: Path, meta: dict, kind: str) -> State:
    base = _load_generation(gen.parent / meta["base"], kind)
    if base.codes is None or base.meta.get("base"):
        raise IndexUnusable(f"index generation {gen.name} refers to an unusable base")
    d = {a: np.load(gen / f"{a}.npy", mmap_mode="r") for a in ("rowids", "alive", "d_keys", "d_sums")}
    dc = {a: np.load(gen / f"d_{a}.npy", mmap_mode="r") for a in _DELTA_ARRAYS}
    delta = fs.CodeIndex(base.codes.centroids, *(dc[a] for a in _DELTA_ARRAYS))
    keys = np.concatenate([base.keys, d["d_keys"]])
    sums = np.concatenate([base.sums, d["d_sums"]])
    st = State(meta, keys, sums, d["rowids"], base.codes, base.coarse, path=gen, alive=np.asarray(d["alive"]))
    st.delta = delta
    n = len(keys)
    if (
        len(st.rowids) != n
        or len(d["alive"]) != n
        or len(d["d_sums"]) != delta.n
        or not _consistent(delta, delta.n)
        or meta.get("rows") != st.n
        or meta.get("format") != FORMAT
    ):
        raise IndexUnusable(f"index generation {gen.name} is inconsistent")
    return st


# ------------------------------------------------------------------ segments written by writers
SEGMENTS = "segments"
#: An update appends the entries added since the base; once those and the base's dead entries
#: pass this fraction of the base, the next update writes a full generation instead.
COMPACT_FRACTION = 0.25


@dataclass
class Segment:
    """The rows one commit wrote, coded by the writing process (``segments/seg-*.npz``)."""

    name: str
    before: int  # table version before the commit
    after: int  # and after it
    rows: int


def _segment_name(codebook: str, before: int, after: int, rows: int) -> str:
    return f"seg-{codebook}-{before:08d}-{after:08d}-{rows}-{secrets.token_hex(4)}.npz"


def _segments(base: Path) -> list[tuple[str, Segment]]:
    """``(codebook, segment)`` of every complete segment file, oldest commit first."""
    out = []
    try:
        names = os.listdir(base / SEGMENTS)
    except FileNotFoundError:
        return []
    for f in names:
        parts = f[: -len(".npz")].split("-") if f.startswith("seg-") and f.endswith(".npz") else []
        if len(parts) == 6 and all(p.isdigit() for p in parts[2:5]):
            out.append((parts[1], Segment(f, int(parts[2]), int(parts[3]), int(parts[4]))))
    return sorted(out, key=lambda cs: (cs[1].after, cs[1].name))


def _write_segment(base: Path, name: str, arrays: dict) -> None:
    d = base / SEGMENTS
    d.mkdir(parents=True, exist_ok=True)
    tmp = d / f".tmp-{name}"
    with open(tmp, "wb") as f:
        np.savez(f, **arrays)
        f.flush()
        os.fsync(f.fileno())
    os.rename(tmp, d / name)
    _fsync(d)


def _covered_by_segments(st: State, segs: list[Segment], version: int) -> bool:
    """Whether the segments continue ``st`` commit by commit up to the table ``version``."""
    v = st.version
    for s in segs:
        if s.before == v:
            v = s.after
    return v == version


# ------------------------------------------------------------------ what a search sees
@dataclass
class View:
    """The index as one search uses it, for one table version."""

    state: State
    rowids: np.ndarray  # per entry: its row id in this version (meaningless where not alive)
    alive: np.ndarray | None = None  # None: every entry
    tail: np.ndarray = field(default_factory=lambda: np.zeros(0, np.uint64))  # rows scored exactly
    caught_up: int = 0  # rows indexed for this view from vectors read back from the table
    from_writers: int = 0  # rows indexed for this view from the codes their writers recorded


class LiveIndex:
    """The first-stage index of one table of a local store (``store/_nomic_memory_index/TABLE``)."""

    def __init__(self, store: Store, table: EmbeddingTable, settings: fs.Settings | None = None):
        if not store.local:
            raise IndexUnusable(f"the first-stage index is kept beside a local store; {store.path} is remote")
        self.store, self.table = store, table
        self.base = Path(store.path) / INDEX_DIR / table.name
        self.settings = settings or base_settings()
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
                return _full_view(st)
            with self._file_lock(wait or st is None) as locked:
                if not locked:
                    return _tail_view(st, ds)
                try:
                    st = self.load()  # another process may have caught up meanwhile
                except IndexUnusable:
                    st = None
                if _covers(st, ds):
                    return _full_view(st)
                segs = self._foldable(st, ds.version)
                new, indexed, written = self._update(st, ds, segs=segs)
                self._persist(new)
                self._forget_segments(segs)
                return _full_view(new, caught_up=indexed, from_writers=written)

    def rebuild(self, ds=None, progress=None) -> State:
        """Build the index from scratch over the table (``nomic-memory index rebuild``)."""
        ds = ds if ds is not None else self.table.table.to_lance()
        with self._lock, self._file_lock(True):
            st, _, _ = self._update(None, ds, progress=progress)
            self._persist(st)
            self._forget_segments([s for _, s in _segments(self.base)])
            return st

    def _persist(self, st: State) -> None:
        name = _write_overlay(self.base, st) if st.meta.get("base") else _write_generation(self.base, st)
        _set_current(self.base, name)
        st.path = self.base / name
        self._state = st
        self._cleanup({name, st.base_name or name})

    def _cleanup(self, keep: set[str]) -> None:
        now = time.time()
        for p in self.base.iterdir():
            if p.name in keep or not (
                p.name.startswith("gen-") or p.name.startswith(".tmp-") or p.name.startswith(".CURRENT-")
            ):
                continue
            try:
                if now - p.stat().st_mtime > OLD_GENERATION_GRACE or p.name.startswith(".tmp-"):
                    shutil.rmtree(p) if p.is_dir() else p.unlink()
            except OSError:
                pass

    # ---- what writers record
    def record(self, written: WrittenRows) -> bool:
        """Code the rows a commit just wrote (their vectors as stored) against the current
        codebook and save them as a segment, so that the next update indexes them without reading
        their vectors back.  False when the table has no usable index."""
        try:
            st = self.load()
        except IndexUnusable:
            return False
        if st is None or not written.roots:
            return False
        keys = np.fromiter(
            (key_u64(r, p, pg) for r, p, pg in zip(written.roots, written.paths, written.pages)), np.uint64
        )
        arrays: dict[str, np.ndarray] = {"keys": keys, "sums": np.asarray(written.checksums, np.int64)}
        if st.codes is not None and st.coarse is not None:
            vecs = np.concatenate([e.reshape(-1, self.table.info.dim) for e in written.embeddings])
            offs = np.zeros(len(keys) + 1, np.int64)
            offs[1:] = np.cumsum([len(e) for e in written.embeddings])
            cents = np.asarray(st.codes.centroids)
            codes = fs.assign(vecs.astype(np.float32), st.coarse, cents)
            arrays["codes"], arrays["counts"] = fs.page_code_sets(codes, offs, len(cents))
        else:
            arrays["vectors"] = np.stack([e.reshape(-1) for e in written.embeddings]).astype(np.float32)
        name = _segment_name(st.codebook, written.version_before, written.version, len(keys))
        _write_segment(self.base, name, arrays)
        return True

    def pending(self, st: State) -> list[Segment]:
        """The segments of ``st``'s codebook written since ``st`` (folded by the next update)."""
        return [s for cb, s in _segments(self.base) if cb == st.codebook and s.after > st.version]

    def _foldable(self, st: State | None, version: int) -> list[tuple[Segment, dict]]:
        """The segments an update to table ``version`` folds in, with their arrays (a damaged
        one is skipped: its rows are read back instead)."""
        if st is None:
            return []
        out = []
        for s in self.pending(st):
            if s.after > version:
                continue  # a commit after the version being searched: the update after it
            try:
                with np.load(self.base / SEGMENTS / s.name) as z:
                    out.append((s, {k: z[k] for k in z.files}))
            except Exception as e:  # noqa: BLE001 - a damaged segment only costs reading those rows back
                log.warning("index segment %s skipped (%s)", s.name, e)
        return out

    def _forget_segments(self, segs) -> None:
        """Remove segments that are folded in (after the generation that holds them is current),
        and those coded against another codebook."""
        done = {(s[0] if isinstance(s, tuple) else s).name for s in segs}
        st = self._state
        for cb, s in _segments(self.base):
            if s.name in done or (st is not None and cb != st.codebook):
                with contextlib.suppress(OSError):
                    (self.base / SEGMENTS / s.name).unlink()

    # ---- building and catching up
    # Long: one pass that matches the table's rows with what is indexed and what writers coded,
    # and assembles the next generation (appended or full); each step is a call.
    def _update(self, old: State | None, ds, progress=None, segs=()) -> tuple[State, int, int]:
        """A new state covering exactly the rows of ``ds``: ``old``'s entries whose rows are
        unchanged, the rows writers coded (``segs``), and the rest indexed now from their vectors.
        Returns it, how many rows were read back and how many came from the segments."""
        keys, sums, rowids = table_rows(ds)
        seg_keys = [a["keys"] for _, a in segs]
        seg_sums = [a["sums"] for _, a in segs]
        n_old = old.entries if old is not None else 0
        known_keys = np.concatenate([np.asarray(old.keys) if old is not None else keys[:0], *seg_keys])
        known_sums = np.concatenate([np.asarray(old.sums) if old is not None else sums[:0], *seg_sums])
        alive = np.ones(len(known_keys), bool)
        if old is not None and old.alive is not None:
            alive[:n_old] = old.alive
        keep, rows_new = _match_arrays(known_keys, known_sums, alive, keys, sums)
        from_old = keep[keep[:, 0] < n_old]
        from_seg = keep[keep[:, 0] >= n_old]
        meta = self._meta(old, ds)
        if self.table.info.kind != "colqwen":
            st = State(meta, *self._entry_arrays(known_keys, known_sums, keys, sums, rowids, keep, rows_new))
            self._update_vectors(st, old, from_old[:, 0], segs, from_seg[:, 0] - n_old, ds, keys, rowids, rows_new)
        else:
            st = self._update_codes(meta, old, ds, segs, keep, n_old, (keys, sums, rowids), rows_new, progress)
        st.meta["rows"] = st.n
        st.meta["entries"] = st.entries
        return st, len(rows_new), len(from_seg)

    def _meta(self, old: State | None, ds) -> dict:
        info = self.table.info
        meta = {
            "format": FORMAT,
            "version": int(ds.version),
            "kind": info.kind,
            "dim": info.dim,
            "fingerprint": info.fingerprint,
            "model_id": info.model_id,
            "table": self.table.name,
            "updated_at": time.time(),
        }
        if old is not None:
            meta["settings"] = old.meta.get("settings", asdict(self.settings))
            meta["built_at"] = old.meta.get("built_at")
            meta["built_rows"] = old.meta.get("built_rows")
            meta["codebook"] = old.codebook
        else:
            rows = ds.count_rows()
            meta["settings"] = asdict(self.settings.sized_for(rows))
            meta["built_at"] = time.time()
            meta["built_rows"] = rows
            meta["codebook"] = secrets.token_hex(4)
        return meta

    def outgrown(self, st: State, rows: int | None = None) -> int | None:
        """The centroids a codebook for ``rows`` rows (default: those ``st`` covers) would have,
        if that is more than its codebook has (the table grew past
        :attr:`~.firststage.Settings.grow_from` since the index was built; :func:`retrain_if_outgrown`
        and ``nomic-memory index rebuild`` re-train it); None otherwise."""
        if st.codes is None:
            return None
        want = self.settings.sized_for(st.n if rows is None else rows).n_centroids
        return want if want > st.settings.n_centroids else None

    @staticmethod
    def _entry_arrays(known_keys, known_sums, keys, sums, rowids, keep, rows_new):
        return (
            np.concatenate([known_keys[keep[:, 0]], keys[rows_new]]),
            np.concatenate([known_sums[keep[:, 0]], sums[rows_new]]),
            np.concatenate([rowids[keep[:, 1]], rowids[rows_new]]),
        )

    # Long: the two layouts a ColQwen update can write (appended entries, or a full generation)
    # share their inputs; splitting them would pass a dozen arrays around.
    def _update_codes(self, meta, old, ds, segs, keep, n_old, table, rows_new, progress) -> State:
        keys, sums, rowids = table
        s = fs.Settings(**meta["settings"])
        if old is not None and old.codes is not None and old.coarse is not None:
            coarse, cents = old.coarse, np.asarray(old.codes.centroids)
        else:
            coarse, cents = fs.train_codebook(_training_sample(ds, s), s)
        K = len(cents)
        # codes of every known entry: old's base, old's delta, then the segments'
        seg_codes = [a["codes"] for _, a in segs]
        seg_counts = [a["counts"] for _, a in segs]
        sc = np.concatenate(seg_codes) if seg_codes else np.zeros(0, fs.code_dtype(K))
        so = np.concatenate([[0], np.cumsum(np.concatenate(seg_counts))]) if seg_counts else np.zeros(1, np.int64)
        sources = [(p.code_offsets, p.codes) for p in (old.parts if old is not None else [])] + [(so, sc)]
        bounds = np.cumsum([0] + [len(o) - 1 for o, _ in sources])
        nb = old.codes.n if old is not None and old.codes is not None else 0

        def codes_of(entries: np.ndarray) -> tuple[list, list]:
            parts, counts = [], []
            for (o, c), lo, hi in zip(sources, bounds[:-1], bounds[1:]):
                e = entries[(entries >= lo) & (entries < hi)] - lo
                if len(e):
                    a, b = np.asarray(o[e]), np.asarray(o[e + 1])
                    parts.append(np.asarray(c)[fs._ranges(a, b - a, int((b - a).sum()))])
                    counts.append((b - a).astype(np.int64))
            return parts, counts

        new_parts, new_counts = [], []
        done = 0
        for vecs, offs in _vectors(ds, rowids[rows_new], "colqwen"):
            c, n = fs.page_code_sets(fs.assign(vecs, coarse, cents), offs, K)
            new_parts.append(c)
            new_counts.append(n)
            done += len(n)
            if progress:
                progress(done, len(rows_new))
        known_keys = np.concatenate(
            [np.asarray(old.keys) if old is not None else keys[:0], *[a["keys"] for _, a in segs]]
        )
        known_sums = np.concatenate(
            [np.asarray(old.sums) if old is not None else sums[:0], *[a["sums"] for _, a in segs]]
        )
        base_keep = keep[keep[:, 0] < nb]
        rest = keep[keep[:, 0] >= nb]  # old delta entries and segment entries
        added = len(rest) + len(rows_new)
        dead = nb - len(base_keep)
        if nb and dead + added <= COMPACT_FRACTION * nb:
            # append: the base stays as it is; its dead entries are marked, the rest follow it
            assert old is not None and old.codes is not None
            parts, counts = codes_of(rest[:, 0])
            delta = fs.assemble(cents, parts + new_parts, counts + new_counts)
            ent_rows = np.zeros(nb, np.uint64)
            ent_rows[base_keep[:, 0]] = rowids[base_keep[:, 1]]
            alive = np.zeros(nb + added, bool)
            alive[base_keep[:, 0]] = True
            alive[nb:] = True
            meta["base"] = old.base_name
            st = State(
                meta,
                np.concatenate([np.asarray(old.keys)[:nb], known_keys[rest[:, 0]], keys[rows_new]]),
                np.concatenate([np.asarray(old.sums)[:nb], known_sums[rest[:, 0]], sums[rows_new]]),
                np.concatenate([ent_rows, rowids[rest[:, 1]], rowids[rows_new]]),
                old.codes,
                coarse,
                alive=alive,
            )
            st.delta = delta
            return st
        parts, counts = codes_of(keep[:, 0])
        st = State(meta, *self._entry_arrays(known_keys, known_sums, keys, sums, rowids, keep, rows_new))
        st.coarse = coarse
        st.codes = fs.assemble(cents, parts + new_parts, counts + new_counts)
        return st

    def _update_vectors(self, st, old, keep, segs, seg_keep, ds, keys, rowids, rows_new) -> None:
        from usearch.index import Index as UIndex  # late: only single-vector tables need usearch

        dim = self.table.info.dim
        ix: Any = UIndex(ndim=dim, metric="ip", dtype="i8", connectivity=16)
        if old is not None and old.vectors is not None and old.path is not None:
            ix = UIndex.restore(str(old.path / "vectors.usearch"))  # a writable copy
            gone = np.setdiff1d(np.asarray(old.keys), np.asarray(old.keys)[keep])
            if len(gone):
                ix.remove(gone)
        if len(seg_keep):
            sk = np.concatenate([a["keys"] for _, a in segs])
            sv = np.concatenate([a["vectors"] for _, a in segs])
            ix.add(sk[seg_keep], sv[seg_keep])
        a = 0
        new_keys = keys[rows_new]
        for vecs, _ in _vectors(ds, rowids[rows_new], "biqwen"):
            ix.add(new_keys[a : a + len(vecs)], vecs)
            a += len(vecs)
        st.vectors = ix


def _full_view(st: State, caught_up: int = 0, from_writers: int = 0) -> View:
    alive = None if st.alive is None else np.asarray(st.alive)
    return View(st, np.asarray(st.rowids), alive, caught_up=caught_up, from_writers=from_writers)


def _covers(st: State | None, ds) -> TypeGuard[State]:
    """``st`` covers exactly the table version ``ds`` (the row count guards against a table
    dropped and made again, whose versions start over)."""
    return st is not None and st.version == ds.version and st.n == ds.count_rows()


def _match(old: State, keys: np.ndarray, sums: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``(keep (m, 2): [old entry, table row], new table rows)``: entries whose row is still
    there with the same checksum, each matched once, and the rows no entry covers."""
    alive = np.ones(old.entries, bool) if old.alive is None else np.asarray(old.alive)
    return _match_arrays(np.asarray(old.keys), np.asarray(old.sums), alive, keys, sums)


def _match_arrays(ekeys, esums, alive, keys: np.ndarray, sums: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """:func:`_match` over entries given as arrays; only ``alive`` entries match."""
    where: dict[tuple[int, int], int] = {}
    live = np.flatnonzero(alive)
    for i, k, s in zip(live.tolist(), np.asarray(ekeys)[live].tolist(), np.asarray(esums)[live].tolist()):
        where.setdefault((k, s), i)  # the same rows twice (a segment folded already): the first entry
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
    mapped = np.zeros(old.entries, np.uint64)
    alive = np.zeros(old.entries, bool)
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


def describe(store: Store, table: EmbeddingTable, li: LiveIndex | None = None) -> dict:
    """The index state for ``store list`` and ``/stats`` (reads no vectors, changes nothing)."""
    if not store.local:
        return {"state": "none (remote store: exact search)"}
    li = li or LiveIndex(store, table)
    try:
        st = li.load()
    except IndexUnusable as e:
        return {"state": "damaged (rebuilt by the next search)", "reason": str(e)}
    if st is None:
        return {"state": "none", "min_rows": min_rows()}
    version = table.version()
    pending = li.pending(st)
    if version == st.version:
        state = "current"
    elif _covered_by_segments(st, pending, version):
        state = "current (the last commits' rows coded by their writers, folded in by the next search)"
    else:
        state = "behind (caught up by the next search)"
    return {
        "state": state,
        "rows": st.n,
        "pending_rows": sum(s.rows for s in pending),
        "pending_segments": len(pending),
        "version": st.version,
        "table_version": table.version(),
        "bytes": st.nbytes(),
        "bytes_per_row": round(st.nbytes() / max(st.n, 1), 1),
        "min_rows": min_rows(),
        "kind": "centroid codes" if st.codes is not None else "usearch hnsw i8",
        **_codebook(li, st),
    }


def _codebook(li: LiveIndex, st: State) -> dict:
    if st.codes is None:
        return {}
    out = {"centroids": len(st.codes.centroids), "built_rows": st.meta.get("built_rows")}
    want = li.outgrown(st)
    if want is not None:
        out["outgrown"] = f"a table of {st.n} rows gets {want} centroids: `nomic-memory index rebuild` re-trains it"
    return out


def retrain_if_outgrown(store: Store, table: EmbeddingTable, on_event=None) -> dict | None:
    """Rebuild the index of ``table`` with a new codebook if the table has outgrown its codebook
    (:meth:`LiveIndex.outgrown`): what ``embed`` and ``import`` do after a run that added rows, so
    that a growing table does not keep a codebook sized for a fraction of it.  A search's
    catch-up never does it (re-training reads every vector back: minutes at 100,000 pages).
    ``on_event("index_retraining" | "index_retrained", data)`` reports it; returns what was done,
    or None (no index yet, a remote store, or a codebook that still fits)."""
    if not store.local:
        return None
    li = LiveIndex(store, table)
    try:
        st = li.load()
    except IndexUnusable:
        return None  # rebuilt by the next search, sized for the table then
    rows = table.count()
    want = li.outgrown(st, rows) if st is not None else None
    if st is None or want is None:
        return None
    before = st.settings.n_centroids
    if on_event is not None:
        on_event("index_retraining", {"table": table.name, "rows": rows, "centroids": want, "before": before})
    t0 = time.perf_counter()
    new = li.rebuild()
    done = {
        "table": table.name,
        "rows": new.n,
        "centroids": new.settings.n_centroids,
        "before": before,
        "seconds": round(time.perf_counter() - t0, 3),
    }
    if on_event is not None:
        on_event("index_retrained", done)
    return done


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
    keys = np.asarray(st.keys) if st.alive is None else np.asarray(st.keys)[np.asarray(st.alive)]
    if len(np.unique(keys)) != len(keys):
        out.append(f"{len(keys) - len(np.unique(keys))} rows are indexed more than once")
    for c in st.parts:
        if len(c.codes) and int(np.max(c.codes)) >= len(c.centroids):
            out.append("codes out of range")
        counts = np.bincount(np.asarray(c.codes).astype(np.int64), minlength=len(c.centroids))
        if not np.array_equal(np.diff(np.asarray(c.inv_offsets)), counts):
            out.append("inverted lists do not match the codes")
    return out


_WRITERS: dict[Path, LiveIndex] = {}


def _record_commit(table: EmbeddingTable, written: WrittenRows) -> None:
    """The store's commit hook: a write to a table whose index exists codes its rows for it."""
    store = table.store
    if store is None or not store.local:
        return
    base = Path(store.path) / INDEX_DIR / table.name
    if not (base / "CURRENT").exists():
        return
    li = _WRITERS.get(base)
    if li is None or li.table.info != table.info:
        li = _WRITERS[base] = LiveIndex(store, table)
    li.table = table
    li.record(written)


on_commit(_record_commit)


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
    "base_settings",
    "describe",
    "key_u64",
    "repair",
    "retrain_if_outgrown",
    "verify",
    "min_rows",
    "table_rows",
]
