"""``store compact``: one table down to its latest version, in one call.

LanceDB's ``optimize`` compacts fragments, then deletes old versions, then updates the table's
indexes; an index update (a table with a Lance vector index) commits one more version *after* the
deletion, and the fragments it did not cover stay apart, so one ``optimize`` could leave the old
index files and a second fragment behind: the table grew.  :func:`compact_table` runs it until one
version is left (twice at most in practice), deleting unreferenced files whatever their age
(``delete_unverified``: files a killed run wrote but never committed), under the store's write
lock, so no run of this tool is committing meanwhile.  Readers of an old version (a search started
a moment before) lose it: the command says to run it while nothing else uses the store.
"""

from __future__ import annotations

import datetime as dt
import warnings

from nomic_memory.errors import StoreError

MAX_PASSES = 3


def compact_table(table) -> dict:
    """Compact :class:`~nomic_memory.store.table.EmbeddingTable` ``table`` and delete every version
    but the latest with the files only they used; returns ``{"passes": n}``.  A failure is a
    :class:`StoreError` (never silently skipped, as the end-of-run upkeep may be)."""
    passes = 0
    try:
        with table._lock():
            while passes < MAX_PASSES:
                passes += 1
                table.refresh()
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore", UserWarning)  # "removes every version" (older_than 0)
                    table.table.optimize(cleanup_older_than=dt.timedelta(0), delete_unverified=True)
                if len(table.table.list_versions()) == 1 and table.fragment_count() <= 1:
                    break
    except StoreError:
        raise
    except Exception as e:  # noqa: BLE001 - Lance raises OSError/ValueError/RuntimeError with a Rust trace
        reason = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise StoreError(
            f"cannot compact table {table.name!r} in the store at {table._where}: {reason[:200]}"
        ) from None
    return {"passes": passes}


__all__ = ["compact_table"]
