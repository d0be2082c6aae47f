"""The Python API the CLI, the Ray workers and the server use.

>>> from nomic_memory import Embedder
>>> emb = Embedder("colnomic-3b")                    # a variant, a hub id or a local directory
>>> page = emb.embed_images("page1.png")             # one float32 array: (tokens, 128) or (dim,)
>>> pages = emb.embed_images(["a.png", pil_image])   # a list, in input order
>>> q = emb.embed_queries("quarterly revenue chart")
>>> report = emb.embed_directory("scans/", store="~/my-store")   # resumable
>>> hits = emb.index("~/my-store").search("invoice", k=5)        # the same model, loaded once
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from nomic_memory.logs import ProgressCallback
from nomic_memory.model.backends import Backend, select_backend
from nomic_memory.model.loading import DEFAULT_SEED, LoadedModel, ModelSpec, ResolvedModel
from nomic_memory.run.driver import RunReport
from nomic_memory.store.check import CheckReport, present_keys, readable_keys, readable_roots
from nomic_memory.store.roots import known_roots
from nomic_memory.store.table import EmbeddingTable, Store, default_store_path, key_to_path, path_to_key

if TYPE_CHECKING:
    from nomic_memory.run.ray_engine import RayExecutor
from nomic_memory.errors import UsageError
from nomic_memory.run.driver import run_embedding
from nomic_memory.run.local_engine import LocalExecutor
from nomic_memory.run.repair import reembed, unstored
from nomic_memory.search import liveindex as _live
from nomic_memory.search.index import Index


class Embedder:
    """A retriever: ``model`` is a variant name (``colnomic-3b``), a hub id or a local directory.

    The model is loaded on first use (``lazy=True``) or at once.  ``backend`` is ``auto``, ``cuda``,
    ``mps``, ``cpu`` or a :class:`~nomic_memory.model.backends.Backend`; ``dtype`` overrides the
    backend's (``bfloat16``, ``float16``, ``float32``)."""

    def __init__(
        self,
        model: str | None = None,
        *,
        backend: str | Backend = "auto",
        dtype: str | None = None,
        kind: str | None = None,
        image_only: bool = False,
        seed: int = DEFAULT_SEED,
        revision: str | None = None,
        max_visual_tokens: int | None = None,
        lazy: bool = False,
    ):
        self.backend = backend if isinstance(backend, Backend) else select_backend(backend, dtype=dtype)
        self.spec = ModelSpec.of(
            model, kind=kind, revision=revision, seed=seed, image_only=image_only, max_visual_tokens=max_visual_tokens
        )
        self.seed = seed
        self._resolved: ResolvedModel | None = None
        self._loaded: LoadedModel | None = None
        if not lazy:
            self._loaded = self.spec.load(self.backend, self.resolved)

    @classmethod
    def from_loaded(cls, lm: LoadedModel) -> Embedder:
        """Wrap a model that is already loaded."""
        self = cls.__new__(cls)
        self.backend, self.seed = lm.backend, lm.seed
        self.spec = ModelSpec(
            str(lm.source) if lm.source else lm.model_id, kind=lm.kind, seed=lm.seed, image_only=lm.image_only
        )
        self._resolved = None
        self._loaded = lm
        return self

    @property
    def resolved(self) -> ResolvedModel:
        """The model's files (found or downloaded), without loading weights."""
        if self._resolved is None:
            self._resolved = self.spec.resolve()
        return self._resolved

    @property
    def loaded(self) -> LoadedModel:
        """The loaded model (loads it on first use)."""
        if self._loaded is None:
            self._loaded = self.spec.load(self.backend, self.resolved)
        return self._loaded

    @property
    def is_loaded(self) -> bool:
        return self._loaded is not None

    @property
    def kind(self) -> str:
        return self._loaded.kind if self._loaded is not None else self.resolved.kind

    # ------------------------------------------------------------------ embedding
    def embed_images(self, images, batch_size: int = 8, *, as_tensor: bool = False):
        """Embeddings of images (and documents) in input order: float32, ``(n_tokens, 128)`` for
        ColNomic, ``(dim,)`` for Nomic.

        ``images``: one input or a list; an input is a path (``str``/``PathLike``) or a
        ``PIL.Image``.  One input gives one array; a list gives a list.  A document (a PDF, a
        multi-page TIFF) gives the list of its pages' embeddings, in page order, drawn as
        ``embed_directory`` draws them.  ``as_tensor``: torch tensors instead of numpy arrays."""
        single = isinstance(images, (str, os.PathLike)) or hasattr(images, "getpixel")
        items = [images] if single else list(images)
        # late: model.embed imports transformers' model code (seconds); a rerun with nothing to do never needs it
        from nomic_memory.model.embed import document_pages, embed_inputs, flatten

        lm = self.loaded
        groups = [document_pages(x, lm.processor.image_processor) for x in items]
        flat: list = embed_inputs(lm, flatten(items, groups), batch_size)
        if as_tensor:
            flat = [torch.from_numpy(e) for e in flat]
        out, i = [], 0
        for g in groups:  # a document's entry: the list of its pages' embeddings, in page order
            n = 1 if g is None else len(g)
            out.append(flat[i] if g is None else flat[i : i + n])
            i += n
        return out[0] if single else out

    def embed_queries(self, queries, template: str | None = None, *, batch_size: int = 16, as_tensor: bool = False):
        """Query embeddings: a ``str`` is a text query, embedded as the model card does it
        (``process_queries``; ``template`` formats it first, ``"Query: {}"``); a ``pathlib.Path``
        or a ``PIL.Image`` is an image query, embedded as a stored image (a path may name a
        document's page: ``Path("report.pdf#3")``, page 1 without ``#N``).  One query gives one
        array; a list gives a list, in input order."""
        from nomic_memory.model.queries import check_queries, embed_any_queries  # late: transformers (seconds)

        single = isinstance(queries, (str, os.PathLike)) or hasattr(queries, "getpixel")
        items = [queries] if single else list(queries)
        check_queries(items)
        arrays = embed_any_queries(self.loaded, items, template=template, batch_size=batch_size)
        res: list = [torch.from_numpy(e) for e in arrays] if as_tensor else arrays
        return res[0] if single else res

    # ------------------------------------------------------------------ folders and stores
    def embed_directory(
        self,
        directory: str | Path,
        store: str | Path | Store | None = None,
        *,
        batch_size: int = 8,
        max_batch_tokens: int | None = None,
        workers: int | None = None,
        prune: bool = False,
        engine: str = "local",
        ray_address: str | None = None,
        gpus_per_worker: float = 1.0,
        on_event: ProgressCallback | None = None,
        sort_by_tokens: bool = True,
        table_name: str | None = None,
        paths: Sequence[str | Path] | None = None,
    ) -> RunReport:
        """Embed every image (and document page) under ``directory`` into ``store`` (default: the
        default store), resumably: unchanged inputs are skipped, changed ones re-embedded,
        ``prune`` drops rows of files that are gone.  The model is loaded only if there is work.

        ``engine="ray"`` runs the same batches on a Ray cluster (``ray_address``; ``workers``
        model actors, ``gpus_per_worker`` each); locally ``workers`` is the number of decode
        processes.  ``table_name``: the store table to fill (default: the model's own).
        ``paths``: only these files and folders under ``directory`` (say, the ones that changed):
        listed, embedded and, with ``prune``, pruned as a whole run would; the rest is left alone."""

        store = store if store is not None else default_store_path()
        executor: LocalExecutor | RayExecutor
        if engine == "ray":
            from nomic_memory.run.ray_engine import RayExecutor  # late: ray is an optional extra

            executor = RayExecutor(
                self.spec,
                self.backend,
                self.resolved,
                workers=workers,
                ray_address=ray_address,
                gpus_per_worker=gpus_per_worker,
            )
        elif engine == "local":
            executor = LocalExecutor(
                self._loaded,
                spec=self.spec,
                backend=self.backend,
                resolved=self._resolved if self._loaded is None else None,
                workers=workers,
            )
        else:
            raise UsageError(f"unknown engine {engine!r}; choose local or ray")
        ident = self._identity()
        try:
            report = run_embedding(
                directory,
                store,
                executor,
                model_id=ident[0],
                revision=ident[1],
                seed=self.seed,
                table_name=table_name or ident[2],
                prune=prune,
                batch_size=batch_size,
                max_batch_tokens=max_batch_tokens,
                sort_by_tokens=sort_by_tokens,
                on_event=on_event,
                paths=paths,
            )
        finally:
            close = getattr(executor, "close", None)
            if close is not None:
                close()
        if isinstance(executor, LocalExecutor) and self._loaded is None and executor.lm is not None:
            self._loaded = executor.lm  # loaded for this run: keep it for the next call
        if report.embedded:
            retrain_index(store, report.table, on_event)
        return report

    def _identity(self) -> tuple[str, str, str]:
        if self._loaded is not None:
            return self._loaded.model_id, self._loaded.revision, self._loaded.table_name
        r = self.resolved
        return r.model_id, r.revision, r.table_name

    def index(self, store: str | Path | Store | None = None, table: str | None = None, **kwargs):
        """An :class:`~nomic_memory.search.index.Index` over ``store`` that embeds queries with this
        model (loaded once for both)."""

        return Index.open(store, table or self._identity()[2], model=self, **kwargs)


