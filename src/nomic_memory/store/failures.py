"""Inputs that could not be embedded, remembered so an unchanged bad file is not retried every run.

A corrupt photo stays corrupt: decoding it again on every rerun costs time and, worse, a model
load when it is the only thing left to do.  Each store keeps one small table (``_failures``,
hidden from the store's table list) of ``(table, root, path, page, content_hash, reason)``.  The
planner skips an input whose file still has the hash it failed with, and reports it again with
its reason; a changed file (new hash) is retried, and a success or a prune forgets the entry.
"""

from __future__ import annotations

import datetime as dt

import pyarrow as pa

TABLE = "_failures"
SCHEMA = pa.schema(
    [
        pa.field("table", pa.string(), nullable=False),
        pa.field("root", pa.string(), nullable=False),
        pa.field("path", pa.string(), nullable=False),
        pa.field("page", pa.int32(), nullable=False),
        pa.field("content_hash", pa.string()),
        pa.field("reason", pa.string()),
        pa.field("failed_at", pa.timestamp("ms", tz="UTC")),
    ]
)


def _sql(s: str) -> str:
    return "'" + s.replace("'", "''") + "'"


class FailureLog:
    """The remembered failures of one embedding table, for one embedded directory."""

    def __init__(self, store, table_name: str, root: str):
        self.store, self.table_name, self.root = store, table_name, root
        self.enabled = hasattr(store, "db")  # a store that discards everything remembers nothing
        self._t = None
        self.known: dict[tuple[str, int], tuple[str, str]] = {}  # (path, page) -> (hash, reason)

    def _table(self, create: bool):
        if self._t is None:
            db = self.store.db
            if TABLE in self.store.all_table_names():
                self._t = db.open_table(TABLE)
            elif create:
                self._t = db.create_table(TABLE, schema=SCHEMA, exist_ok=True)
        return self._t

    def load(self) -> dict[tuple[str, int], tuple[str, str]]:
        t = self._table(create=False) if self.enabled else None
        if t is None:
            return {}
        rows = (
            t.search()
            .where(f'"table" = {_sql(self.table_name)} AND root = {_sql(self.root)}')
            .select(["path", "page", "content_hash", "reason"])
            .limit(None)
            .to_arrow()
            .to_pylist()
        )
        self.known = {(r["path"], int(r["page"])): (r["content_hash"], r["reason"]) for r in rows}
        return self.known

    def unchanged(self, path: str, page: int, content_hash: str) -> str | None:
        """The reason an input failed, if its file has not changed since; else None."""
        hit = self.known.get((path, page))
        return hit[1] if hit and hit[0] == content_hash else None

    def record(self, entries: list[tuple[str, int, str, str]]) -> None:
        """Remember ``(path, page, content_hash, reason)`` entries (one commit)."""
        if not entries or not self.enabled:
            return
        now = dt.datetime.now(dt.UTC)
        data = pa.Table.from_pylist(
            [
                {
                    "table": self.table_name,
                    "root": self.root,
                    "path": p,
                    "page": int(pg),
                    "content_hash": h,
                    "reason": r,
                    "failed_at": now,
                }
                for p, pg, h, r in entries
            ],
            schema=SCHEMA,
        )
        t = self._table(create=True)
        (
            t.merge_insert(["table", "root", "path", "page"])
            .when_matched_update_all()
            .when_not_matched_insert_all()
            .execute(data)
        )
        for p, pg, h, r in entries:
            self.known[(p, int(pg))] = (h, r)

    def forget(self, keys: list[tuple[str, int]]) -> None:
        """Drop the entries of inputs that were embedded or pruned (only those remembered)."""
        keys = [k for k in keys if k in self.known]
        if not keys:
            return
        t = self._table(create=False)
        for i in range(0, len(keys), 200):
            chunk = keys[i : i + 200]
            cond = " OR ".join(f"(path = {_sql(p)} AND page = {int(pg)})" for p, pg in chunk)
            t.delete(f'"table" = {_sql(self.table_name)} AND root = {_sql(self.root)} AND ({cond})')
        for k in keys:
            self.known.pop(k, None)


__all__ = ["FailureLog", "TABLE"]
