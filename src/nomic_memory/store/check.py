"""``nomic-memory check``: verify every row of a store table, and find the rows that are missing.

A row is *bad* when its stored vectors no longer match the checksum written with them (a flipped
bit in a data file), contain NaN or infinite values, disagree with their ``n_vectors`` or the
table's width, or sit in a fragment (data file) any of whose columns cannot be read (every column
is read: a run reads ``content_hash``, ``path``, ``size``... as much as the vectors).  The table is
streamed fragment by fragment, so a damaged file costs its own rows, not the check, and memory
stays at one batch.  A page is *missing* when a document whose file is unchanged (same content
hash) has pages the table does not hold and that are not remembered as failed.

Repair (:func:`nomic_memory.api.repair`) re-embeds exactly the bad and missing rows from their
files and only then removes the bad rows; what it cannot re-embed it keeps and reports.
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa

from nomic_memory.ingest.listing import inspect_file
from nomic_memory.logs import report_dict
from nomic_memory.store.failures import FailureLog
from nomic_memory.store.table import EmbeddingTable, embedding_checksum, key_to_path

log = logging.getLogger(__name__)

_KEYS = ["root", "path", "page"]


@dataclass
class BadRow:
    root: str | None  # None: the fragment's keys could not be read either
    path: str | None
    page: int | None
    reason: str
    row_id: int | None = None
    fragment: int | None = None

    def to_dict(self) -> dict:
        """Every field but ``row_id`` (Lance's internal row address, for repair to delete by)."""
        return {k: v for k, v in asdict(self).items() if k != "row_id"}


@dataclass
class MissingRow:
    root: str
    path: str
    page: int
    reason: str

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class CheckReport:
    table: str
    rows_checked: int = 0
    checksummed: bool = True  # False for tables made before checksums (schema 1)
    bad: list[BadRow] = field(default_factory=list)
    missing: list[MissingRow] = field(default_factory=list)
    duplicates: int = 0
    unreadable_fragments: list[int] = field(default_factory=list)
    nameless_rows: dict[int, int] = field(default_factory=dict)  # fragment -> rows whose keys are unreadable

    @property
    def ok(self) -> bool:
        return not self.bad and not self.duplicates and not self.missing

    def files(self) -> dict[str, set[str]]:
        """``root -> relative paths`` to re-embed (as stored: escaped keys)."""
        out: dict[str, set[str]] = {}
        keys = [(b.root, b.path) for b in self.bad] + [(m.root, m.path) for m in self.missing]
        for root, path in keys:
            if root is not None and path is not None:
                out.setdefault(root, set()).add(path)
        return out

    def to_dict(self) -> dict:
        return report_dict(
            self,
            "table rows_checked checksummed ok duplicates unreadable_fragments bad missing",
            bad=[b.to_dict() for b in self.bad],
            missing=[m.to_dict() for m in self.missing],
        )


def _row_vectors(emb: pa.Array, kind: str) -> tuple[np.ndarray, np.ndarray]:
    """``(flat values in storage dtype, per-row start offsets in values)`` of one batch."""
    if kind == "colqwen":
        emb = emb if not isinstance(emb, pa.ChunkedArray) else emb.combine_chunks()
        offs = np.asarray(emb.offsets.to_numpy(zero_copy_only=False), dtype=np.int64)
        # ``offsets`` index ``values`` (the whole child array, whatever the slice): consistent.
        return emb.values.flatten().to_numpy(zero_copy_only=False), offs
    flat = emb.flatten().to_numpy(zero_copy_only=False)
    return flat, np.arange(len(emb) + 1, dtype=np.int64)


def verify_table(table: EmbeddingTable, batch_size: int = 256, files: bool = True) -> CheckReport:
    """Check every row of ``table`` (see the module docstring); never raises for damaged data.
    ``files``: also look for missing pages (reads each stored document's file, if unchanged)."""
    info = table.info
    rep = CheckReport(table.name, checksummed=table.has_checksums)
    cols = list(table.table.schema.names)  # every column: a run reads them all
    np_dt = np.float16 if info.storage_dtype == "float16" else np.float32
    docs: dict[tuple[str, str], dict] = {}
    ds = table.table.to_lance()
    for frag in ds.get_fragments():
        fid = frag.fragment_id
        try:
            for batch in frag.to_batches(columns=cols, batch_size=batch_size, with_row_id=True):
                _check_batch(batch, info, np_dt, rep, fid)
                _note_documents(batch, docs)
        except Exception as e:  # noqa: BLE001 - a damaged data file: report its rows
            _unreadable_fragment(frag, cols, e, rep, docs)
    try:
        rep.duplicates = table.duplicate_count()
    except Exception:  # noqa: BLE001 - reported through the fragments above
        pass
    if files:
        rep.missing = _missing_pages(table, docs)
    return rep


def _unreadable_fragment(frag, cols: list[str], e: BaseException, rep: CheckReport, docs: dict) -> None:
    """A data file some column of which cannot be decoded: every row of it is bad (a scan of any
    of its columns fails), named by its keys when those can still be read."""
    fid = frag.fragment_id
    rep.unreadable_fragments.append(fid)
    broken = []
    for c in cols:
        try:
            frag.to_table(columns=[c])
        except Exception:  # noqa: BLE001
            broken.append(c)
    first = str(e).splitlines()[0][:160] if str(e) else type(e).__name__
    reason = (
        f"unreadable data file (fragment {fid}"
        + (f", column{'s' if len(broken) > 1 else ''} {', '.join(broken)}" if broken else "")
        + f"): {first}"
    )
    try:
        keys = frag.to_table(columns=_KEYS + ["size", "content_hash"], with_row_id=True)
    except Exception:  # noqa: BLE001
        try:
            keys = frag.to_table(columns=_KEYS, with_row_id=True)
        except Exception:  # noqa: BLE001 - not even the keys
            try:
                n = frag.count_rows()
            except Exception:  # noqa: BLE001
                n = 0
            rep.nameless_rows[fid] = n
            rep.bad.append(
                BadRow(None, None, None, reason + f"; the names of its {n} rows are unreadable too", None, fid)
            )
            return
    d = keys.to_pydict()
    for r, p, pg, rid in zip(d["root"], d["path"], d["page"], d["_rowid"]):
        rep.bad.append(BadRow(r, p, pg, reason, rid, fid))
    _note_documents(keys, docs)


def _note_documents(batch, docs: dict) -> None:
    """Collect the stored pages (and size, hashes) of each document (rows with ``page`` > 0)."""
    names = batch.schema.names
    if "page" not in names:
        return
    pages = batch.column("page").to_pylist()
    if not any(pages):
        return
    roots, paths = batch.column("root").to_pylist(), batch.column("path").to_pylist()
    sizes = batch.column("size").to_pylist() if "size" in names else [None] * len(pages)
    hashes = batch.column("content_hash").to_pylist() if "content_hash" in names else [None] * len(pages)
    for r, p, pg, sz, h in zip(roots, paths, pages, sizes, hashes):
        if pg:
            d = docs.setdefault((r, p), {"pages": set(), "sizes": set(), "hashes": set()})
            d["pages"].add(int(pg))
            d["sizes"].add(sz)
            d["hashes"].add(h)


def _missing_pages(table: EmbeddingTable, docs: dict) -> list[MissingRow]:
    """Pages of unchanged documents that have no row (and did not fail before)."""
    out: list[MissingRow] = []
    failures: dict[str, dict] = {}
    for (root, path), d in sorted(docs.items()):
        root_dir = Path(key_to_path(root))
        f = root_dir / key_to_path(path)
        try:
            if not f.is_file() or f.stat().st_size not in d["sizes"]:
                continue  # gone or changed: the next run (or --prune) deals with it
        except OSError:
            continue
        sf = inspect_file(f, root_dir)
        if sf.error or sf.content_hash not in d["hashes"]:
            continue
        if root not in failures:
            failures[root] = FailureLog(table.store, table.name, key_to_path(root)).load() if table.store else {}
        failed = {pg for (p, pg), (h, _) in failures[root].items() if p == key_to_path(path) and h == sf.content_hash}
        want = {it.page for it in sf.items} - failed
        for pg in sorted(want - d["pages"]):
            out.append(MissingRow(root, path, pg, f"page {pg} of {len(sf.items) + len(sf.page_errors)} is not stored"))
    return out


def _check_batch(batch: pa.RecordBatch, info, np_dt, rep: CheckReport, fid: int) -> None:
    d = {n: batch.column(n) for n in batch.schema.names}
    roots, paths, pages = d["root"].to_pylist(), d["path"].to_pylist(), d["page"].to_pylist()
    rids = d["_rowid"].to_pylist()
    nvec = d["n_vectors"].to_pylist()
    sums = d["embedding_checksum"].to_pylist() if "embedding_checksum" in d else [None] * len(rids)
    flat, offs = _row_vectors(d["embedding"], info.kind)
    flat = np.asarray(flat, dtype=np_dt)
    dim = info.dim
    for i in range(len(rids)):
        rep.rows_checked += 1
        if info.kind == "colqwen":
            n = int(offs[i + 1] - offs[i])
            vec = flat[offs[i] * dim : offs[i + 1] * dim]
        else:
            n = 1
            vec = flat[i * dim : (i + 1) * dim]
        reason = None
        if n == 0 or vec.size != n * dim:
            reason = f"wrong vector count: {n} vectors"
        elif nvec[i] is not None and nvec[i] != n:
            reason = f"wrong vector count: {n} stored, row says {nvec[i]}"
        elif not np.isfinite(vec).all():
            reason = "embedding contains NaN or infinite values"
        elif sums[i] is not None and embedding_checksum(vec) != sums[i]:
            reason = "checksum mismatch (the stored vectors were altered)"
        if reason:
            rep.bad.append(BadRow(roots[i], paths[i], pages[i], reason, rids[i], fid))


def present_keys(table: EmbeddingTable, report: CheckReport, keys: set[tuple]) -> dict[tuple, list[int]]:
    """``key -> row ids`` of the good rows that hold ``keys`` (rows outside the bad ones and the
    unreadable data files): a repair killed after writing a replacement finds it here."""
    bad_ids = {b.row_id for b in report.bad if b.row_id is not None}
    skip = set(report.unreadable_fragments)
    out: dict[tuple, list[int]] = {}
    if not keys:
        return out
    ds = table.table.to_lance()
    for frag in ds.get_fragments():
        if frag.fragment_id in skip:
            continue
        d = frag.to_table(columns=_KEYS, with_row_id=True).to_pydict()
        for r, p, pg, rid in zip(d["root"], d["path"], d["page"], d["_rowid"]):
            k = (r, p, int(pg or 0))
            if k in keys and rid not in bad_ids:
                out.setdefault(k, []).append(rid)
    return out


def readable_keys(table: EmbeddingTable, report: CheckReport, root: str) -> set[tuple[str, int]]:
    """``(path, page)`` of the rows of ``root`` (a stored key) in the data files that can be read."""
    skip = set(report.unreadable_fragments)
    frags = [f for f in table.table.to_lance().get_fragments() if f.fragment_id not in skip]
    if not frags:
        return set()
    esc = root.replace("'", "''")
    ds = table.table.to_lance()
    d = ds.scanner(columns=["path", "page"], filter=f"root = '{esc}'", fragments=frags).to_table().to_pydict()
    return {(p, int(pg or 0)) for p, pg in zip(d["path"], d["page"])}


def readable_roots(table: EmbeddingTable, report: CheckReport) -> set[str]:
    skip = set(report.unreadable_fragments)
    out: set[str] = set()
    for frag in table.table.to_lance().get_fragments():
        if frag.fragment_id not in skip:
            out.update(frag.to_table(columns=["root"]).column("root").unique().to_pylist())
    return out


__all__ = ["BadRow", "CheckReport", "MissingRow", "present_keys", "readable_keys", "readable_roots", "verify_table"]
