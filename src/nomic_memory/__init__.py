"""nomic-memory: embed image folders with Nomic's multimodal retrievers, store, search, measure."""

__version__ = "0.1.0"

__all__ = ["Embedder", "Index", "Store", "default_store_path", "__version__"]


def __getattr__(name: str):
    # Lazy: importing torch/transformers takes seconds; `nomic-memory --help` and export need neither.
    if name == "Embedder":
        from nomic_memory.api import Embedder  # late: the facade imports torch only for what is used

        return Embedder
    if name == "Index":
        from nomic_memory.search.index import Index  # late: see above

        return Index
    if name in ("Store", "default_store_path"):
        from nomic_memory.store import table  # late: see above

        return getattr(table, name)
    raise AttributeError(name)
