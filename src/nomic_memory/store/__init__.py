"""The store: LanceDB tables of embeddings, remembered failures, verification and export.

The public names live in :mod:`nomic_memory.store.table` and are re-exported here
(``from nomic_memory.store import Store``)."""

from nomic_memory.store.table import (
    EmbeddingTable,
    Record,
    Store,
    TableInfo,
    default_store_path,
    embedding_to_numpy,
)

__all__ = ["EmbeddingTable", "Record", "Store", "TableInfo", "default_store_path", "embedding_to_numpy"]
