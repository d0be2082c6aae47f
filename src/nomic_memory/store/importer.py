"""Import embeddings computed elsewhere into a store (``nomic-memory import``).

The rows are stamped with the model that made them (an :class:`ImportStamp`; the run layer's
:func:`nomic_memory.run.importing.import_embeddings` makes one from a variant, hub id or model
directory without loading any weight) and go to that model's table, created as ``embed`` would
create it.  An import runs in two passes
over the sources (:mod:`nomic_memory.import_sources`), both streamed:

1. **check** every row of every file: the vectors' kind and width against the model, finite
   values (in the table's storage dtype), a relative path, no key twice, and the model the source
   says made them (this tool's export records it).  Any bad file refuses the whole import, each
   bad file reported on one line, before anything is written.
2. **write** batch by batch through :meth:`~nomic_memory.store.EmbeddingTable.upsert`, the commit
   ``embed`` uses: each batch is atomic, so a killed import keeps whole batches, and a rerun skips
   every row the store already holds identically (same key, vectors, metadata and model).

Rows of the store that the source does not hold are left alone.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from nomic_memory.errors import InputError, NomicMemoryError, StoreError, UsageError
from nomic_memory.logs import ProgressCallback, report_dict
from nomic_memory.store.import_sources import Layout, Row, find_sources, read_rows
from nomic_memory.store.table import (
    EmbeddingTable,
    Record,
    Store,
    TableInfo,
    _sql_str,
    embedding_checksum,
    is_uri,
    key_to_path,
    path_to_key,
)

log = logging.getLogger("nomic_memory")

DEFAULT_BATCH_ROWS = 128
#: Rows read from a source at a time (at least the commit size): parquet decodes much faster in
#: large batches than in commit-sized ones, and a batch of ~750-vector pages is ~50 MB in float16.
READ_ROWS = 256
FLOAT16_MAX = float(np.finfo(np.float16).max)
#: What a row records of its file (:class:`Record` fields), from a source row's metadata.
FILE_FIELDS = ("content_hash", "size", "mtime", "width", "height")
#: What a stored row is compared on to decide that importing it again would change nothing.
SIGNATURE = ("embedding_checksum", *FILE_FIELDS, "dtype", "model_revision", "proj_fingerprint")


class ImportRefused(NomicMemoryError):
    """The sources cannot be imported: one :class:`InputError` per bad file (nothing was written)."""

    def __init__(self, problems: list[InputError]):
        super().__init__("\n".join(str(p) for p in problems))
        self.problems = problems


@dataclass(frozen=True)
class ImportStamp:
    """The model the imported embeddings were made with: what the rows and a new table record."""

    model_id: str
    revision: str
    kind: str
    dim: int
    table_name: str
    seed: int = 0
    fingerprint: str | None = None  # None: unknown (only loading the model could tell)
    fingerprints: frozenset[str] = frozenset()  # the forms of ``fingerprint`` earlier versions recorded
    note: str = ""  # why the fingerprint is unknown


@dataclass
class ImportReport:
    source: str
    store: str
    table: str
    files: int = 0
    rows: int = 0  # rows in the sources
    imported: int = 0  # rows written (new, or replacing a different row)
    unchanged: int = 0  # rows the store already held identically: skipped
    commits: int = 0
    seconds: float = 0.0
    write_seconds: float = 0.0
    fingerprint: str = ""  # recorded with the rows ("" : unknown, or a Nomic model)
    storage_dtype: str = ""
    ignored: list[str] = field(default_factory=list)  # files in a folder that are not sources
    warnings: list[str] = field(default_factory=list)

    @property
    def rows_per_second(self) -> float:
        """Rows written per second of the whole import (the check pass included)."""
        return self.imported / self.seconds if self.seconds > 0 else 0.0

    def to_dict(self) -> dict:
        return report_dict(
            self,
            "source store table files rows imported unchanged commits seconds write_seconds rows_per_second"
            " fingerprint storage_dtype ignored warnings",
            digits={"seconds": 3, "write_seconds": 3, "rows_per_second": 1},
        )


@dataclass
class _Checked:
    """What the check pass learnt about the sources."""

    files: list[Path]
    stats: dict  # file -> (size, mtime_ns) when checked
    rows: int = 0
    roots: set = field(default_factory=set)  # the roots rows go to
    source_roots: set = field(default_factory=set)  # the root column's values
    float_types: set = field(default_factory=set)  # the vectors' types as read
    dtypes: set = field(default_factory=set)  # the ``dtype`` column's values
    revisions: dict = field(default_factory=dict)  # (model_id, revision) -> first file
    fingerprints: dict = field(default_factory=dict)  # fingerprint -> first file
    over_f16: dict = field(default_factory=dict)  # file -> largest |value|, where beyond float16's range


def import_embeddings(
    src: str | Path,
    store: str | Path | Store,
    stamp: ImportStamp,
    *,
    root: str | Path | None = None,
    batch_rows: int = DEFAULT_BATCH_ROWS,
    on_event: ProgressCallback | None = None,
) -> ImportReport:
    """Import the embeddings in ``src`` (a parquet or npz file, or a folder of them) into
    ``store``, stamped with ``stamp``.  ``root``: the folder the source's paths are relative to
    (needed when it has no ``root`` column; otherwise it replaces it).  Raises
    :class:`ImportRefused` (nothing written) for bad sources; see the module docstring."""
    t0 = time.perf_counter()
    emit = on_event or (lambda kind, data: None)
    if batch_rows < 1:
        raise UsageError("batch_rows must be at least 1")
    src = Path(src).expanduser()
    files, refused, ignored = find_sources(src)
    if refused and not files:
        raise ImportRefused(refused)
    root_key = path_to_key(str(Path(root).expanduser().resolve())) if root is not None else None
    # An existing store is opened now (a bad one fails before the check pass); a new local one is
    # made only once the sources have passed it.
    opened = (
        store
        if isinstance(store, Store)
        else (Store(store) if is_uri(str(store)) or Path(store).expanduser().is_dir() else None)
    )
    table = opened.open_table(stamp.table_name) if opened and stamp.table_name in opened.table_names() else None
    if table is not None and (table.info.kind, table.info.dim) != (stamp.kind, stamp.dim):
        raise StoreError(
            f"table {table.name!r} in {table._where} holds {table.info.kind} {table.info.dim}-d "
            f"embeddings, not {stamp.kind} {stamp.dim}-d"
        )
    report = ImportReport(
        str(src),
        str(opened.path if opened else store),
        stamp.table_name,
        files=len(files),
        ignored=[str(p) for p in ignored],
    )
    emit("sources", {"files": len(files), "ignored": len(ignored)})
    layout = Layout(stamp.kind, stamp.dim, stamp.model_id)
    checked = _check_all(files, layout, root_key, _read_size(batch_rows), refused)  # every bad file, on its own line
    report.rows = checked.rows
    info = _table_info(stamp, checked, table, report)
    emit("checked", {"rows": checked.rows, "files": len(files), "storage_dtype": info.storage_dtype})
    if checked.rows:
        opened = opened or Store(str(store))
        report.store = str(opened.path)
        table = table or opened.create_or_open(stamp.table_name, info)
        table.ensure_unique()
        _write_all(table, checked, layout, root_key, info, batch_rows, report, emit)
    report.seconds = time.perf_counter() - t0
    emit("done", report.to_dict())
    return report


# ----------------------------------------------------------------- pass 1: check
def _check_all(
    files: list[Path], layout: Layout, root_key: str | None, read: int, refused: list[InputError]
) -> _Checked:
    checked = _Checked(files, {})
    keys: dict[tuple, Path] = {}
    problems = list(refused)
    for f in files:
        st = f.stat()
        checked.stats[f] = (st.st_size, st.st_mtime_ns)
        try:
            for rows in read_rows(f, layout, read):
                _check_rows(f, rows, layout, root_key, checked, keys)
        except InputError as e:
            problems.append(e)
    if root_key is not None and len(checked.source_roots) > 1:
        problems.append(
            InputError(
                files[0] if len(files) == 1 else files[0].parent,
                f"its rows come from {len(checked.source_roots)} folders (root column: "
                f"{', '.join(sorted(checked.source_roots)[:3])}); --root would merge them",
            )
        )
    if problems:
        raise ImportRefused(problems)
    return checked


def _check_rows(f: Path, rows: list[Row], layout: Layout, root_key: str | None, checked: _Checked, keys: dict) -> None:
    for r in rows:
        if r.root is None and root_key is None:
            raise UsageError(f"{f} has no root column: pass --root DIR, the folder its paths are relative to")
        if r.root is not None:
            checked.source_roots.add(r.root)
        key = _key(f, r, root_key)
        if key in keys:
            where = "twice in this file" if keys[key] == f else f"also in {keys[key]}"
            raise InputError(f, f"row {r.number}: {key[1]!r} (page {key[2]}) appears {where}")
        keys[key] = f
        checked.roots.add(key[0])
        e = r.embedding
        if not np.isfinite(e).all():
            what = "NaN" if np.isnan(e).any() else "infinite"
            raise InputError(f, f"row {r.number} ({r.path}, page {r.page}): {what} values in its embedding")
        peak = float(np.abs(e).max())
        if peak > FLOAT16_MAX:
            checked.over_f16[f] = max(peak, checked.over_f16.get(f, 0.0))
        checked.float_types.add(str(e.dtype))
        if r.meta.get("dtype"):
            checked.dtypes.add(r.meta["dtype"])
        mid, rev, fp = (r.meta.get(c) for c in ("model_id", "model_revision", "proj_fingerprint"))
        if mid or rev:
            checked.revisions.setdefault((mid, rev), f)
        if fp:
            checked.fingerprints.setdefault(fp, f)
        checked.rows += 1


def _key(f: Path, r: Row, root_key: str | None) -> tuple[str, str, int]:
    """``(root, path, page)`` as stored; a path must be relative to its root (an absolute one
    under the root is made relative)."""
    root = root_key if root_key is not None else r.root
    if not isinstance(r.path, str) or not r.path:
        raise InputError(f, f"row {r.number}: no path")
    if not isinstance(root, str) or not root:
        raise InputError(f, f"row {r.number}: no root (pass --root DIR)")
    path = r.path
    if path.startswith("/"):
        prefix = root.rstrip("/") + "/"
        if not path.startswith(prefix):
            raise InputError(f, f"row {r.number}: path {path!r} is absolute and not under the root {root}")
        path = path[len(prefix) :]
    parts = path.split("/")
    if any(p in ("", ".", "..") for p in parts):
        raise InputError(f, f"row {r.number}: path {r.path!r} is not a plain relative path")
    if r.page is None:
        r.page = 0
    if r.page < 0:
        raise InputError(f, f"row {r.number}: page {r.page} (pages count from 1; 0 is an image file)")
    r.path, r.root = path, root
    return root, path, int(r.page)


def _table_info(stamp: ImportStamp, checked: _Checked, table: EmbeddingTable | None, report: ImportReport) -> TableInfo:
    """The stamp checked against what the sources say made them, with the fingerprint the rows
    will record and, for a new table, the storage dtype."""
    problems = []
    for (mid, rev), f in checked.revisions.items():
        if (rev and rev != stamp.revision) or (not rev and mid != stamp.model_id):
            problems.append(
                InputError(
                    f,
                    f"its rows were made by {mid or 'a model'} at revision {rev or '?'}, but "
                    f"{stamp.model_id} is revision {stamp.revision}: import them with the "
                    "model that made them",
                )
            )
    fingerprint = _fingerprint(stamp, checked, table, problems, report)
    if problems:
        raise ImportRefused(problems)
    if table is not None:
        _check_table(table, stamp, fingerprint)
        storage = table.info.storage_dtype
    elif checked.dtypes:
        storage = "float32" if checked.dtypes == {"float32"} else "float16"
    else:
        storage = "float16" if checked.float_types == {"float16"} else "float32"
    over = (
        [
            InputError(f, f"values up to {v:.4g}, beyond float16's range: the table stores float16")
            for f, v in checked.over_f16.items()
        ]
        if storage == "float16"
        else []
    )
    if over:
        raise ImportRefused(over)
    report.fingerprint, report.storage_dtype = fingerprint, storage
    return TableInfo(stamp.model_id, stamp.revision, stamp.kind, stamp.dim, fingerprint, storage, stamp.seed)


def _check_table(table: EmbeddingTable, stamp: ImportStamp, fingerprint: str) -> None:
    """Rows go to their model's table only if the table's own weights are theirs: search embeds
    queries with the weights the table records, and would score other weights' rows meaninglessly."""
    info = table.info
    other = None
    if info.revision != stamp.revision:
        other = f"revision {info.revision}, the rows revision {stamp.revision}"
    elif fingerprint and info.fingerprint and info.fingerprint not in stamp.fingerprints | {fingerprint}:
        other = f"projection {info.fingerprint}, the rows projection {fingerprint}"
    elif stamp.kind == "colqwen" and not fingerprint and info.seed != stamp.seed:
        other = f"seed {info.seed}, the rows seed {stamp.seed} (a head initialised from another seed)"
    if other:
        raise StoreError(
            f"table {table.name!r} in {table._where} was made by {info.model_id} at {other}: "
            "its queries would score these rows meaninglessly; import them into another store"
        )


