"""Stored vectors read through a memory map: an exact re-rank's candidates without copies.

A re-rank reads a few hundred pages' vectors (200 pages x ~750 x 128 float16: 38 MB at 100,000
pages).  Lance's ``take`` reads them with ``pread`` into its own buffers and assembles Arrow
arrays: 32-45 ms of CPU for 200 pages on this project's 2-core machine, whose kernel copies out
of the page cache at ~2 GB/s (a plain ``pread`` of the same 38 MB: 20 ms).  Mapped, the same rows
are views that the scorer widens to float32 as it reads them: ~2 ms for 200 pages
(BENCHMARKS.md, "Candidates read through a memory map").

What is mapped, and why it is safe.  Lance's file format 2.0 (the format this project writes,
:data:`nomic_memory.store.table.LANCE_FORMAT`) stores a ``list<fixed_size_list<float, dim>>``
column as one page of 64-bit end offsets, one per physical row, and pages of plain values.
:class:`MappedVectors` reads that layout from each data file's own metadata
(``lance.file.LanceFileReader``) and maps the file read-only.  It maps nothing it has not
checked: a file laid out any other way (another format version, compression, nulls, more than
one offsets page, offsets that do not add up) is not mapped, and each mapped file's rows are
compared once, byte for byte, with Lance's own ``take`` of sample rows before any is served.  For
rows it does not map, :meth:`MappedVectors.rows` answers ``None`` and the caller reads them with
``take``.  Row ids are Lance row addresses (fragment id << 32 | offset), which a table without
stable row ids uses; a table with stable row ids is not mapped at all.  Data files never change
once written, so a file's map serves every version of the table that still contains it.
"""

from __future__ import annotations

import logging
import mmap
import os
import re
import threading
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pyarrow as pa

log = logging.getLogger(__name__)

_WORD = re.compile(r"\s+")
_CHECKED_ROWS = 3  # rows of each file compared with Lance's take before the file is used
# A process's mappings of the vectors it read are dropped once this many bytes of rows were read
# since the last time (see MappedVectors.release).
RELEASE_EVERY = 256 << 20
_CAN_RELEASE = hasattr(mmap, "MADV_DONTNEED") and hasattr(mmap.mmap, "madvise")
_UNKNOWN = object()


@dataclass(frozen=True)
class _File:
    """One data file's ``embedding`` column: where each physical row's vectors are."""

    mapping: mmap.mmap  # the whole file, read-only
    data: np.ndarray  # the same bytes as a uint8 array
    ends: np.ndarray  # (physical rows,) end item of each row (uint64 view of the offsets page)
    page_pos: np.ndarray  # (pages,) byte position of each values page
    page_first: np.ndarray  # (pages + 1,) first item of each page, then the total
    dim: int
    dtype: np.dtype

    def _ranges(self, offset: int) -> list[tuple[int, int]]:
        """``(byte position, vectors)`` of the row at ``offset``: one range, or one per values
        page its vectors lie on."""
        a = int(self.ends[offset - 1]) if offset else 0
        b = int(self.ends[offset])
        width = self.dim * self.dtype.itemsize
        out = []
        while a < b:
            p = int(np.searchsorted(self.page_first, a, side="right")) - 1
            stop = min(b, int(self.page_first[p + 1]))
            out.append((int(self.page_pos[p]) + (a - int(self.page_first[p])) * width, stop - a))
            a = stop
        return out

    def row(self, offset: int) -> np.ndarray:
        """The ``(n, dim)`` vectors of the row at ``offset``: a view, or a copy for a row whose
        vectors continue on the next page."""
        width = self.dim * self.dtype.itemsize
        parts = [
            self.data[pos : pos + n * width].view(self.dtype).reshape(n, self.dim) for pos, n in self._ranges(offset)
        ]
        if len(parts) == 1:
            return parts[0]
        return np.concatenate(parts) if parts else np.zeros((0, self.dim), self.dtype)

    def nbytes(self, offset: int) -> int:
        """The size of the row's vectors."""
        a = int(self.ends[offset - 1]) if offset else 0
        return (int(self.ends[offset]) - a) * self.dim * self.dtype.itemsize

    def release(self) -> None:
        """Drop this process's mapping of the whole file (its pages stay in the page cache; a
        view of them still reads them, faulting them back in)."""
        self.mapping.madvise(mmap.MADV_DONTNEED)


