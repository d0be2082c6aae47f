"""The run driver: discover -> inspect -> plan -> execute (decode + encode) -> store.

One driver serves every engine (clip-retrieval's reader -> mapper -> writer, with the mapper
swappable):
* **plan** (:func:`plan_run`): list the folder, hash every file, skip what the store already holds
  unchanged, count each input's visual tokens from its size, cut batches.  It needs the processor
  (for token counts), never the model.
* **execute**: an :class:`Executor` maps planned batches to embeddings (or per-input errors).
  :class:`LocalExecutor` decodes in worker processes ahead of the model on this machine;
  ``ray_engine.RayExecutor`` spreads the same batches over a Ray cluster.
* **store** (:class:`StoreSink`): each batch is one atomic store commit.

The model is loaded only when there is something to embed: a rerun over an unchanged folder reads
the store's index, finds nothing to do and returns without loading any weight.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import numpy as np

from nomic_memory.errors import EngineError, FolderNotFoundError, InputError, UsageError
from nomic_memory.ingest.batching import (
    MAX_PADDING,
    check_max_batch_tokens,
    make_batches,
    padding_overhead,
    visual_tokens,
)
from nomic_memory.ingest.documents import PageGeometry, is_input_path, render_size
from nomic_memory.ingest.images import UNLISTABLE, discover, discover_paths
from nomic_memory.ingest.listing import Item, SourceFile, inspect_files
from nomic_memory.logs import ProgressCallback, report_dict
from nomic_memory.memory import MemoryReport
from nomic_memory.store.failures import FailureLog
from nomic_memory.store.roots import remember_root
from nomic_memory.store.table import Record, Store, TableInfo, path_to_key

log = logging.getLogger("nomic_memory")

# Said of a failure remembered from an earlier run: the file was not tried again.
REMEMBERED = " (failed before; the file has not changed since)"


@dataclass(frozen=True)
class ModelStamp:
    """What a stored row records about the model that made it (and what makes a table)."""

    model_id: str
    revision: str
    kind: str
    dim: int
    fingerprint: str
    dtype: str  # compute dtype, e.g. float32 / bfloat16
    seed: int = 0

    @classmethod
    def of(cls, lm) -> ModelStamp:
        return cls(lm.model_id, lm.revision, lm.kind, lm.dim, lm.fingerprint, lm.backend.dtype_name, lm.seed)

    def table_info(self):
        storage = "float32" if self.dtype == "float32" else "float16"
        return TableInfo(self.model_id, self.revision, self.kind, self.dim, self.fingerprint, storage, self.seed)


@dataclass
class RunReport:
    directory: str
    store: str
    table: str
    discovered: int = 0  # files found
    inputs: int = 0  # images found: image files and pages of documents (what a row is made of)
    skipped_unchanged: int = 0  # inputs (images, pages) already stored unchanged
    embedded: int = 0  # inputs embedded and stored by this run
    failed: list[tuple[str, str]] = field(default_factory=list)  # (file or file#page, reason)
    remembered: list[str] = field(default_factory=list)  # the labels in ``failed`` known from an earlier run
    pruned: int = 0
    seconds: float = 0.0
    embed_seconds: float = 0.0
    batches: int = 0
    padding_overhead: float = 0.0
    memory: MemoryReport | None = None
    oom_splits: int = 0
    final_batch_cap: int = 0
    decode_workers: int = 0  # decode processes started
    decode_threads: int = 0  # decode threads of this process (the CPU backend's default)
    model_threads: int = 0  # CPU: the intra-op thread count the run settled on
    model_loaded: bool = False  # False when there was nothing to embed
    # Ray runs: each model worker's own peak (``memory`` is then the largest of them).
    worker_memory: dict[str, MemoryReport] = field(default_factory=dict)

    @property
    def new_failures(self) -> list[tuple[str, str]]:
        """The failures this run found: not remembered from an earlier run of the same file."""
        known = set(self.remembered)
        return [(p, r) for p, r in self.failed if p not in known]

    @property
    def images_per_second(self) -> float:
        return self.embedded / self.embed_seconds if self.embed_seconds > 0 else 0.0

    def to_dict(self) -> dict:
        out = report_dict(
            self,
            "directory store table discovered inputs skipped_unchanged embedded failed pruned seconds embed_seconds"
            " images_per_second batches padding_overhead oom_splits decode_workers decode_threads model_threads"
            " model_loaded memory",
            digits={"seconds": 3, "embed_seconds": 3, "images_per_second": 3, "padding_overhead": 4},
            failed=[{"path": p, "reason": r, "remembered": p in set(self.remembered)} for p, r in self.failed],
            memory=self.memory.to_dict() if self.memory else None,
        )
        if self.worker_memory:
            out["worker_memory"] = {w: m.to_dict() for w, m in self.worker_memory.items()}
        return out


@dataclass
class RunPlan:
    """What a run will embed: ``todo`` inputs cut into ``batches`` (lists of indices into it)."""

    root: Path
    files: list[SourceFile]
    todo: list[Item]
    batches: list[list[int]]
    existing: dict  # the store's rows of this root when planned: key -> row info

    def batch_items(self, b: int) -> list[Item]:
        return [self.todo[i] for i in self.batches[b]]


@dataclass
class BatchResult:
    """An executor's output for one planned batch: per input, its embedding (float32 numpy) or
    the :class:`InputError` that kept it out; ``stamp``: the model that made them."""

    index: int
    outputs: list[np.ndarray | InputError]
    stamp: ModelStamp


class Executor(Protocol):
    """Maps planned batches to embeddings.  ``processor()`` is all planning needs; ``start()``
    loads the model(s) and returns the stamp rows will carry (None when only the results will
    tell, e.g. remote workers); ``run()`` yields one :class:`BatchResult` per batch, in any order;
    ``finish()`` adds what the executor measured to the report."""

    def processor(self): ...

    def start(self) -> ModelStamp | None: ...

    def run(self, plan: RunPlan) -> Iterator[BatchResult]: ...

    def finish(self, report: RunReport) -> None: ...


def _fail(report: RunReport, emit, label: str, reason: str, known: bool = False) -> None:
    label = path_to_key(label)  # printable even when the file name is not valid UTF-8
    report.failed.append((label, reason))
    if known:
        report.remembered.append(label)
    emit("failed", {"path": label, "reason": reason, "known": known})


def _fail_listed(
    report: RunReport, emit, failures, new: list, rel: str, page: int, content_hash: str, reason: str
) -> None:
    """A failure found while listing (an unreadable file, a page that cannot be sized, a FIFO):
    remembered when the same file (same hash; same reason when it could not be hashed) failed
    before, else new and added to ``new`` for the failure log."""
    known = failures.unchanged(rel, page, content_hash) if failures is not None else None
    label = rel if not page else f"{rel}#{page}"
    if known is not None and (content_hash or known == reason):
        _fail(report, emit, label, f"{reason}{REMEMBERED}", known=True)
    else:
        _fail(report, emit, label, reason)
        new.append((rel, page, content_hash, reason))


def plan_run(
    table,
    root: Path,
    files: list[SourceFile],
    image_processor,
    report: RunReport,
    emit,
    *,
    fingerprints: frozenset[str] | None,
    revision: str,
    prune: bool,
    batch_size: int,
    max_batch_tokens: int | None,
    sort_by_tokens: bool = True,
    failures=None,
    scope: Callable[[str], bool] | None = None,
    unlisted: tuple[str, ...] = (),
) -> RunPlan:
    """The listing every engine shares: prune rows of vanished files (and of pages a changed
    document no longer has), report unreadable inputs, skip inputs stored unchanged (same content
    hash and model revision, and a projection fingerprint in ``fingerprints``; None when no stored
    row can be known to have the right projection), count visual tokens, cut batches.  Inputs that
    failed before and whose file has not changed since (``failures``) are reported, not retried.
    ``image_processor``: the processor's image processor, or a callable returning it (called only
    when something is left to embed).  ``report`` and ``emit`` are updated.  ``scope``: the
    relative paths ``files`` speaks for (default: all of the root); only their rows are pruned.
    ``unlisted``: folders (relative, ``"."`` for the root) that could not be listed: nothing under
    them is pruned."""
    existing = table.stored_keys(str(root)) if table is not None else {}
    _prune(table, root, files, existing, report, emit, prune, failures, scope, unlisted)
    todo: list[Item] = []
    listed_bad: list[tuple[str, int, str, str]] = []
    for f in files:
        if f.error:
            _fail_listed(report, emit, failures, listed_bad, f.rel, 0, f.content_hash, f.error)
            continue
        for page, reason in f.page_errors:
            _fail_listed(report, emit, failures, listed_bad, f.rel, page, f.content_hash, reason)
        for it in f.items:
            known = failures.unchanged(f.rel, it.page, f.content_hash) if failures is not None else None
            if known is not None:
                _fail(report, emit, it.label, f"{known}{REMEMBERED}", known=True)
            elif _unchanged(existing.get((f.rel, it.page)), f, revision, fingerprints):
                report.skipped_unchanged += 1
            else:
                todo.append(it)
    if failures is not None:
        failures.record(listed_bad)
    emit(
        "todo",
        {
            "count": len(todo),
            "skipped": report.skipped_unchanged,
            "inputs": report.inputs,
            "failed": len(report.failed) - len(report.remembered),
            "remembered": len(report.remembered),
        },
    )
    if todo and callable(image_processor):
        image_processor = image_processor()
    batches = _cut_batches(todo, image_processor, report, batch_size, max_batch_tokens, sort_by_tokens)
    emit("plan", {"batches": len(batches), "padding_overhead": report.padding_overhead})
    return RunPlan(root, files, todo, batches, existing)


def _unchanged(old: dict | None, f: SourceFile, revision: str, fingerprints: frozenset[str] | None) -> bool:
    return bool(
        old
        and old["content_hash"] == f.content_hash
        and old["model_revision"] == revision
        and fingerprints is not None
        and old["proj_fingerprint"] in fingerprints
    )


def _unseen(rel: str, unlisted: tuple[str, ...]) -> bool:
    """``rel`` lies in a folder that could not be listed (so its absence proves nothing)."""
    return any(u == "." or rel == u or rel.startswith(u + "/") for u in unlisted)


def _prune(
    table,
    root: Path,
    files: list[SourceFile],
    existing: dict,
    report: RunReport,
    emit,
    prune: bool,
    failures,
    scope: Callable[[str], bool] | None = None,
    unlisted: tuple[str, ...] = (),
) -> None:
    """Rows of files that are gone (with ``prune``; only within ``scope``, never under a folder
    that could not be listed), and rows of pages a document no longer has (always: its new
    content is what the store must hold)."""
    if table is None:
        return
    present = {f.rel: f for f in files}
    n = 0
    if prune:

        def prunable(rel: str) -> bool:
            return (scope is None or scope(rel)) and not _unseen(rel, unlisted)

        gone = sorted({p for p, _ in existing if p not in present and prunable(p)})
        if gone:
            n += table.delete_paths(str(root), gone)
        if failures is not None:
            failures.forget([k for k in failures.known if k[0] not in present and prunable(k[0])])
    stale = [
        (p, pg)
        for p, pg in existing
        if p in present
        and not present[p].error
        and pg not in {it.page for it in present[p].items} | {pg_ for pg_, _ in present[p].page_errors}
    ]
    if stale:
        n += table.delete_keys(str(root), stale)
    if n:
        report.pruned = n
        emit("pruned", {"count": n})


def _cut_batches(
    todo: list[Item],
    image_processor,
    report: RunReport,
    batch_size: int,
    max_batch_tokens: int | None,
    sort_by_tokens: bool,
) -> list[list[int]]:
    for it in todo:
        if it.pdf:  # drawn straight at the size the processor keeps
            it.width, it.height = render_size(PageGeometry(it.page, it.width, it.height), image_processor)
        try:
            it.tokens = visual_tokens(it.width, it.height, image_processor) if it.width and it.height else 0
        except ValueError:  # extreme aspect ratio: padded on decode to the processor's limit
            it.tokens = image_processor.size["longest_edge"] // (28 * 28)
    tokens = [it.tokens for it in todo]
    batches = make_batches(
        tokens,
        batch_size,
        max_batch_tokens or None,
        sort=sort_by_tokens,
        max_padding=MAX_PADDING if sort_by_tokens else None,
    )
    if sort_by_tokens:
        # Largest first: an out-of-memory batch shows up at once, and the cap it teaches holds for
        # the rest of the run.
        batches.reverse()
    report.batches = len(batches)
    report.padding_overhead = padding_overhead(tokens, batches) if todo else 0.0
    return batches


class StoreSink:
    """Writes each batch's embeddings as one atomic commit; the table is created on first write
    (from the stamp of the model that made the rows) when it does not exist yet."""

    def __init__(self, store, table_name: str, table=None, failures=None):
        self.store = store
        self.table_name = table_name
        self.table = table
        self.failures = failures

    def write(self, plan: RunPlan, result: BatchResult, report: RunReport, emit) -> None:
        items = plan.batch_items(result.index)
        good: list[tuple[Item, np.ndarray]] = []
        bad: list[tuple[str, int, str, str]] = []
        for it, out in zip(items, result.outputs):
            if isinstance(out, InputError):
                _fail(report, emit, it.label, out.reason)
                bad.append((it.rel, it.page, it.file.content_hash, out.reason))
            else:
                good.append((it, out))
        if good:
            if self.table is None:
                self.table = self.store.create_or_open(self.table_name, result.stamp.table_info())
            if not getattr(self, "_root_known", False):  # once per run: what a repair re-embeds from
                remember_root(self.store, self.table_name, path_to_key(str(plan.root)))
                self._root_known = True
            stamp, root = result.stamp, str(plan.root)
            records = [
                Record(
                    root,
                    it.rel,
                    it.file.content_hash,
                    it.file.size,
                    it.file.mtime,
                    it.width,
                    it.height,
                    e,
                    stamp.dtype,
                    page=it.page,
                    model_revision=stamp.revision,
                    proj_fingerprint=stamp.fingerprint,
                )
                for it, e in good
            ]
            refused = self._commit(plan, records)
            refused_ids = {id(r) for r, _ in refused}
            for r, reason in refused:  # e.g. a NaN embedding: never stored
                label = r.path if not r.page else f"{r.path}#{r.page}"
                _fail(report, emit, label, reason)
                bad.append((r.path, r.page, r.content_hash, reason))
            report.embedded += len(records) - len(refused)
            good = [(it, e) for (it, e), r in zip(good, records) if id(r) not in refused_ids]
        if self.failures is not None:
            self.failures.record(bad)
            self.failures.forget([(it.rel, it.page) for it, _ in good])

    def _commit(self, plan: RunPlan, records: list[Record]) -> list[tuple[Record, str]]:
        """One batch's commit; returns the records refused, with the reason."""
        return self.table.upsert(
            records, known_new={(r.path, r.page) for r in records if (r.path, r.page) not in plan.existing}
        )


