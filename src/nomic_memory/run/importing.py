"""Import embeddings made elsewhere, stamped with a model named as ``embed`` names one.

:func:`import_embeddings` resolves the model (a variant, hub id, local directory or ``ModelSpec``)
from its files alone (:mod:`nomic_memory.model.files`: nothing is loaded or downloaded) and runs
the store's import (:mod:`nomic_memory.store.importer`) with that stamp.
"""

from __future__ import annotations

from pathlib import Path

from nomic_memory.errors import InputError
from nomic_memory.logs import ProgressCallback
from nomic_memory.model.files import model_facts
from nomic_memory.model.loading import ModelSpec
from nomic_memory.store.importer import DEFAULT_BATCH_ROWS, ImportRefused, ImportReport, ImportStamp
from nomic_memory.store.importer import import_embeddings as import_with_stamp
from nomic_memory.store.table import Store


def resolve_stamp(model: str | ModelSpec | None, revision: str | None = None, seed: int = 0) -> ImportStamp:
    """The :class:`ImportStamp` of a variant name, hub id or model directory (or a ``ModelSpec``),
    read from the model's files without loading it."""
    spec = model if isinstance(model, ModelSpec) else ModelSpec.of(model, revision=revision, seed=seed)
    f = model_facts(spec)
    return ImportStamp(
        f.model_id, f.revision, f.kind, f.dim, f.table_name, f.seed, f.fingerprint, f.fingerprints, f.note
    )


def import_embeddings(
    src: str | Path,
    store: str | Path | Store,
    model: str | ModelSpec | ImportStamp,
    *,
    root: str | Path | None = None,
    revision: str | None = None,
    seed: int = 0,
    batch_rows: int = DEFAULT_BATCH_ROWS,
    on_event: ProgressCallback | None = None,
) -> ImportReport:
    """Import the embeddings in ``src`` (a parquet or npz file, or a folder of them) into ``store``,
    stamped with ``model``: the variant, hub id or model directory that made them (with the hub
    ``revision`` and the ``seed`` they were made with), or an :class:`ImportStamp`.  ``root``: the
    folder the source's paths are relative to (needed when it has no ``root`` column; otherwise
    it replaces it).  Every file is checked first: :class:`ImportRefused` (nothing written) names
    each bad one.  Rerunning writes nothing new; an interrupted import resumes."""
    if not Path(src).exists():  # before the model's revision is looked up (which may ask the hub)
        raise ImportRefused([InputError(src, "no such file or directory")])
    stamp = model if isinstance(model, ImportStamp) else resolve_stamp(model, revision, seed)
    return import_with_stamp(src, store, stamp, root=root, batch_rows=batch_rows, on_event=on_event)


__all__ = ["ImportRefused", "ImportReport", "ImportStamp", "import_embeddings", "resolve_stamp"]
