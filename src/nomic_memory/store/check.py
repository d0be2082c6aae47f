"""``nomic-memory check``: verify every row of a store table, and repair what is damaged.

A row is *bad* when its stored vectors no longer match the checksum written with them (a flipped
bit in a data file), contain NaN or infinite values, disagree with their ``n_vectors`` or the
table's width, or sit in a fragment (data file) that cannot be read at all.  The table is
streamed fragment by fragment, so a damaged file costs its own rows, not the check, and memory
stays at one batch.  Repair (:func:`nomic_memory.api.repair`) deletes the bad rows and re-embeds their files with the
model the table records: an ordinary, resumable run, which embeds exactly the files that have no row.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa

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
        return {"root": self.root, "path": self.path, "page": self.page, "reason": self.reason,
                "fragment": self.fragment}


@dataclass
class CheckReport:
    table: str
    rows_checked: int = 0
    checksummed: bool = True  # False for tables made before checksums (schema 1)
    bad: list[BadRow] = field(default_factory=list)
    duplicates: int = 0
    unreadable_fragments: list[int] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.bad and not self.duplicates

    def files(self) -> dict[str, set[str]]:
        """``root -> relative paths`` to re-embed (as stored: escaped keys)."""
        out: dict[str, set[str]] = {}
        for b in self.bad:
            if b.root is not None and b.path is not None:
                out.setdefault(b.root, set()).add(b.path)
        return out

    def to_dict(self) -> dict:
        return {"table": self.table, "rows_checked": self.rows_checked, "checksummed": self.checksummed,
                "ok": self.ok, "duplicates": self.duplicates,
                "unreadable_fragments": self.unreadable_fragments, "bad": [b.to_dict() for b in self.bad]}


def _row_vectors(emb: pa.Array, kind: str) -> tuple[np.ndarray, np.ndarray]:
    """``(flat values in storage dtype, per-row start offsets in values)`` of one batch."""
    if kind == "colqwen":
        emb = emb if not isinstance(emb, pa.ChunkedArray) else emb.combine_chunks()
        offs = np.asarray(emb.offsets.to_numpy(zero_copy_only=False), dtype=np.int64)
        # ``offsets`` index ``values`` (the whole child array, whatever the slice): consistent.
        return emb.values.flatten().to_numpy(zero_copy_only=False), offs
    flat = emb.flatten().to_numpy(zero_copy_only=False)
    return flat, np.arange(len(emb) + 1, dtype=np.int64)


def verify_table(table: EmbeddingTable, batch_size: int = 256) -> CheckReport:
    """Check every row of ``table`` (see the module docstring); never raises for damaged data."""
    info = table.info
    rep = CheckReport(table.name, checksummed=table.has_checksums)
    cols = _KEYS + ["n_vectors", "embedding"] + (["embedding_checksum"] if rep.checksummed else [])
    np_dt = np.float16 if info.storage_dtype == "float16" else np.float32
    ds = table.table.to_lance()
    for frag in ds.get_fragments():
        fid = frag.fragment_id
        try:
            for batch in frag.to_batches(columns=cols, batch_size=batch_size, with_row_id=True):
                _check_batch(batch, info, np_dt, rep, fid)
        except Exception as e:  # noqa: BLE001 - a damaged data file: report its rows
            rep.unreadable_fragments.append(fid)
            reason = f"unreadable data file (fragment {fid}): {str(e).splitlines()[0][:160] if str(e) else type(e).__name__}"
            try:
                keys = frag.to_table(columns=_KEYS, with_row_id=True).to_pydict()
                for r, p, pg, rid in zip(keys["root"], keys["path"], keys["page"], keys["_rowid"]):
                    rep.bad.append(BadRow(r, p, pg, reason, rid, fid))
            except Exception:  # noqa: BLE001 - not even the keys
                rep.bad.append(BadRow(None, None, None, reason + "; its rows' names are unreadable too", None, fid))
    try:
        rep.duplicates = table.duplicate_count()
    except Exception:  # noqa: BLE001 - reported through the fragments above
        pass
    return rep


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
            vec = flat[offs[i] * dim: offs[i + 1] * dim]
        else:
            n = 1
            vec = flat[i * dim:(i + 1) * dim]
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


def delete_bad_rows(table: EmbeddingTable, report: CheckReport) -> tuple[int, list[str]]:
    """Delete the bad rows (and duplicates) of ``report``; returns the rows deleted and the roots
    (as stored keys) whose files must be re-embedded to restore them (only roots still present).

    Rows whose names cannot be read are not repairable by re-embedding one file: their data files
    are dropped and every root is re-run (unchanged files are skipped).  The re-embedding itself
    is :func:`nomic_memory.api.repair`'s (the store layer never loads a model)."""
    deleted = 0
    nameless = sorted({b.fragment for b in report.bad if b.path is None and b.fragment is not None})
    if nameless:  # rows we cannot even name: drop their data files, re-run every root
        before = table.count()
        table.drop_fragments(nameless)
        deleted += before - table.count()
    if report.duplicates:
        deleted += table.dedupe()
    files = report.files()
    for root, paths in files.items():
        deleted += table.delete_paths(key_to_path(root), [key_to_path(p) for p in paths])
    roots = set(files)
    if nameless:
        roots |= set(table.to_arrow(["root"]).column("root").unique().to_pylist())
    return deleted, sorted(r for r in roots if Path(key_to_path(r)).is_dir())


__all__ = ["BadRow", "CheckReport", "delete_bad_rows", "verify_table"]
