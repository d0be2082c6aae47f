"""Export a store table to standard formats (npz, parquet) so embeddings can leave the tool."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from .store import EmbeddingTable, Store

FORMATS = ("npz", "parquet")


def export_table(table: EmbeddingTable, fmt: str, out: str | Path, root: str | None = None) -> int:
    """Write ``table`` to ``out``; return the number of images exported.

    npz: one float32 array per image, keyed by its relative path (``(n, 128)`` for ColNomic,
    ``(dim,)`` for Nomic).  parquet: the table as stored, embeddings converted to float32 lists.
    """
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    if fmt not in FORMATS:
        raise ValueError(f"unknown export format {fmt!r}; choose npz or parquet")
    info = table.info
    roots_seen: set[str] = set()
    if fmt == "npz":
        arrays: dict[str, np.ndarray] = {}
        for batch in table.iter_batches(["root", "path", "embedding"]):
            paths = batch.column("path").to_pylist()
            roots = batch.column("root").to_pylist()
            emb = batch.column("embedding")
            for i, (r, p) in enumerate(zip(roots, paths)):
                if root is not None and r != root:
                    continue
                roots_seen.add(r)
                arrays[p if len(roots_seen) <= 1 else f"{r}/{p}"] = _row(emb, i, info.kind, info.dim)
        if len(roots_seen) > 1:
            raise ValueError("the store holds several embedded directories; pass --root to choose one")
        with open(out, "wb") as f:
            np.savez(f, **arrays)
        return len(arrays)
    t = table.to_arrow()
    if root is not None:
        t = t.filter(pc.equal(t.column("root"), root))
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