def _warn_other_weights(table, stamp: ModelStamp) -> None:
    info = table.info
    if info.fingerprint != stamp.fingerprint or info.revision != stamp.revision:
        log.warning(
            "store table %s was made with revision %s / projection %s; this model is %s / %s: "
            "changed rows will be re-embedded",
            table.name,
            info.revision,
            info.fingerprint,
            stamp.revision,
            stamp.fingerprint,
        )


def _import_store_in_background() -> threading.Thread:
    """Importing LanceDB takes seconds; do it while the folder is listed and hashed."""

    def imp() -> None:
        try:
            import lancedb  # noqa: F401
        except Exception:  # the real import, later, reports it
            pass

    t = threading.Thread(target=imp, name="nomic-memory-import-lancedb", daemon=True)
    t.start()
    return t


# Long: the run's phases in order (list, open the store, identify the model, plan, execute, report),
# read top to bottom; each phase is a call, the glue between them is what stays here.
def run_embedding(
    directory: str | Path,
    store,
    executor: Executor,
    *,
    model_id: str,
    revision: str,
    seed: int,
    table_name: str,
    prune: bool = False,
    batch_size: int = 8,
    max_batch_tokens: int | None = None,
    sort_by_tokens: bool = True,
    on_event: ProgressCallback | None = None,
    paths: Iterable[str | Path] | None = None,
) -> RunReport:
    """Embed every input under ``directory`` into ``store`` with ``executor``; see the module docstring.

    ``paths``: only these files and folders under ``directory`` (what changed, for a watcher):
    they are listed, planned and pruned as a whole run would, and the rest of the root is left alone.

    ``model_id``/``revision``/``seed``/``table_name`` say which model the executor runs (known
    without loading it: :meth:`~nomic_memory.model.loading.ModelSpec.resolve`)."""

    t0 = time.perf_counter()
    emit = on_event or (lambda kind, data: None)
    if batch_size < 1:
        raise UsageError("batch_size must be at least 1")
    importer = _import_store_in_background() if not isinstance(store, Store) else None
    root = Path(directory).expanduser().resolve()
    found, skipped, scope = _list_inputs(root, paths, prune)
    files = inspect_files(found, root)
    inputs = len(skipped) + sum(1 if f.error else len(f.items) + len(f.page_errors) for f in files)
    emit("discovered", {"count": len(found) + len(skipped), "inputs": inputs, "directory": str(root)})
    if importer is not None:
        importer.join()
    store = store if isinstance(store, Store) else Store(store)
    table = store.open_table(table_name) if table_name in store.table_names() else None
    report = RunReport(str(root), str(store.path), table_name, discovered=len(found) + len(skipped), inputs=inputs)
    if table is not None:
        fixed = table.ensure_unique()  # a store written by racing runs of older versions
        if fixed:
            log.warning("removed %d duplicate rows from table %s", fixed, table.name)
    failures = FailureLog(store, table_name, str(root))
    failures.load()
    skipped_bad: list[tuple[str, int, str, str]] = []
    for rel, reason in skipped:  # FIFOs, devices, broken links...: reported, never read
        _fail_listed(report, emit, failures, skipped_bad, rel, 0, "", reason)
    failures.record(skipped_bad)

    # Rows made with this model (same revision and seed) carry the fingerprint the table records;
    # any other table state needs the model itself to tell which rows are still valid.
    info = table.info if table is not None else None
    expected = None
    if info is not None and (info.model_id, info.revision, info.seed) == (model_id, revision, seed):
        expected = ModelStamp(model_id, revision, info.kind, info.dim, info.fingerprint, "", seed)
    stamp = None
    if info is not None and expected is None:
        stamp = _start(executor, report, emit)
        if stamp is not None:
            _warn_other_weights(table, stamp)
    if max_batch_tokens is not None:
        check_max_batch_tokens(max_batch_tokens, executor.processor().image_processor)
    unlisted = tuple(rel for rel, reason in skipped if reason.startswith(UNLISTABLE))
    opts = dict(
        revision=revision,
        prune=prune,
        batch_size=batch_size,
        max_batch_tokens=max_batch_tokens,
        sort_by_tokens=sort_by_tokens,
        failures=failures,
        scope=scope,
        unlisted=unlisted,
    )
    # The processor (transformers: seconds to import) only when something is left to embed.
    image_processor = lambda: executor.processor().image_processor  # noqa: E731
    plan = plan_run(
        table,
        root,
        files,
        image_processor,
        report,
        emit,
        fingerprints=_fingerprints(executor, stamp or expected),
        **opts,
    )
    if plan.todo and stamp is None:
        stamp = _start(executor, report, emit)
        fps = _fingerprints(executor, stamp)
        if stamp is not None and expected is not None and expected.fingerprint not in fps:
            _warn_other_weights(table, stamp)  # its rows are not this model's: plan them again
            report = _replanned(report, len(skipped))
            plan = plan_run(table, root, files, image_processor, report, emit, fingerprints=fps, **opts)
    sink = StoreSink(store, table_name, table, failures)
    t_embed = time.perf_counter()
    try:
        if plan.batches:
            _execute(executor, plan, sink, report, emit, t_embed)
    finally:
        report.embed_seconds = time.perf_counter() - t_embed
        if report.model_loaded:
            executor.finish(report)
        report.final_batch_cap = report.final_batch_cap or batch_size
        if sink.table is not None:
            sink.table.maintain()  # compact small fragments, drop old versions: cheap when clean
        report.seconds = time.perf_counter() - t0
    emit("done", report.to_dict())
    return report


