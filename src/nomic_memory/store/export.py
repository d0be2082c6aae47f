"""Export a store table to standard formats (npz, parquet) so embeddings can leave the tool."""

from __future__ import annotations

import os
import tempfile
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from nomic_memory.errors import StoreError, UsageError
from nomic_memory.store.table import EmbeddingTable, Store, path_to_key

FORMATS = ("npz", "parquet")


class ExportError(StoreError):
    """The export file cannot be written (a directory in the way, a full disk, no permission)."""


@contextmanager
def _atomic_output(out: Path):
    """Yield a temporary path beside ``out``; on success it replaces ``out`` in one rename, on any
    failure it is removed: an export never leaves a truncated file under the name asked for."""
    if out.is_dir():
        raise UsageError(f"--out {out} is a directory; give a file name such as {out / 'embeddings'}")
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{out.name}.", suffix=".part", dir=out.parent)
        os.close(fd)
    except OSError as e:
        raise ExportError(f"cannot write {out}: {e.strerror or e}") from None
    try:
        yield Path(tmp)
        os.replace(tmp, out)
    except OSError as e:
        raise ExportError(f"cannot write {out}: {e.strerror or e}; nothing was written") from None
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def export_table(table: EmbeddingTable, fmt: str, out: str | Path, root: str | None = None) -> int:
    """Write ``table`` to ``out``; return the number of images exported.

    npz: one float32 array per image or page, keyed by its relative path (``report.pdf#3`` for
    page 3 of a document; ``(n, 128)`` for ColNomic, ``(dim,)`` for Nomic).  parquet: the table as
    stored (with its ``page`` column), embeddings converted to float32 lists.
    """
    out = Path(out)
    if fmt not in FORMATS:
        raise UsageError(f"unknown export format {fmt!r}; choose npz or parquet")
    with _atomic_output(out) as tmp:
        return _export(table, fmt, tmp, root)


def _export(table: EmbeddingTable, fmt: str, out: Path, root: str | None) -> int:
    info = table.info
    roots_seen: set[str] = set()
    if fmt == "npz":
        arrays: dict[str, np.ndarray] = {}
        for batch in table.iter_batches(["root", "path", "page", "embedding"]):
            paths = batch.column("path").to_pylist()
            roots = batch.column("root").to_pylist()
            pages = batch.column("page").to_pylist()
            emb = batch.column("embedding")
            for i, (r, p, pg) in enumerate(zip(roots, paths, pages)):
                if root is not None and r != path_to_key(root):
                    continue
                roots_seen.add(r)
                key = p if not pg else f"{p}#{pg}"  # a document's pages: report.pdf#3
                arrays[key] = _row(emb, i, info.kind, info.dim)
        if len(roots_seen) > 1:
            raise UsageError("the store holds several embedded directories; pass --root to choose one")
        with open(out, "wb") as f:
            np.savez(f, **arrays)
        return len(arrays)
    t = table.to_arrow()
    if root is not None:
        t = t.filter(pc.equal(t.column("root"), path_to_key(root)))
    emb = t.column("embedding").combine_chunks()
    if info.kind == "colqwen":
        f32 = emb.cast(pa.list_(pa.list_(pa.float32(), info.dim)))
    else:
        f32 = emb.cast(pa.list_(pa.float32(), info.dim))
    t = t.set_column(t.schema.get_field_index("embedding"), "embedding", f32)
    pq.write_table(t, out)
    return t.num_rows


def _row(emb: pa.Array, i: int, kind: str, dim: int) -> np.ndarray:
    v = emb[i]
    if kind == "colqwen":
        # ``flatten()``, not ``.values``: a row's vectors are a slice of the batch's child array,
        # and ``.values`` would ignore the slice's offset and length.
        flat = v.values.flatten().to_numpy(zero_copy_only=False)
        return np.asarray(flat, dtype=np.float32).reshape(-1, dim)
    return np.asarray(v.values.to_numpy(zero_copy_only=False), dtype=np.float32).reshape(dim)


def export_store(store_path: str | Path, fmt: str, out: str | Path, table: str | None = None,
                 root: str | None = None) -> int:
    store = Store(store_path, create=False)
    t = store.open_table(table) if table else store.only_table()
    return export_table(t, fmt, out, root)
