"""Reading embeddings made elsewhere: parquet and npz files, checked row by row, streamed.

A *source* is a parquet file (this tool's own export, or any file with a ``path`` and an
``embedding`` column, and optionally ``page``, ``root`` and the store's other metadata columns),
an npz file (this tool's npz export: one array per image, keyed by its relative path, ``path#N``
for page N of a document), or a folder holding such files.  Pickles (``.pt``, ``.pkl``, ``.bin``,
..., a byaldi index) are refused before anything is read from them: loading a pickle runs any
code it holds.  Nothing here writes; :mod:`nomic_memory.store.importer` does.

Rows come out in batches of at most ``batch_rows`` (parquet is read batch by batch through its
row groups, an npz array by array), so memory holds one batch, whatever the file's size.
"""

from __future__ import annotations

import gzip
import json
import re
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from nomic_memory.errors import InputError

PICKLE_SUFFIXES = (".pt", ".pth", ".pkl", ".pickle", ".bin", ".ckpt", ".joblib")
SOURCE_SUFFIXES = (".parquet", ".npz")
#: Store columns a parquet source may carry besides path and embedding (kept as they are).
META_COLUMNS = ("content_hash", "size", "mtime", "width", "height", "dtype")
#: Columns that say which model made the rows (checked against the stamp, never written as is).
MODEL_COLUMNS = ("model_id", "model_revision", "proj_fingerprint")
READ_COLUMNS = ("root", "path", "page", "n_vectors", "embedding", *META_COLUMNS, *MODEL_COLUMNS)
FLOAT_TYPES = {pa.float16(): "float16", pa.float32(): "float32", pa.float64(): "float64"}
#: Bytes read from a parquet column chunk at a time (with pre-buffering off): a row group's
#: embeddings stream through this buffer instead of being read whole.
READ_BUFFER = 4 << 20
PICKLE_ADVICE = "nomic-memory never opens one; write the embeddings to parquet or npz first (README: Import)"


@dataclass
class Row:
    """One image or page to import: its key as stored (``root`` None: not in the source) and its
    vectors as read (float16, float32 or float64)."""

    root: str | None
    path: str
    page: int
    embedding: np.ndarray
    meta: dict = field(default_factory=dict)  # META_COLUMNS and MODEL_COLUMNS the source holds
    number: int = 0  # position in its file (for messages)


@dataclass(frozen=True)
class Layout:
    """What the rows must look like: the model's kind and vector width, for messages its name."""

    kind: str  # colqwen: (n, dim) per row; biqwen: (dim,)
    dim: int
    model: str

    @property
    def shape(self) -> str:
        return f"(n, {self.dim})" if self.kind == "colqwen" else f"({self.dim},)"

    def what(self) -> str:
        return (
            f"{self.model} makes {self.dim}-d multi-vectors (one list of {self.dim}-d vectors per page)"
            if self.kind == "colqwen"
            else f"{self.model} makes one {self.dim}-d vector per page"
        )


def reason_of(e: BaseException) -> str:
    text = str(e).strip()
    return (text.splitlines()[0] if text else type(e).__name__)[:200]


# ----------------------------------------------------------------- finding sources
def find_sources(src: Path) -> tuple[list[Path], list[InputError], list[Path]]:
    """``(sources, refused, ignored)`` under ``src`` (a file or a folder, searched recursively;
    names starting with a dot are skipped)."""
    if not src.exists():
        return [], [InputError(src, "no such file or directory")], []
    if not src.is_dir():
        bad = refuse_pickle(src)
        return ([], [bad], []) if bad else ([src], [], [])
    files = sorted(
        p for p in src.rglob("*") if p.is_file() and not any(part.startswith(".") for part in p.relative_to(src).parts)
    )
    refused: list[InputError] = []
    byaldi = sorted(
        {p.parent for p in files if p.name == "index_config.json.gz" and (p.parent / "embeddings").is_dir()}
    )
    for d in byaldi:
        refused.append(byaldi_refusal(d))
    files = [p for p in files if not any(d in p.parents for d in byaldi)]
    for p in files:
        bad = refuse_pickle(p)
        if bad:
            refused.append(bad)
    sources = [p for p in files if p.suffix.lower() in SOURCE_SUFFIXES]
    ignored = [p for p in files if p.suffix.lower() not in SOURCE_SUFFIXES + PICKLE_SUFFIXES]
    if not sources and not refused:
        refused.append(InputError(src, "no .parquet or .npz files in this folder"))
    return sources, refused, ignored