def _fingerprint(
    stamp: ImportStamp, checked: _Checked, table: EmbeddingTable | None, problems: list, report: ImportReport
) -> str:
    if stamp.kind != "colqwen":
        return ""
    found = checked.fingerprints
    if stamp.fingerprint is not None:
        accepted = stamp.fingerprints | {stamp.fingerprint}
        for fp, f in found.items():
            if fp not in accepted:
                problems.append(
                    InputError(
                        f,
                        f"its rows were made with projection {fp}, but {stamp.model_id} "
                        f"has projection {stamp.fingerprint} (another seed or checkpoint)",
                    )
                )
        return stamp.fingerprint
    if len(found) > 1:
        for fp, f in found.items():
            problems.append(InputError(f, f"rows made with projection {fp}; the sources hold {len(found)} projections"))
        return ""
    if found:  # this tool's own export says which projection made them
        return next(iter(found))
    if (
        table is not None
        and (table.info.model_id, table.info.revision, table.info.seed) == (stamp.model_id, stamp.revision, stamp.seed)
        and table.info.fingerprint
    ):
        return table.info.fingerprint  # the same weights made the table's rows
    report.warnings.append(
        f"the projection fingerprint of {stamp.model_id} is not known ({stamp.note}): the rows "
        "record none, and search checks the model's revision but cannot check its projection"
    )
    return ""


