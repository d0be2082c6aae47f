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


def _user_mode(out: Path) -> int:
    """The mode a new file gets from the user's umask (an existing file keeps its own)."""
    try:
        return out.stat().st_mode & 0o7777
    except OSError:
        mask = os.umask(0)
        os.umask(mask)
        return 0o666 & ~mask


def _through_special_file(out: Path):
    """Write to a temporary file (formats such as zip need to seek), then copy it through ``out``."""
    import shutil

    with tempfile.TemporaryDirectory(prefix="nomic-memory-export-") as d:
        tmp = Path(d) / "export"
        try:
            yield tmp
            with open(tmp, "rb") as src, open(out, "wb") as dst:
                shutil.copyfileobj(src, dst, 1 << 20)
        except OSError as e:
            raise ExportError(f"cannot write {out}: {e.strerror or e}") from None


@contextmanager
def _atomic_output(out: Path):
    """Yield the path to write: a temporary file beside ``out`` that replaces it in one rename
    on success and is removed on any failure (an export never leaves a truncated file under the
    name asked for), with the mode the user's umask gives.  A special file (``/dev/stdout``, a
    FIFO, ``/dev/null``) is written through, never replaced."""
    if out.is_dir():
        raise UsageError(f"--out {out} is a directory; give a file name such as {out / 'embeddings'}")
    if out.exists() and not out.is_file():
        yield from _through_special_file(out)
        return
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{out.name}.", suffix=".part", dir=out.parent)
        os.close(fd)
    except OSError as e:
        raise ExportError(f"cannot write {out}: {e.strerror or e}") from None
    try:
        yield Path(tmp)
        os.chmod(tmp, _user_mode(out))
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
            raise UsageError(
                "the store holds several embedded directories ("
                + ", ".join(sorted(roots_seen))
                + "); pass --root to choose one"
            )
        with open(out, "wb") as f:
            np.savez(f, **arrays)  # type: ignore[arg-type]  # numpy stubs: **kwds read as allow_pickle
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
    with open(out, "wb") as f:
        pq.write_table(t, f)
    return t.num_rows


def _row(emb: pa.Array, i: int, kind: str, dim: int) -> np.ndarray:
    v = emb[i]
    if kind == "colqwen":
        # ``flatten()``, not ``.values``: a row's vectors are a slice of the batch's child array,
        # and ``.values`` would ignore the slice's offset and length.
        flat = v.values.flatten().to_numpy(zero_copy_only=False)
        return np.asarray(flat, dtype=np.float32).reshape(-1, dim)
    return np.asarray(v.values.to_numpy(zero_copy_only=False), dtype=np.float32).reshape(dim)


def export_store(
    store_path: str | Path, fmt: str, out: str | Path, table: str | None = None, root: str | None = None
) -> int:
    return export_store_table(store_path, fmt, out, table, root)[0]


def export_store_table(
    store_path: str | Path, fmt: str, out: str | Path, table: str | None = None, root: str | None = None
) -> tuple[int, str]:
    """:func:`export_store`, also returning the name of the table exported."""
    store = Store(store_path, create=False)
    t = store.open_table(table) if table else store.only_table()
    return export_table(t, fmt, out, root), t.name