def _replanned(report: RunReport, n_listed: int) -> RunReport:
    """A fresh report for planning again, keeping the ``n_listed`` failures reported before the
    plan (files that are not regular files)."""
    kept = report.failed[:n_listed]
    labels = {p for p, _ in kept}
    return RunReport(
        report.directory,
        report.store,
        report.table,
        discovered=report.discovered,
        inputs=report.inputs,
        failed=list(kept),
        remembered=[p for p in report.remembered if p in labels],
        model_loaded=True,
    )


def _list_inputs(root: Path, changed, prune: bool):
    """``(files, skipped, scope)``: every input under ``root``, or only those among ``changed``
    (then ``scope`` says which stored paths the listing speaks for)."""
    if changed is None:
        try:
            return (*discover(root, match=is_input_path), None)
        except FileNotFoundError:
            if not prune:
                raise FolderNotFoundError(f"no such directory: {root}") from None
            return [], [], None  # a folder that is gone: --prune forgets what the store held of it
        except NotADirectoryError:
            raise FolderNotFoundError(f"not a directory: {root}") from None
    # Each path's folder resolved as the root is (a symlinked parent such as /tmp), not the file.
    changed = [Path(os.path.realpath(Path(p).expanduser().absolute().parent)) / Path(p).name for p in changed]
    return (*discover_paths(root, changed, match=is_input_path), path_scope(root, changed))