class MappedVectors:
    """The ``embedding`` column of one table's data files, memory-mapped where their layout
    allows (see the module's docstring).  Thread-safe; one per table, kept as long as the
    searching object lives."""

    def __init__(self, column: str = "embedding"):
        self.column = column
        self._files: dict[str, _File | None] = {}  # by data file path; None: not mapped
        self._versions: dict[tuple[str, int], dict[int, str]] = {}  # (uri, version) -> fragment id -> path
        self._lock = threading.Lock()
        self._read = 0  # bytes of rows read since the mappings were last dropped (release)

    def rows(self, ds, rowids: Sequence[int]) -> list[np.ndarray | None]:
        """Each row's ``(n, dim)`` vectors (row ids of ``ds``, a Lance dataset), ``None`` for a row
        this reader does not map (read it with Lance's ``take``)."""
        frags = self._fragments(ds)
        out: list[np.ndarray | None] = []
        for r in rowids:
            r = int(r)
            path = frags.get(r >> 32)
            f = self._file(ds, path) if path else None
            out.append(f.row(r & 0xFFFFFFFF) if f is not None else None)
        return out

    def release(self, ds, rowids: Sequence[int]) -> None:
        """Note that the rows' vectors are scored.  Once :data:`RELEASE_EVERY` bytes were read
        since the last time, drop this process's mappings of every mapped file: the pages stay
        in the page cache, and the process's resident memory does not grow with every page a
        search ever read (the kernel maps cached pages in folios of up to 2 MiB: 400 rows of 192
        KB read left 197 MB mapped; a long-running server would show the whole table as its
        own).  Dropping them after every search cost 4-6 ms a search at 100,000 pages (the next
        one faults its pages back in); this way a few ms every ~7 searches.  A no-op where the
        platform has no ``madvise``."""
        if not _CAN_RELEASE:
            return
        frags = self._fragments(ds)
        read = 0
        for r in rowids:
            f = self._files.get(frags.get(int(r) >> 32, ""))
            if f is not None:
                read += f.nbytes(int(r) & 0xFFFFFFFF)
        with self._lock:
            self._read += read
            if self._read < RELEASE_EVERY:
                return
            self._read = 0
            files = [f for f in self._files.values() if f is not None]
        for f in files:
            f.release()

    def mapped_files(self) -> int:
        """How many data files are mapped (for tests and diagnostics)."""
        return sum(f is not None for f in self._files.values())

    # ------------------------------------------------------------------ internals
    def _fragments(self, ds) -> dict[int, str]:
        key = (ds.uri, ds.version)
        got = self._versions.get(key)
        if got is not None:
            return got
        got = {}
        if not ds.has_stable_row_ids and "://" not in ds.uri and os.path.isdir(ds.uri):
            field = ds.lance_schema.field(self.column)
            ids = [field.id(), *(c.id() for c in field.children())] if field is not None else []
            for frag in ds.get_fragments():
                for df in frag.data_files():
                    if ids and ids[0] in df.fields:
                        got[frag.fragment_id] = os.path.join(ds.uri, "data", df.path)
        with self._lock:
            if len(self._versions) >= 8:  # a few recent versions (a server's searches share the latest)
                self._versions.pop(next(iter(self._versions)))
            self._versions[key] = got
            if ds.version >= max(v for u, v in self._versions if u == ds.uri):
                # unmap the files the newest version no longer uses (compacted or deleted away):
                # a map keeps a deleted file's disk space allocated for as long as it lives.  (A
                # search of an older version still reading one keeps that map alive itself.)
                used = set(got.values())
                for path in [p for p in self._files if p not in used]:
                    del self._files[path]
        return got

    def _file(self, ds, path: str) -> _File | None:
        got = self._files.get(path, _UNKNOWN)
        if got is not _UNKNOWN:
            return got  # type: ignore[return-value]
        with self._lock:
            if path not in self._files:
                try:
                    self._files[path] = self._open(ds, path)
                except Exception as e:  # anything unexpected: that file is read with take
                    log.debug("not mapping %s: %s", path, e)
                    self._files[path] = None
            return self._files[path]

    def _open(self, ds, path: str) -> _File | None:
        from lance.file import LanceFileReader

        frag, df = self._data_file(ds, path)
        if (df.file_major_version, df.file_minor_version) != (2, 0) or getattr(df, "base_id", None) is not None:
            return None
        field = ds.lance_schema.field(self.column)
        children = field.children()
        if len(children) != 1:
            return None
        kind = ds.schema.field(self.column).type
        if not (pa.types.is_list(kind) and pa.types.is_fixed_size_list(kind.value_type)):
            return None  # only list<fixed_size_list<float, dim>> (a single-vector table reads with take)
        dim = kind.value_type.list_size
        floats: dict[pa.DataType, np.dtype] = {pa.float16(): np.dtype(np.float16), pa.float32(): np.dtype(np.float32)}
        dtype = floats.get(kind.value_type.value_type)
        if dtype is None:
            return None
        cols = {fid: ci for fid, ci in zip(df.fields, df.column_indices)}
        meta = LanceFileReader(path).metadata()
        offsets_col, values_col = meta.columns[cols[field.id()]], meta.columns[cols[children[0].id()]]
        rows = frag.physical_rows
        if len(offsets_col.pages) != 1 or len(offsets_col.pages[0].buffers) != 1:
            return None
        enc = _words(offsets_col.pages[0].encoding)
        numbers = re.search(r"null_offset_adjustment: (\d+), num_items: (\d+),", enc)
        if numbers is None:
            return None
        adjustment, total = int(numbers.group(1)), int(numbers.group(2))
        if enc != _offsets_encoding(adjustment, total) or adjustment <= total:
            return None
        want = _values_encoding(dim, dtype.itemsize * 8)
        if not values_col.pages or any(
            len(p.buffers) != 1 or _words(p.encoding) != want or p.buffers[0].size % (dim * dtype.itemsize)
            for p in values_col.pages
        ):
            return None
        with open(path, "rb") as fh:
            mapped = mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ)
        data = np.frombuffer(mapped, dtype=np.uint8)
        buf = offsets_col.pages[0].buffers[0]
        if buf.size != 8 * rows:
            return None
        ends = data[buf.position : buf.position + buf.size].view("<u8")
        sizes = np.array([p.buffers[0].size // (dim * dtype.itemsize) for p in values_col.pages], np.int64)
        first = np.zeros(len(sizes) + 1, np.int64)
        np.cumsum(sizes, out=first[1:])
        if total != int(first[-1]) or (rows and (int(ends[-1]) != total or (np.diff(ends.astype(np.int64)) < 0).any())):
            return None
        pos = np.array([p.buffers[0].position for p in values_col.pages], np.int64)
        f = _File(mapped, data, ends, pos, first, dim, dtype)
        return f if _same_as_lance(ds, frag, f, self.column) else None

    @staticmethod
    def _data_file(ds, path: str):
        for frag in ds.get_fragments():
            for df in frag.data_files():
                if os.path.join(ds.uri, "data", df.path) == path:
                    return frag, df
        raise LookupError(path)


def _words(encoding) -> str:
    """An encoding's description with its whitespace collapsed (the form compared here)."""
    return _WORD.sub(" ", str(encoding)).strip()


def _some(x: str) -> str:
    return f"Some( {x}, )"


def _array(x: str) -> str:
    return f"ArrayEncoding {{ array_encoding: {_some(x)}, }}"


def _no_nulls(x: str) -> str:
    return f"Nullable( Nullable {{ nullability: {_some(f'NoNulls( NoNull {{ values: {_some(_array(x))}, }}, )')}, }}, )"


def _flat(bits: int) -> str:
    buffer = _some("Buffer { buffer_index: 0, buffer_type: Page, }")
    return f"Flat( Flat {{ bits_per_value: {bits}, buffer: {buffer}, compression: None, }}, )"


def _offsets_encoding(adjustment: int, items: int) -> str:
    """The description (as :func:`_words` gives it) of a list column's page of plain 64-bit
    offsets, the form Lance 2.0 writes."""
    return _array(
        f"List( List {{ offsets: {_some(_array(_no_nulls(_flat(64))))}, null_offset_adjustment: {adjustment}, "
        f"num_items: {items}, }}, )"
    )


def _values_encoding(dim: int, bits: int) -> str:
    """The description of a values page of ``fixed_size_list<float, dim>`` without nulls, stored
    plain: what Lance 2.0 writes for this project's vectors."""
    items = _some(_array(_no_nulls(_flat(bits))))
    return _array(
        _no_nulls(f"FixedSizeList( FixedSizeList {{ dimension: {dim}, has_validity: false, items: {items}, }}, )")
    )


def _same_as_lance(ds, frag, f: _File, column: str) -> bool:
    """Whether sample rows of the fragment (its first, middle and last live rows) read through
    the map equal Lance's own ``take`` of them, byte for byte."""
    live = frag.to_table(columns=[], with_row_address=True).column("_rowaddr").to_numpy()
    if len(live) == 0:
        return True
    pick = sorted({int(live[0]), int(live[len(live) // 2]), int(live[-1])})[:_CHECKED_ROWS]
    got = ds._take_rows(pick, columns=[column]).column(column).combine_chunks()
    for i, r in enumerate(pick):
        want = got[i].values.flatten().to_numpy(zero_copy_only=False)
        if not np.array_equal(f.row(r & 0xFFFFFFFF).reshape(-1).view(np.uint8), want.view(np.uint8)):
            return False
    return True


__all__ = ["MappedVectors"]