# ----------------------------------------------------------------- pass 2: write
@dataclass
class _Writer:
    """How checked rows become records: their root (``--root``), model stamp and storage dtype,
    and what the table already holds (to skip identical rows)."""

    table: EmbeddingTable
    root_key: str | None
    revision: str
    fingerprint: str
    existing: dict

    def records(self, f: Path, rows: list[Row], report: ImportReport) -> tuple[list[Record], set]:
        np_dt = np.float16 if self.table.info.storage_dtype == "float16" else np.float32
        records, new = [], set()
        for r in rows:
            key = _key(f, r, self.root_key)
            e = np.asarray(r.embedding, dtype=np_dt)
            if not np.isfinite(e).all():  # the file was checked: only if it changed since
                raise InputError(f, f"row {r.number}: values that are not finite in {np.dtype(np_dt).name}")
            m = r.meta
            dtype = m.get("dtype") or ("float16" if r.embedding.dtype == np.float16 else "float32")
            file_meta = {k: m.get(k) for k in FILE_FIELDS}
            sig = (embedding_checksum(e), *file_meta.values(), dtype, self.revision, self.fingerprint)
            old = self.existing.get(key)
            if old == sig:
                report.unchanged += 1
                continue
            rec = Record(
                key_to_path(key[0]),
                key_to_path(key[1]),
                embedding=e,
                dtype=dtype,
                **file_meta,
                page=key[2],
                model_revision=self.revision,
                proj_fingerprint=self.fingerprint,
            )
            if old is None:
                new.add((rec.path, rec.page))
            records.append(rec)
        return records, new


