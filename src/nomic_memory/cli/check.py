"""``nomic-memory check``: verify a store table row by row; ``--repair`` re-embeds what is damaged."""

from __future__ import annotations

import json
from typing import Optional

import typer

from nomic_memory.cli.common import (
    EXIT_FATAL,
    EXIT_OK,
    VERBOSE,
    BackendChoice,
    fail_on,
    json_option,
    resolve_store,
    setup_logging,
    store_option,
    table_option,
)
from nomic_memory.errors import NomicMemoryError


def check(
    store: Optional[str] = store_option(),
    table: Optional[str] = table_option("check"),
    repair: bool = typer.Option(
        False,
        "--repair",
        help="Re-embed bad and missing rows from their files with the "
        "table's model, then remove the bad rows (what cannot be re-embedded is kept).",
    ),
    delete_unrestorable: bool = typer.Option(
        False,
        "--delete-unrestorable",
        help="With --repair: also delete the bad rows that cannot be re-embedded (their files are gone or unreadable).",
    ),
    backend: BackendChoice = typer.Option("auto", "--backend", help="Device for re-embedding (--repair)."),
    json_out: bool = json_option("Print the report as JSON (nothing else on stdout)."),
    verbose: bool = VERBOSE,
) -> None:
    """Verify every row (every column readable, checksum, NaN, vector count), find missing pages, and
    verify the search index. Exit 0: clean; 1: problems (after --repair: something could not be restored)."""
    setup_logging(verbose)
    from nomic_memory.store.check import verify_table  # late: pyarrow; the CLI starts without it
    from nomic_memory.store.table import Store  # late: pyarrow; the CLI starts without it

    try:
        st = Store(resolve_store(store), create=False)
        t = st.open_table(table) if table else st.only_table()
        report = verify_table(t)
    except NomicMemoryError as e:
        raise fail_on(e)
    out = report.to_dict()
    if not json_out:
        typer.echo(
            f"Checked {report.rows_checked} rows of table {t.name}"
            + ("" if report.checksummed else " (made before checksums: NaN and vector counts only)")
        )
        if report.duplicates:
            typer.echo(f"{report.duplicates} duplicate rows (same file stored twice)")
        for b in report.bad:
            where = f"{b.root}/{b.path}" if b.path is not None else f"fragment {b.fragment}"
            typer.echo(f"Bad row: {where}{f' (page {b.page})' if b.page else ''}: {b.reason}")
        for m in report.missing:
            typer.echo(f"Missing row: {m.root}/{m.path} (page {m.page}): {m.reason}")
        files = report.files()
        if files:
            typer.echo("Files to re-embed:")
            for root, paths in sorted(files.items()):
                for p in sorted(paths):
                    typer.echo(f"  {root}/{p}")
    index_ok = _check_index(st, t, out, repair, json_out)
    if repair and not report.ok:
        _repair(st, t, report, out, backend.value, delete_unrestorable, json_out)
    if json_out:
        typer.echo(json.dumps(out))
    elif report.ok and index_ok:
        typer.echo("No problems found.")
    raise typer.Exit(EXIT_OK if report.ok and index_ok else EXIT_FATAL)


def _check_index(st, t, out: dict, repair: bool, json_out: bool) -> bool:
    """The search index's coverage (every row indexed once, no entry without a row); with
    ``repair``, a damaged one is rebuilt.  Whether it is fine now."""
    from nomic_memory.search.liveindex import repair as repair_index  # late: numpy/pyarrow; the CLI starts without it
    from nomic_memory.search.liveindex import verify as verify_index  # late: as above

    try:
        index = verify_index(st, t)
        if index["problems"] and repair:
            out["index_repair"] = repair_index(st, st.open_table(t.name))
            index = {**verify_index(st, st.open_table(t.name)), "problems_before_repair": index["problems"]}
    except NomicMemoryError as e:
        raise fail_on(e)
    out["index"] = index
    if not json_out:
        typer.echo(f"Search index: {index['state']}")
        for p in index.get("problems_before_repair", []):
            typer.echo(f"Index problem (repaired: index rebuilt): {p}")
        for p in index["problems"]:
            typer.echo(f"Index problem: {p}")
    return not index["problems"]


def _repair(st, t, report, out: dict, backend: str, delete_unrestorable: bool, json_out: bool) -> None:
    from nomic_memory.api import repair as do_repair  # late: torch (a second); the CLI starts without it
    from nomic_memory.store.check import verify_table  # late: pyarrow; the CLI starts without it

    try:
        fixed = do_repair(st, t, report, backend=backend, delete_unrestorable=delete_unrestorable)
        after = verify_table(st.open_table(t.name))
    except NomicMemoryError as e:
        raise fail_on(e)
    out["repair"] = {**fixed, "failed": [{"path": p, "reason": r} for p, r in fixed["failed"]]}
    out["after_repair"] = after.to_dict()
    ok = after.ok and fixed["restored"]
    if json_out:
        typer.echo(json.dumps(out))
        raise typer.Exit(EXIT_OK if ok else EXIT_FATAL)
    typer.echo(
        f"Repaired: re-embedded {fixed['reembedded']} rows, removed {fixed['deleted']} bad rows"
        + (f", {len(fixed['failed'])} could not be embedded" if fixed["failed"] else "")
    )
    for k in fixed["kept"]:
        page = f" (page {k['page']})" if k["page"] else ""
        where = f"{k['root']}/{k['path']}{page}" if k["path"] else "data files"
        typer.echo(f"Kept (cannot be re-embedded): {where}: {k['reason']}", err=True)
    if fixed["kept"]:
        typer.echo(
            "Some rows could not be restored and were kept; to delete them: nomic-memory check --repair "
            "--delete-unrestorable",
            err=True,
        )
    elif not after.ok:
        typer.echo("The table still has problems after the repair: run nomic-memory check again", err=True)
    raise typer.Exit(EXIT_OK if ok else EXIT_FATAL)