def refuse_pickle(path: Path) -> InputError | None:
    """The refusal of a file that is a Python pickle (by its name, or by its first bytes)."""
    if path.suffix.lower() in PICKLE_SUFFIXES:
        return InputError(
            path, f"a Python pickle ({path.suffix}): loading it can run any code it holds, so {PICKLE_ADVICE}"
        )
    try:
        with open(path, "rb") as f:
            head = f.read(2)
    except OSError as e:
        return InputError(path, f"cannot be read ({e.strerror or e})")
    if len(head) == 2 and head[0] == 0x80 and 2 <= head[1] <= 5:
        return InputError(path, f"a Python pickle: loading it can run any code it holds, so {PICKLE_ADVICE}")
    return None


def byaldi_refusal(folder: Path) -> InputError:
    """byaldi keeps an index's embeddings only as ``torch.save`` pickles: there is no part of it
    that can be read without running a pickle."""
    model = ""
    try:
        with gzip.open(folder / "index_config.json.gz", "rt") as f:
            name = json.load(f).get("model_name")
        model = f" (made with {name})" if isinstance(name, str) else ""
    except (OSError, ValueError, AttributeError):
        pass
    return InputError(
        folder,
        f"a byaldi index{model}: byaldi saves its embeddings only with torch.save "
        "(embeddings/embeddings_*.pt), Python pickles that can run any code when loaded, "
        f"so {PICKLE_ADVICE}",
    )


# ----------------------------------------------------------------- reading
def read_rows(path: Path, layout: Layout, batch_rows: int) -> Iterator[list[Row]]:
    """The rows of one source file, ``batch_rows`` at a time; :class:`InputError` (naming the
    file, and the row) for anything that is not the embeddings ``layout`` asks for."""
    try:
        with open(path, "rb") as f:
            head = f.read(4)
    except OSError as e:
        raise InputError(path, f"cannot be read ({e.strerror or e})") from None
    if head == b"PAR1":
        yield from _parquet_rows(path, layout, batch_rows)
    elif head == b"PK\x03\x04":
        yield from _npz_rows(path, layout, batch_rows)
    else:
        raise InputError(path, "neither a parquet nor an npz file (its first bytes are neither's)")


def columns_of(path: Path) -> list[str]:
    """The columns a source provides (an npz: path, page and embedding)."""
    with open(path, "rb") as f:
        if f.read(4) != b"PAR1":
            return ["path", "page", "embedding"]
    return pq.ParquetFile(path).schema_arrow.names