def _write_all(
    table: EmbeddingTable,
    checked: _Checked,
    layout: Layout,
    root_key: str | None,
    info: TableInfo,
    batch_rows: int,
    report: ImportReport,
    emit,
) -> None:
    t0 = time.perf_counter()
    writer = _Writer(table, root_key, info.revision, info.fingerprint, _existing(table, checked.roots))
    done = 0
    try:
        for f in checked.files:
            st = f.stat()
            if (st.st_size, st.st_mtime_ns) != checked.stats[f]:
                raise ImportRefused([InputError(f, "changed while it was being imported: run the import again")])
            for read in read_rows(f, layout, _read_size(batch_rows)):
                for i in range(0, len(read), batch_rows):
                    rows = read[i : i + batch_rows]
                    records, new = writer.records(f, rows, report)
                    done += len(rows)
                    if records:
                        _commit(table, records, new)
                        report.imported += len(records)
                        report.commits += 1
                    emit(
                        "batch",
                        {
                            "rows": done,
                            "total": checked.rows,
                            "imported": report.imported,
                            "unchanged": report.unchanged,
                            "elapsed": time.perf_counter() - t0,
                        },
                    )
    finally:
        report.write_seconds = time.perf_counter() - t0
        table.maintain()  # compact the batches' small fragments: cheap when there are few


