"""A LangChain retriever over a store (``pip install 'nomic-memory[langchain]'``).

>>> from nomic_memory.retrievers.langchain import NomicMemoryRetriever
>>> retriever = NomicMemoryRetriever.from_store("~/my-store", k=4)
>>> docs = retriever.invoke("the invoice from March")
>>> docs[0].metadata["path"], docs[0].metadata["score"], docs[0].metadata["image_base64"][:20]

Each ``Document`` is one page: ``page_content`` names it (its path and page), ``metadata`` holds
``path``, ``root``, ``page``, ``score``, ``rank``, ``id``, ``file`` and the page image as
``image_base64`` (JPEG, ``image_mime_type``), for a multimodal model to read.
"""

from __future__ import annotations

from typing import Any

from nomic_memory.retrievers.pages import IMAGE_SIDE, missing_extra, open_index, search_pages

try:
    from langchain_core.callbacks import CallbackManagerForRetrieverRun
    from langchain_core.documents import Document
    from langchain_core.retrievers import BaseRetriever
    from pydantic import ConfigDict
except ImportError as e:  # an optional extra
    raise missing_extra("LangChain", "langchain-core", "langchain", e) from None


class NomicMemoryRetriever(BaseRetriever):
    """The ``k`` best pages of a store for a text query, as LangChain documents."""

    model_config = ConfigDict(arbitrary_types_allowed=True)

    index: Any  # a nomic_memory.search.Index
    k: int = 4
    where: str | None = None  # an SQL filter over path, root, page, mtime, size, width, height
    images: bool = True  # attach each page's image (base64 JPEG)
    image_side: int = IMAGE_SIDE

    @classmethod
    def from_store(
        cls, store=None, table: str | None = None, *, backend: str = "auto", model=None, **kwargs
    ) -> NomicMemoryRetriever:
        """A retriever over ``table`` of ``store`` (default: the default store's only table);
        ``model``: an already-loaded ``Embedder`` to embed queries with."""
        return cls(index=open_index(store, table, backend=backend, model=model), **kwargs)

    def _get_relevant_documents(self, query: str, *, run_manager: CallbackManagerForRetrieverRun) -> list[Document]:
        pages = search_pages(
            self.index, query, self.k, where=self.where, images=self.images, image_side=self.image_side
        )
        docs = []
        for p in pages:
            meta = p.metadata()
            if p.image_base64 is not None:
                meta.update(image_base64=p.image_base64, image_mime_type="image/jpeg")
            docs.append(Document(page_content=p.text(), metadata=meta, id=p.hit.id))
        return docs


__all__ = ["NomicMemoryRetriever"]
