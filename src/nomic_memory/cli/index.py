"""``nomic-memory index rebuild|status``: the first-stage search index kept beside each table.

The index is kept current by every search (it catches up with the rows written since), so
``rebuild`` is for recovery and for a changed setting; ``status`` shows what it covers.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from typing import Any, Optional

import typer

from nomic_memory.cli.common import TABLE_FILTER, json_option, resolve_store, say, setup_logging, store_option


def _each_table(work: Callable[[Any, Any], dict], line: Callable[[dict], str], doc: str):
    """An ``index`` command: ``work(store, table)`` on each table (or the one ``--table`` names),
    one ``table: line(result)`` said as each is done, or with ``--json`` one document of them all."""

    def command(
        store: Optional[str] = store_option(),
        table: Optional[str] = TABLE_FILTER,
        json_out: bool = json_option(),
    ) -> None:
        setup_logging(False)
        from nomic_memory.store.table import Store  # late: pyarrow; the CLI starts without it

        s = Store(resolve_store(store), create=False)
        tables = [s.open_table(table)] if table else [s.open_table(n) for n in s.table_names()]
        out = []
        for t in tables:
            out.append({"table": t.name, **work(s, t)})
            if not json_out:
                say(f"{t.name}: {line(out[-1])}")
        if json_out:
            typer.echo(json.dumps({"store": str(s.path), "tables": out}))

    command.__doc__ = doc
    return command


def _rebuild(s, t) -> dict:
    from nomic_memory.search.liveindex import LiveIndex  # late: numpy/pyarrow; the CLI starts without it

    t0 = time.perf_counter()
    st = LiveIndex(s, t).rebuild()
    return {"entries": st.n, "version": st.version, "bytes": st.nbytes(), "seconds": round(time.perf_counter() - t0, 3)}


def _rebuilt_line(d: dict) -> str:
    return (
        f"indexed {d['entries']} rows in {d['seconds']:.1f} s "
        f"({d['bytes'] / 2**20:.1f} MiB, {d['bytes'] / max(d['entries'], 1):.0f} bytes per row)"
    )


def _describe(s, t) -> dict:
    from nomic_memory.search.liveindex import describe  # late: numpy/pyarrow; the CLI starts without it

    return describe(s, t)


def index_line(d: dict) -> str:
    """One line describing an index (``describe``'s dict)."""
    if "rows" not in d:
        extra = f"; searches are exact below {d['min_rows']} rows" if "min_rows" in d else ""
        return f"{d['state']}{extra}"
    centroids = f" ({d['centroids']} centroids)" if "centroids" in d else ""
    outgrown = f"; codebook outgrown ({d['outgrown']})" if "outgrown" in d else ""
    return (
        f"{d['state']}, {d['rows']} rows at table version {d['version']}, "
        f"{d['bytes'] / 2**20:.1f} MiB ({d['bytes_per_row']:.0f} bytes per row), {d['kind']}{centroids}{outgrown}"
    )


rebuild = _each_table(
    _rebuild, _rebuilt_line, "Build the search index of each table from scratch (recovery; a changed setting)."
)
status = _each_table(_describe, index_line, "Show each table's search index: rows covered, table version, size.")
