"""Re-embedding chosen rows (``nomic-memory check --repair``): exactly the pages asked for.

A repair re-embeds the rows ``check`` found bad or missing, from their files, with the run's own
machinery (listing, planning, an executor, the store sink), but only those pages: one damaged page
of a 600-page PDF costs one page.  Each batch's new rows are committed before the rows they
replace are deleted (:meth:`~nomic_memory.store.table.EmbeddingTable.append_replacing`), so a
repair killed at any point has lost nothing: what it had not replaced yet is still there, bad, and
the next ``check`` reports it.  A row whose file is gone, unreadable or changed shape is kept.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from nomic_memory.ingest.documents import is_input_path
from nomic_memory.ingest.images import discover
from nomic_memory.ingest.listing import Item, SourceFile, inspect_file, inspect_files
from nomic_memory.run.driver import Executor, RunPlan, RunReport, StoreSink, _cut_batches, _execute, _start
from nomic_memory.store.table import EmbeddingTable, Record, key_to_path


@dataclass
class Outcome:
    """What one root's repair did: rows written, and the keys it could not restore, with why."""

    embedded: int = 0
    failed: list[tuple[str, str]] = field(default_factory=list)  # (label, reason) of inputs that failed
    restored: set[tuple[str, int]] = field(default_factory=set)  # (path, page) written
    kept: list[tuple[str, int, str]] = field(default_factory=list)  # (path, page, reason) not restored


class ReplacingSink(StoreSink):
    """The store sink of a repair: appends each batch, then deletes the rows it replaces."""

    def __init__(self, store, table: EmbeddingTable, replaces: dict[tuple[str, int], list[int]], outcome: Outcome):
        super().__init__(store, table.name, table)
        self.replaces, self.outcome = replaces, outcome

    def _commit(self, plan: RunPlan, records: list[Record]) -> list[tuple[Record, str]]:
        ok, refused = self.table.validate(records)
        old = [rid for r in ok for rid in self.replaces.get((r.path, r.page), [])]
        self.table.append_replacing(ok, old)
        self.outcome.restored.update((r.path, r.page) for r in ok)
        return refused


def _files(root: Path, wanted: Mapping[str, set[int] | None], out: Outcome) -> tuple[list[SourceFile], list[Item]]:
    """List the files holding the wanted pages (``None``: every page of a file)."""
    files, todo = [], []
    for rel, pages in sorted(wanted.items()):
        path = root / rel
        if not path.is_file():
            out.kept.extend((rel, pg, "the file is gone") for pg in sorted(pages or {0}))
            continue
        sf = inspect_file(path, root)
        if sf.error:
            out.kept.extend((rel, pg, sf.error) for pg in sorted(pages or {0}))
            continue
        items = [it for it in sf.items if pages is None or it.page in pages]
        have = {it.page for it in items}
        errors = dict(sf.page_errors)
        for pg in sorted((pages or set()) - have):
            out.kept.append((rel, pg, errors.get(pg, f"the file has no page {pg} now")))
        files.append(sf)
        todo.extend(items)
    return files, todo


def reembed(
    store,
    table: EmbeddingTable,
    executor: Executor,
    root: Path,
    wanted: Mapping[str, set[int] | None],
    replaces: dict[tuple[str, int], list[int]],
    *,
    batch_size: int = 8,
    emit=None,
) -> Outcome:
    """Embed the ``wanted`` pages of files under ``root`` (paths as ``os.fsdecode`` gives them)
    into ``table``, deleting the rows ``replaces`` names for each page written."""
    out = Outcome()
    emit = emit or (lambda kind, data: None)
    files, todo = _files(root, wanted, out)
    if not todo:
        return out
    report = RunReport(str(root), str(store.path), table.name, discovered=len(files))
    batches = _cut_batches(todo, executor.processor().image_processor, report, batch_size, None, True)
    plan = RunPlan(root, files, todo, batches, existing={})
    if not getattr(executor, "_repair_started", False):
        _start(executor, report, emit)
        executor._repair_started = True
    sink = ReplacingSink(store, table, replaces, out)
    _execute(executor, plan, sink, report, emit, time.perf_counter())
    out.embedded, out.failed = report.embedded, list(report.failed)
    failed = {label for label, _ in report.failed}
    for it in todo:
        if (it.rel, it.page) not in out.restored:
            reason = next((r for lb, r in report.failed if lb == it.label), "not embedded")
            out.kept.append((it.rel, it.page, reason if it.label in failed else "not embedded"))
    return out


def unstored(root: Path, stored: set[tuple[str, int]]) -> dict[str, set[int] | None]:
    """Every page under ``root`` that has no row in ``stored`` ((path, page) keys, as stored):
    what a repair re-embeds when a data file's rows cannot even be named."""
    try:
        paths, _ = discover(root, match=is_input_path)
    except OSError:
        return {}
    wanted: dict[str, set[int] | None] = {}
    stored_paths = {(key_to_path(p), pg) for p, pg in stored}
    for sf in inspect_files(paths, root):
        pages = {it.page for it in sf.items if (sf.rel, it.page) not in stored_paths}
        if pages and not sf.error:
            wanted[sf.rel] = pages
    return wanted


__all__ = ["Outcome", "ReplacingSink", "reembed", "unstored"]