def retrain_index(store: str | Path | Store, table: str, on_event: ProgressCallback | None = None) -> dict | None:
    """After a run that added rows: a local table that has outgrown its search index's codebook
    gets a new one (:func:`nomic_memory.search.liveindex.retrain_if_outgrown`)."""
    if not isinstance(store, Store):
        if "://" in str(store):
            return None  # object storage: searched exactly, no index
        store = Store(store, create=False)
    if table not in store.table_names():
        return None
    return _live.retrain_if_outgrown(store, store.open_table(table), on_event)


def repair(
    store: Store,
    table: EmbeddingTable,
    report: CheckReport,
    backend: str = "auto",
    on_event=None,
    delete_unrestorable: bool = False,
    batch_size: int = 8,
) -> dict:
    """Re-embed the bad and missing rows of ``report`` from their files with the table's model,
    and only then remove the bad rows (:mod:`nomic_memory.run.repair`).

    Never deletes a row it could not re-embed (its file gone, unreadable, changed) unless
    ``delete_unrestorable``: such rows are kept and listed in ``kept``.  A data file whose rows
    cannot even be named is removed only once every folder the table holds has been re-embedded
    with at least as many rows as it held.  Returns ``{"deleted", "reembedded", "failed": [(path,
    reason)], "kept": [{"root", "path", "page", "reason"}], "restored": bool}``."""
    bad: dict[tuple, list[int]] = {}
    for b in report.bad:
        if b.path is not None and b.row_id is not None:
            bad.setdefault((b.root, b.path, int(b.page or 0)), []).append(b.row_id)
    wanted_keys = set(bad) | {(m.root, m.path, int(m.page)) for m in report.missing}
    done = present_keys(table, report, set(bad))  # replaced by a repair killed before its delete
    out: dict = {"deleted": 0, "reembedded": 0, "failed": [], "kept": []}
    if done:
        out["deleted"] += _delete_rows(table, [rid for k in done for rid in bad[k] if rid is not None])
    todo: dict[str, dict[str, set[int]]] = {}
    for root, path, page in sorted(wanted_keys - set(done)):
        todo.setdefault(root, {}).setdefault(key_to_path(path), set()).add(page)
    info = table.info
    emb = Embedder(info.model_id, backend=backend, kind=info.kind, seed=info.seed, lazy=True)
    executor = LocalExecutor(None, spec=emb.spec, backend=emb.backend, resolved=emb.resolved, workers=0)
    for root, wanted in sorted(todo.items()):
        replaces = {
            (key_to_path(p), pg): [r for r in ids if r is not None] for (r_, p, pg), ids in bad.items() if r_ == root
        }
        res = reembed(
            store, table, executor, Path(key_to_path(root)), wanted, replaces, batch_size=batch_size, emit=on_event
        )
        out["reembedded"] += res.embedded
        out["deleted"] += sum(len(replaces.get(k, [])) for k in res.restored)
        out["failed"].extend(res.failed)
        out["kept"].extend({"root": root, "path": path_to_key(p), "page": pg, "reason": why} for p, pg, why in res.kept)
    out["reembedded"] += _restore_nameless(
        store, table, report, executor, out, batch_size, on_event, delete_unrestorable
    )
    if delete_unrestorable and out["kept"]:
        ids = [rid for k in out["kept"] for rid in bad.get((k["root"], k["path"], k["page"]), []) if rid is not None]
        out["deleted"] += _delete_rows(table, ids)
    if report.duplicates:
        try:
            out["deleted"] += table.dedupe()
        except Exception:  # noqa: BLE001 - an unreadable data file is still there: reported as kept
            pass
    out["restored"] = not out["kept"]
    return out