def _read_size(batch_rows: int) -> int:
    """Rows per read: at least :data:`READ_ROWS`, a whole number of commits (so that every commit
    but a file's last holds ``batch_rows`` rows)."""
    return batch_rows * -(-READ_ROWS // batch_rows)


def _commit(table: EmbeddingTable, records: list[Record], new: set) -> None:
    refused = table.upsert(records, known_new=new)
    if refused:  # every row was checked before: a bug, not a bad input, if this happens
        r, reason = refused[0]
        raise InputError(r.path, reason)


def _existing(table: EmbeddingTable, roots: set[str]) -> dict[tuple, tuple]:
    """``(root, path, page) -> signature`` of the table's rows under ``roots`` (keys as stored)."""
    if not table.count():
        return {}
    cols = ["root", "path", "page", *[c for c in SIGNATURE if c in table.table.schema.names]]
    ds = table.table.to_lance()
    out: dict[tuple, tuple] = {}
    roots_l = sorted(roots)
    for i in range(0, len(roots_l), 200):
        where = f"root IN ({', '.join(_sql_str(r) for r in roots_l[i : i + 200])})"
        d = ds.to_table(columns=cols, filter=where).to_pydict()
        sigs = zip(*[d[c] if c in d else [None] * len(d["root"]) for c in SIGNATURE])
        for ro, p, pg, sig in zip(d["root"], d["path"], d["page"], sigs):
            out[(ro, p, int(pg or 0))] = tuple(sig)
    return out


__all__ = ["DEFAULT_BATCH_ROWS", "ImportRefused", "ImportReport", "ImportStamp", "import_embeddings"]
