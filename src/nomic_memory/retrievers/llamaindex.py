"""A LlamaIndex retriever over a store (``pip install 'nomic-memory[llamaindex]'``).

>>> from nomic_memory.retrievers.llamaindex import NomicMemoryRetriever
>>> retriever = NomicMemoryRetriever.from_store("~/my-store", k=4)
>>> nodes = retriever.retrieve("the invoice from March")
>>> nodes[0].score, nodes[0].node.metadata["path"], nodes[0].node.image[:20]

Each result is a ``NodeWithScore`` holding an ``ImageNode``: its ``image`` is the page (a base64
JPEG, ``image_mimetype`` ``image/jpeg``), ``image_path`` the file, ``text`` names the page, and
``metadata`` holds ``path``, ``root``, ``page``, ``score``, ``rank``, ``id`` and ``file``.
"""

from __future__ import annotations

from nomic_memory.retrievers.pages import IMAGE_SIDE, missing_extra, open_index, search_pages

try:
    from llama_index.core.retrievers import BaseRetriever
    from llama_index.core.schema import ImageNode, NodeWithScore, QueryBundle
except ImportError as e:  # an optional extra
    raise missing_extra("LlamaIndex", "llama-index-core", "llamaindex", e) from None


class NomicMemoryRetriever(BaseRetriever):
    """The ``k`` best pages of a store for a text query, as LlamaIndex image nodes."""

    def __init__(
        self,
        index,
        k: int = 4,
        *,
        where: str | None = None,
        images: bool = True,
        image_side: int = IMAGE_SIDE,
        **kwargs,
    ) -> None:
        super().__init__(**kwargs)
        self.index = index  # a nomic_memory.search.Index
        self.k = k
        self.where = where
        self.images = images
        self.image_side = image_side

    @classmethod
    def from_store(
        cls, store=None, table: str | None = None, *, backend: str = "auto", model=None, **kwargs
    ) -> NomicMemoryRetriever:
        """A retriever over ``table`` of ``store`` (default: the default store's only table);
        ``model``: an already-loaded ``Embedder`` to embed queries with."""
        return cls(open_index(store, table, backend=backend, model=model), **kwargs)

    def _retrieve(self, query_bundle: QueryBundle) -> list[NodeWithScore]:
        pages = search_pages(
            self.index, query_bundle.query_str, self.k, where=self.where, images=self.images, image_side=self.image_side
        )
        out = []
        for p in pages:
            node = ImageNode(
                id_=p.hit.id,
                text=p.text(),
                metadata=p.metadata(),
                image=p.image_base64,
                image_mimetype="image/jpeg" if p.image_base64 else None,
                image_path=p.hit.file,
            )
            out.append(NodeWithScore(node=node, score=p.hit.score))
        return out


__all__ = ["NomicMemoryRetriever"]
