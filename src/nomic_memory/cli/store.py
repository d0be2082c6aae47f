"""``nomic-memory store list|drop|forget|compact``: what a store holds, and tidying it.

None of these load a model or import torch: they are quick.  A store is never created by them
(a mistyped ``--store`` is an error, not a new empty store).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Optional

import typer

from nomic_memory.cli.common import (
    EXIT_USAGE,
    TABLE_FILTER,
    fail,
    json_option,
    plural,
    resolve_store,
    say,
    setup_logging,
    store_option,
)
from nomic_memory.cli.index import index_line


def _open(store: str | None):
    from nomic_memory.store.table import Store, StoreError  # late: pyarrow; the CLI starts without it

    try:
        return Store(resolve_store(store), create=False)
    except StoreError as e:
        raise fail(str(e))


def _size(n: int | None) -> str:
    if n is None:
        return "-"
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return str(n)


def list_tables(
    store: Optional[str] = store_option(),
    json_out: bool = json_option(),
) -> None:
    """List the store's tables: model, kind, dimension, rows, embedded folders, size, dtype."""
    setup_logging(False)
    from nomic_memory.search.liveindex import describe  # late: numpy/pyarrow; the CLI starts without it
    from nomic_memory.store.table import StoreError  # late: pyarrow; the CLI starts without it

    s = _open(store)
    tables = []
    try:
        for name in s.table_names():
            try:
                t = s.open_table(name)
            except StoreError as e:  # a table someone else put there: say so, list the rest
                tables.append({"table": name, "error": str(e)})
                continue
            info = t.info
            tables.append(
                {
                    "table": name,
                    "model_id": info.model_id,
                    "revision": info.revision,
                    "kind": info.kind,
                    "dim": info.dim,
                    "dtype": info.storage_dtype,
                    "rows": t.count(),
                    "roots": t.roots(),
                    "disk_bytes": s.disk_bytes(name),
                    "index": describe(s, t),
                }
            )
    except StoreError as e:
        raise fail(str(e))
    if json_out:
        typer.echo(json.dumps({"store": str(s.path), "tables": tables}))
        return
    say(f"Store: {s.path} ({plural(len(tables), 'table')})")
    for t in tables:
        if "error" in t:
            say(f"\n{t['table']}: {t['error']}")
            continue
        say(f"\n{t['table']}")
        say(f"  model:  {t['model_id']} (revision {t['revision']})")
        say(f"  kind:   {t['kind']}, {t['dim']}-d, stored as {t['dtype']}")
        say(f"  rows:   {t['rows']}")
        say(f"  size:   {_size(t['disk_bytes'])} on disk")
        say(f"  index:  {index_line(t['index'])}")
        say(f"  roots:  {len(t['roots'])}")
        for root, n in t["roots"].items():
            say(f"    {root}  ({plural(n, 'row')})")


def drop(
    table: str = typer.Argument(..., metavar="TABLE", help="The table to delete (see `store list`)."),
    store: Optional[str] = store_option(),
    yes: bool = typer.Option(False, "--yes", "-y", help="Do not ask for confirmation."),
    json_out: bool = json_option(),
) -> None:
    """Delete a table (every embedding one model made) from the store."""
    setup_logging(False)
    from nomic_memory.store.table import StoreError  # late: pyarrow; the CLI starts without it

    s = _open(store)
    try:
        rows = s.open_table(table).count()
    except StoreError as e:
        raise fail(str(e))
    if not yes:
        if not sys.stdin.isatty() or json_out:
            raise fail(
                f"dropping table {table!r} ({plural(rows, 'row')}) needs --yes when not asked on a terminal", EXIT_USAGE
            )
        typer.confirm(f"Delete table {table!r} ({plural(rows, 'row')}) from {s.path}?", abort=True)
    try:
        s.drop_table(table)
    except StoreError as e:
        raise fail(str(e))
    if json_out:
        typer.echo(json.dumps({"store": str(s.path), "dropped": table, "rows": rows}))
    else:
        say(f"Dropped table {table} ({plural(rows, 'row')}) from {s.path}")


def forget(
    root: str = typer.Argument(..., metavar="DIR", help="The embedded directory (it may no longer exist)."),
    store: Optional[str] = store_option(),
    table: Optional[str] = typer.Option(
        None, "--table", metavar="NAME", help="Only this table (default: every table holding DIR)."
    ),
    json_out: bool = json_option(),
) -> None:
    """Remove every row embedded from DIR: what to do for a folder that is now empty or gone."""
    setup_logging(False)
    from nomic_memory.store.table import (  # late: pyarrow; the CLI starts without it
        StoreError,  # late: pyarrow; the CLI starts without it
        key_to_path,
        path_to_key,
    )

    s = _open(store)
    key = str(Path(root).expanduser().resolve())  # rows record the absolute directory
    removed: dict[str, int] = {}
    try:
        names = [table] if table else s.table_names()
        tables = [s.open_table(n) for n in names]
        for t in tables:
            if path_to_key(key) in t.roots():
                removed[t.name] = t.delete_root(key)
    except StoreError as e:
        raise fail(str(e))
    if not removed:
        known = sorted({key_to_path(r) for t in tables for r in t.roots()})
        raise fail(
            f"{'table ' + repr(table) if table else 'the store ' + str(s.path)} holds nothing embedded "
            f"from {key} (embedded directories: {', '.join(known) or 'none'})"
        )
    if json_out:
        typer.echo(json.dumps({"store": str(s.path), "root": key, "removed": removed}))
    else:
        for name, n in removed.items():
            say(f"Removed {plural(n, 'row')} of {key} from table {name}")


def compact(
    store: Optional[str] = store_option(),
    table: Optional[str] = TABLE_FILTER,
    json_out: bool = json_option(),
) -> None:
    """Merge small fragments and delete old table versions (frees disk; run while nothing else uses
    the store)."""
    setup_logging(False)
    from nomic_memory.store.compact import compact_table  # late: pyarrow; the CLI starts without it
    from nomic_memory.store.table import StoreError  # late: pyarrow; the CLI starts without it

    s = _open(store)
    results = []
    try:
        for name in [table] if table else s.table_names():
            t = s.open_table(name)
            before, disk_before = t.stats(), s.disk_bytes(name)
            compact_table(t)  # every version but the latest, and the files only they used
            after, disk_after = t.stats(), s.disk_bytes(name)
            results.append(
                {
                    "table": name,
                    "before": {**before, "disk_bytes": disk_before},
                    "after": {**after, "disk_bytes": disk_after},
                }
            )
    except StoreError as e:
        raise fail(str(e))
    if json_out:
        typer.echo(json.dumps({"store": str(s.path), "tables": results}))
        return
    for r in results:
        b, a = r["before"], r["after"]
        say(
            f"{r['table']}: {plural(b['fragments'], 'fragment')} -> {a['fragments']}, "
            f"{plural(b['versions'], 'version')} -> {a['versions']}, "
            f"{_size(b['disk_bytes'])} -> {_size(a['disk_bytes'])} on disk"
        )
    if not results:
        say(f"Store {s.path} has no tables")