def _parquet_rows(path: Path, layout: Layout, batch_rows: int) -> Iterator[list[Row]]:
    try:
        # streamed: pre-buffering (pyarrow's default) or an unbuffered read loads a row group's
        # whole column chunk (all of its embeddings) first
        pf = pq.ParquetFile(path, buffer_size=READ_BUFFER, pre_buffer=False)
        schema = pf.schema_arrow
    except Exception as e:  # noqa: BLE001 - pyarrow raises several kinds for a damaged file
        raise InputError(path, f"not a readable parquet file ({reason_of(e)})") from None
    missing = [c for c in ("path", "embedding") if c not in schema.names]
    if missing:
        raise InputError(
            path,
            f"no {' and no '.join(repr(c) for c in missing)} column (a source needs path and "
            f"embedding, optionally page and root; it has {', '.join(schema.names) or 'none'})",
        )
    check_embedding_type(path, schema.field("embedding").type, layout)
    for name in ("page", "size", "width", "height", "n_vectors"):
        if name in schema.names and not pa.types.is_integer(schema.field(name).type):
            raise InputError(path, f"column {name!r} is {schema.field(name).type}, not an integer")
    cols = [c for c in READ_COLUMNS if c in schema.names]
    start = 0
    batches = pf.iter_batches(batch_size=batch_rows, columns=cols)
    while True:
        try:
            batch = next(batches, None)
        except Exception as e:  # noqa: BLE001 - a damaged page or row group
            raise InputError(path, f"cannot read its data after row {start} ({reason_of(e)})") from None
        if batch is None:
            return
        yield _batch_rows(path, batch, layout, start)
        start += batch.num_rows


def check_embedding_type(path: Path, t: pa.DataType, layout: Layout) -> None:
    """The ``embedding`` column's type: lists of float vectors for ColNomic, one float vector per
    row for Nomic."""
    depth, leaf, width = 0, t, None
    while pa.types.is_list(leaf) or pa.types.is_large_list(leaf) or pa.types.is_fixed_size_list(leaf):
        width = leaf.list_size if pa.types.is_fixed_size_list(leaf) else None
        leaf, depth = leaf.value_type, depth + 1
    want = 2 if layout.kind == "colqwen" else 1
    if depth != want:
        got = {0: "no list", 1: "one vector per row", 2: "a list of vectors per row"}.get(
            depth, f"{depth} nested lists"
        )
        raise InputError(path, f"the embedding column holds {got} ({t}), but {layout.what()}")
    if leaf not in FLOAT_TYPES:
        raise InputError(path, f"the embedding values are {leaf}, not float16 or float32")
    if width is not None and width != layout.dim:
        raise InputError(path, f"the embedding vectors are {width}-d, but {layout.what()}")


def _batch_rows(path: Path, batch: pa.RecordBatch, layout: Layout, start: int) -> list[Row]:
    names = batch.schema.names
    vecs = _vectors(path, batch.column("embedding"), layout, start)
    col = {c: batch.column(c).to_pylist() for c in names if c != "embedding"}
    n = batch.num_rows
    pages = col.get("page") or [0] * n
    roots = col.get("root") or [None] * n
    meta_names = [c for c in META_COLUMNS + MODEL_COLUMNS if c in col]
    rows = []
    for i, (p, pg, r) in enumerate(zip(col["path"], pages, roots)):
        meta = {c: col[c][i] for c in meta_names}
        if (
            "n_vectors" in col
            and col["n_vectors"][i] is not None
            and col["n_vectors"][i] != len(vecs[i])
            and layout.kind == "colqwen"
        ):
            raise InputError(
                path, f"row {start + i}: n_vectors says {col['n_vectors'][i]} but the row holds {len(vecs[i])} vectors"
            )
        rows.append(Row(r, p, pg, vecs[i], meta, start + i))
    return rows