def _delete_rows(table: EmbeddingTable, row_ids: list[int]) -> int:
    table.append_replacing([], row_ids)
    return len(row_ids)


def _restore_nameless(
    store: Store,
    table: EmbeddingTable,
    report: CheckReport,
    executor,
    out: dict,
    batch_size: int,
    on_event,
    delete_unrestorable: bool,
) -> int:
    """Data files whose rows cannot be named: re-embed what every folder the table holds lacks,
    then drop those files if at least as many rows were restored as they held."""
    if not report.nameless_rows:
        return 0
    lost = sum(report.nameless_rows.values())
    embedded = 0
    for root in sorted(readable_roots(table, report) | known_roots(store, table.name)):
        root_dir = Path(key_to_path(root))
        wanted = unstored(root_dir, readable_keys(table, report, root)) if root_dir.is_dir() else {}
        if wanted:
            res = reembed(store, table, executor, root_dir, wanted, {}, batch_size=batch_size, emit=on_event)
            embedded += res.embedded
            out["failed"].extend(res.failed)
    if embedded >= lost or delete_unrestorable:
        out["deleted"] += lost
        table.drop_fragments(report.nameless_rows)
    else:
        out["kept"].append(
            {
                "root": None,
                "path": None,
                "page": None,
                "reason": f"data files {sorted(report.nameless_rows)} hold {lost} rows whose names "
                f"cannot be read; {embedded} were re-embedded from the folders the table "
                "holds: the files were kept",
            }
        )
    return embedded


__all__ = ["Embedder", "repair", "retrain_index"]
