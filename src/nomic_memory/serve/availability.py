"""Whether the served table is still there: a table dropped (``store drop``) or a store gone
while the server runs is noticed, reported (503 with the reason, ``/health`` not ok), and
served again when it comes back (the same model, checked against the new table)."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

from nomic_memory.errors import NomicMemoryError
from nomic_memory.search.index import Index
from nomic_memory.serve.config import HTTPError

log = logging.getLogger("nomic_memory.serve")


class TableWatch:
    """The served :class:`Index`, looked for in its store at most every ``interval`` seconds
    (one listing of the store's tables), or at once with ``force`` (after a read failed)."""

    def __init__(self, index: Index, interval: float, on_reopen: Callable[[], None] | None = None):
        self.index = index
        self.name = index.table.name
        self.interval = interval
        self.on_reopen = on_reopen
        self.reason: str | None = None
        self._checked = time.monotonic()
        self._lock = threading.Lock()

    def current(self, force: bool = False) -> Index:
        """The index, if its table can be served; else :class:`HTTPError` 503 with the reason."""
        with self._lock:
            if force or time.monotonic() - self._checked >= self.interval:
                self._checked = time.monotonic()
                was = self.reason
                self.reason = self._look()
                if self.reason != was:
                    log.warning("%s", self.reason or f"table {self.name!r} is back: serving it again")
            if self.reason:
                raise HTTPError(503, self.reason)
            return self.index

    def _look(self) -> str | None:
        """Why the table cannot be served now (None: it can); reopens it when it came back."""
        store = self.index.store
        try:
            names = store.table_names()
        except NomicMemoryError as e:
            return f"the store cannot be read: {e}"
        if self.name not in names:
            return (
                f"table {self.name!r} is no longer in the store (dropped?); searches resume when it is embedded again"
            )
        if self.reason is None:
            return None
        old = self.index
        try:
            new = Index(
                store,
                store.open_table(self.name),
                model=old.model,
                template=old.template,
                allow_mismatch=old.allow_mismatch,
                device=old.device,
            )
            _ = new.model  # checked against the table as it is now
        except NomicMemoryError as e:
            return f"table {self.name!r} is back but cannot be served: {e}"
        self.index = new
        if self.on_reopen:
            self.on_reopen()
        return None


__all__ = ["TableWatch"]