def _vectors(path: Path, emb: pa.Array, layout: Layout, start: int) -> list[np.ndarray]:
    """One numpy array per row, in the source's float type, each checked for shape."""
    if emb.null_count:
        i = int(np.flatnonzero(emb.is_null().to_numpy(zero_copy_only=False))[0])
        raise InputError(path, f"row {start + i}: no embedding (null)")
    counts = pc.list_value_length(emb).to_numpy(zero_copy_only=False).astype(np.int64)
    if layout.kind == "colqwen":
        inner = emb.flatten()
        if inner.null_count:
            raise InputError(path, f"a null vector in rows {start}..{start + len(emb) - 1}")
        widths = pc.list_value_length(inner).to_numpy(zero_copy_only=False)
        bad = np.flatnonzero(widths != layout.dim)
        if bad.size:
            row = int(np.searchsorted(np.cumsum(counts), bad[0], side="right"))
            raise InputError(path, f"row {start + row}: a {int(widths[bad[0]])}-d vector, but {layout.what()}")
        empty = np.flatnonzero(counts == 0)
        if empty.size:
            raise InputError(path, f"row {start + int(empty[0])}: no vectors")
        values = inner.flatten()
    else:
        bad = np.flatnonzero(counts != layout.dim)
        if bad.size:
            raise InputError(path, f"row {start + int(bad[0])}: a {int(counts[bad[0]])}-d vector, but {layout.what()}")
        values = emb.flatten()
        counts = np.ones(len(emb), dtype=np.int64)
    if values.null_count:
        raise InputError(path, f"null values in the vectors of rows {start}..{start + len(emb) - 1}")
    flat = values.to_numpy(zero_copy_only=False).reshape(-1, layout.dim)
    if layout.kind == "biqwen":
        return list(flat)
    return np.split(flat, np.cumsum(counts)[:-1])


_PAGE_KEY = re.compile(r"(.+)#([1-9][0-9]*)")


def split_npz_key(key: str) -> tuple[str, int]:
    """``report.pdf#3`` -> (``report.pdf``, 3); any other key is an image file (page 0).  The
    export writes page N of a document so, and no image file's name ends in ``#N`` (its name
    ends in an image extension)."""
    m = _PAGE_KEY.fullmatch(key)
    return (m.group(1), int(m.group(2))) if m else (key, 0)


def _npz_rows(path: Path, layout: Layout, batch_rows: int) -> Iterator[list[Row]]:
    try:
        z = np.load(path, allow_pickle=False)
        names = z.zip.namelist()
    except Exception as e:  # noqa: BLE001 - zipfile/numpy raise several kinds for a damaged file
        raise InputError(path, f"not a readable npz file ({reason_of(e)})") from None
    with z:
        if any(n.endswith(".pkl") for n in names):
            raise InputError(
                path,
                f"a PyTorch checkpoint (it holds {next(n for n in names if n.endswith('.pkl'))}, "
                f"a Python pickle that can run any code when loaded), so {PICKLE_ADVICE}",
            )
        rows: list[Row] = []
        for i, key in enumerate(z.files):
            p, page = split_npz_key(key)
            rows.append(Row(None, p, page, _npz_array(path, z, key, layout), {}, i))
            if len(rows) >= batch_rows:
                yield rows
                rows = []
        if rows:
            yield rows


def _npz_array(path: Path, z, key: str, layout: Layout) -> np.ndarray:
    try:
        a = z[key]
    except ValueError as e:
        if "pickle" in str(e):
            raise InputError(
                path, f"array {key!r} holds Python objects (a pickle that can run code when loaded), so {PICKLE_ADVICE}"
            ) from None
        raise InputError(path, f"array {key!r} cannot be read ({reason_of(e)})") from None
    except (OSError, zipfile.BadZipFile, EOFError) as e:
        raise InputError(path, f"array {key!r} cannot be read ({reason_of(e)})") from None
    if a.dtype.kind != "f" or a.dtype.itemsize not in (2, 4, 8):
        raise InputError(path, f"array {key!r} is {a.dtype}, not float16 or float32")
    want = 2 if layout.kind == "colqwen" else 1
    if a.ndim != want or a.shape[-1] != layout.dim or a.size == 0:
        raise InputError(path, f"array {key!r} has shape {a.shape}, but {layout.what()} {layout.shape}")
    return a


__all__ = [
    "META_COLUMNS",
    "MODEL_COLUMNS",
    "PICKLE_SUFFIXES",
    "Layout",
    "Row",
    "byaldi_refusal",
    "check_embedding_type",
    "columns_of",
    "find_sources",
    "read_rows",
    "refuse_pickle",
    "split_npz_key",
]