def path_scope(root: Path, paths: Iterable[Path]) -> Callable[[str], bool]:
    """Whether a stored relative path is one of ``paths`` or lies under one of them (as folders)."""
    keys = set()
    for p in paths:
        try:
            keys.add(Path(p).relative_to(root).as_posix())
        except ValueError:
            continue
    if "." in keys:  # the root itself
        return lambda rel: True

    def inside(rel: str) -> bool:
        while rel:
            if rel in keys:
                return True
            rel = rel.rpartition("/")[0]
        return False

    return inside


def _fingerprints(executor, stamp: ModelStamp | None) -> frozenset[str] | None:
    """The projection fingerprints rows may carry and still be this model's (the same weights
    fingerprinted in another dtype by earlier versions count too)."""
    if stamp is None:
        return None
    variants = getattr(executor, "fingerprints", None) or frozenset()
    return frozenset({stamp.fingerprint, *variants})


def _start(executor: Executor, report: RunReport, emit) -> ModelStamp | None:
    emit("model_loading", {})
    t = time.perf_counter()
    stamp = executor.start()
    report.model_loaded = True
    emit(
        "model_loaded",
        {
            "seconds": time.perf_counter() - t,
            "notes": list(getattr(executor, "notes", [])),
            **(dataclasses.asdict(stamp) if stamp else {}),
        },
    )
    return stamp


