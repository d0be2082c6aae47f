"""Retrieval: exact MaxSim / dot-product scoring, approximate candidates, and :class:`Index`,
the searchable view of one store table.

The public names live in :mod:`nomic_memory.search.index` and are re-exported here
(``from nomic_memory.search import Index``)."""

from nomic_memory.search.index import WHERE_COLUMNS, Hit, Index, row_id

__all__ = ["WHERE_COLUMNS", "Hit", "Index", "row_id"]
