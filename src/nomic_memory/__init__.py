"""nomic-memory: embed image folders with Nomic's multimodal retrievers, store, search, measure."""

__version__ = "0.1.0"

__all__ = ["Embedder", "Index", "Store", "default_store_path", "__version__"]


def __getattr__(name: str):
    # Lazy: importing torch/transformers takes seconds; `nomic-memory --help` and export need neither.
    if name == "Embedder":
        from .api import Embedder

        return Embedder
    if name == "Index":
        from .search import Index

        return Index
    if name in ("Store", "default_store_path"):
        from . import store

        return getattr(store, name)
    raise AttributeError(name)