def _execute(executor: Executor, plan: RunPlan, sink: StoreSink, report: RunReport, emit, t_embed: float) -> None:
    done: set[int] = set()
    fingerprint = None
    for result in executor.run(plan):
        if result.index in done:  # a retried batch delivered twice: already stored
            continue
        if fingerprint is None:
            fingerprint = result.stamp.fingerprint
        elif result.stamp.fingerprint != fingerprint:
            raise EngineError(
                f"model workers loaded different projections ({fingerprint} and "
                f"{result.stamp.fingerprint}): are all nodes on the same model files and "
                "library versions?"
            )
        done.add(result.index)
        sink.write(plan, result, report, emit)
        n = len(plan.batches[result.index])
        log.info(
            "Processed batch %d/%d (%d inputs, %d embedded so far)", len(done), len(plan.batches), n, report.embedded
        )
        emit(
            "batch",
            {
                "index": len(done),
                "total": len(plan.batches),
                "images": n,
                "embedded": report.embedded,
                "elapsed": time.perf_counter() - t_embed,
            },
        )
    for b in range(len(plan.batches)):  # not expected: an executor raises when it cannot compute one
        if b not in done:
            for it in plan.batch_items(b):
                report.failed.append((it.label, "not returned by the executor"))
                emit("failed", {"path": it.label, "reason": "not returned by the executor"})


__all__ = [
    "RunReport",
    "RunPlan",
    "BatchResult",
    "ModelStamp",
    "Executor",
    "StoreSink",
    "plan_run",
    "run_embedding",
    "ProgressCallback",
]
