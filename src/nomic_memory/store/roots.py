"""The folders each table holds rows of, remembered apart from the table itself.

A data file so damaged that not even its rows' names can be read may hold every row of a folder;
the table then no longer says that folder was ever embedded.  Each store keeps one small table
(``_roots``, hidden from the store's table list) of ``(table, root)``, written the first time a
run stores a row of a folder, so a repair knows every folder to re-embed from.
"""

from __future__ import annotations

import logging

import pyarrow as pa

log = logging.getLogger(__name__)

TABLE = "_roots"
SCHEMA = pa.schema([pa.field("table", pa.string(), nullable=False), pa.field("root", pa.string(), nullable=False)])


def _sql(s: str) -> str:
    return "'" + s.replace("'", "''") + "'"


def known_roots(store, table_name: str) -> set[str]:
    """The folders (as stored: see ``path_to_key``) ``table_name`` has held rows of (empty when
    the record cannot be read: it is a help for repairs, never a reason to fail)."""
    try:
        if not hasattr(store, "db") or TABLE not in store.all_table_names():
            return set()
        t = store.db.open_table(TABLE)
        rows = t.search().where(f'"table" = {_sql(table_name)}').select(["root"]).limit(None).to_arrow()
        return set(rows.column("root").to_pylist())
    except Exception as e:  # noqa: BLE001 - a damaged bookkeeping table
        log.info("the store's record of embedded folders cannot be read: %s", e)
        return set()


def remember_root(store, table_name: str, root: str) -> None:
    """Record that ``table_name`` holds rows of ``root`` (a stored key); one small commit, once."""
    if not hasattr(store, "db") or root in known_roots(store, table_name):
        return
    data = pa.Table.from_pylist([{"table": table_name, "root": root}], schema=SCHEMA)
    try:
        t = store.db.create_table(TABLE, schema=SCHEMA, exist_ok=True)
        t.merge_insert(["table", "root"]).when_not_matched_insert_all().execute(data)
    except Exception as e:  # noqa: BLE001 - the rows themselves were committed; this is a help
        log.info("cannot record the embedded folder %s: %s", root, e)


def forget_roots(store, where: str) -> None:
    if hasattr(store, "db") and TABLE in store.all_table_names():
        store.db.open_table(TABLE).delete(where)


__all__ = ["TABLE", "forget_roots", "known_roots", "remember_root"]
