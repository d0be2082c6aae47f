"""Embedding in-memory images, image files and document pages with a loaded model, in memory
(no store): what :class:`~nomic_memory.api.Embedder`, :class:`~nomic_memory.search.Index` (image
queries) and the server share.  Text queries are :func:`nomic_memory.model.encode.embed_queries`."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from nomic_memory.ingest.batching import make_batches
from nomic_memory.ingest.documents import DocumentError, list_pages, may_have_pages
from nomic_memory.ingest.pageref import page_task
from nomic_memory.model.collate import decode_and_prepare
from nomic_memory.model.encode import BatchEncoder
from nomic_memory.model.loading import LoadedModel


def document_pages(x, image_processor) -> list | None:
    """The decode tasks of a document's pages (None for anything that is one image)."""
    if not isinstance(x, (str, os.PathLike)):
        return None
    path = Path(x)
    if not may_have_pages(path):
        return None
    pages = list_pages(path)  # an unreadable document raises its InputError
    if not pages:
        return None
    for g in pages:
        if g.error:
            raise DocumentError(path, g.error, page=g.page)
    return [page_task(path, g, image_processor) for g in pages]  # drawn as embed_directory draws them


def flatten(items: list, groups: list) -> list:
    return [s for x, g in zip(items, groups) for s in (g if g is not None else [x])]


def embed_inputs(
    lm: LoadedModel, inputs: list, batch_size: int = 8, max_batch_tokens: int | None = None
) -> list[np.ndarray]:
    """Embed in-memory images and image files (decoded here, batched by token count); float32
    numpy arrays in input order."""
    prepared = [
        decode_and_prepare(lm.processor, Path(im) if isinstance(im, (str, os.PathLike)) else im) for im in inputs
    ]  # paths, PIL images, or DecodeTasks (pages of documents)
    tokens = [int(p.image_grid_thw.prod()) for p in prepared]
    encoder = BatchEncoder(lm)
    out: list[np.ndarray | None] = [None] * len(inputs)
    for b in make_batches(tokens, batch_size, max_batch_tokens):
        for i, e in zip(b, encoder([prepared[i] for i in b])):
            out[i] = e.float().numpy()
    return out  # type: ignore[return-value]
