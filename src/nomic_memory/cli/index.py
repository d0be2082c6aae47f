"""``nomic-memory index rebuild|status``: the first-stage search index kept beside each table.

The index is kept current by every search (it catches up with the rows written since), so
``rebuild`` is for recovery and for a changed setting; ``status`` shows what it covers.
"""

from __future__ import annotations

import json
import time
from typing import Optional

import typer

from nomic_memory.cli.common import TABLE_FILTER, json_option, resolve_store, say, setup_logging, store_option


def _tables(store: str | None, table: str | None):
    from nomic_memory.store.table import Store  # late: pyarrow; the CLI starts without it

    s = Store(resolve_store(store), create=False)
    return s, [s.open_table(table)] if table else [s.open_table(n) for n in s.table_names()]


def rebuild(
    store: Optional[str] = store_option(),
    table: Optional[str] = TABLE_FILTER,
    json_out: bool = json_option(),
) -> None:
    """Build the search index of each table from scratch (recovery; a changed setting)."""
    setup_logging(False)
    from nomic_memory.search.liveindex import LiveIndex  # late: numpy/pyarrow; the CLI starts without it

    out = []
    s, tables = _tables(store, table)
    for t in tables:
        t0 = time.perf_counter()
        st = LiveIndex(s, t).rebuild()
        out.append(
            {
                "table": t.name,
                "entries": st.n,
                "version": st.version,
                "bytes": st.nbytes(),
                "seconds": round(time.perf_counter() - t0, 3),
            }
        )
        if not json_out:
            say(
                f"{t.name}: indexed {st.n} rows in {out[-1]['seconds']:.1f} s "
                f"({st.nbytes() / 2**20:.1f} MiB, {st.nbytes() / max(st.n, 1):.0f} bytes per row)"
            )
    if json_out:
        typer.echo(json.dumps({"store": str(s.path), "tables": out}))


def status(
    store: Optional[str] = store_option(),
    table: Optional[str] = TABLE_FILTER,
    json_out: bool = json_option(),
) -> None:
    """Show each table's search index: rows covered, table version, size."""
    setup_logging(False)
    from nomic_memory.search.liveindex import describe  # late: numpy/pyarrow; the CLI starts without it

    s, tables = _tables(store, table)
    out = [{"table": t.name, **describe(s, t)} for t in tables]
    if json_out:
        typer.echo(json.dumps({"store": str(s.path), "tables": out}))
        return
    for d in out:
        say(f"{d['table']}: {index_line(d)}")


def index_line(d: dict) -> str:
    """One line describing an index (``describe``'s dict)."""
    if "rows" not in d:
        extra = f"; searches are exact below {d['min_rows']} rows" if "min_rows" in d else ""
        return f"{d['state']}{extra}"
    return (
        f"{d['state']}, {d['rows']} rows at table version {d['version']}, "
        f"{d['bytes'] / 2**20:.1f} MiB ({d['bytes_per_row']:.0f} bytes per row), {d['kind']}"
    )
