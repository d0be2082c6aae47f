"""Retrievers for RAG frameworks over a store: each result is one stored page, with its path, page
number, score, id and image.

* LangChain: :class:`nomic_memory.retrievers.langchain.NomicMemoryRetriever` (``pip install
  'nomic-memory[langchain]'``), a ``BaseRetriever`` returning ``Document`` objects;
* LlamaIndex: :class:`nomic_memory.retrievers.llamaindex.NomicMemoryRetriever` (``pip install
  'nomic-memory[llamaindex]'``), a ``BaseRetriever`` returning ``NodeWithScore(ImageNode)``.

Both rank exactly as :meth:`nomic_memory.search.Index.search` does (they call it); the shared part
(:mod:`.pages`) needs neither library.
"""
