"""Queries of either kind, in one call: what :meth:`nomic_memory.search.Index.embed_queries` and
:meth:`nomic_memory.api.Embedder.embed_queries` share.

The one rule, wherever a query is taken:
* a ``str`` is a **text** query (embedded with ``process_queries``, after the template);
* an ``os.PathLike`` (``pathlib.Path``) or a ``PIL.Image.Image`` is an **image** query, embedded
  as a stored image is.  A path may name a PDF or a multi-page TIFF: ``Path("report.pdf#3")`` is its
  page 3, ``Path("report.pdf")`` its page 1 (:mod:`nomic_memory.ingest.pageref`).

Anything else is refused (:class:`~nomic_memory.errors.WrongTypeError`), so that a path passed as a
``str`` is never silently searched for as text by one method and as an image by another.
"""

from __future__ import annotations

import os

import numpy as np
from PIL import Image

from nomic_memory.errors import WrongTypeError
from nomic_memory.ingest.pageref import page_ref_task
from nomic_memory.model.embed import embed_inputs
from nomic_memory.model.encode import embed_queries
from nomic_memory.model.loading import LoadedModel


def is_text_query(q) -> bool:
    return isinstance(q, str)


def is_image_query(q) -> bool:
    return isinstance(q, (os.PathLike, Image.Image))


def check_queries(queries: list) -> None:
    """:class:`WrongTypeError` for an item that is neither a text nor an image query."""
    for q in queries:
        if not (is_text_query(q) or is_image_query(q)):
            raise WrongTypeError(f"a query is a str (text), a pathlib.Path or a PIL image, not {type(q).__name__}")


def embed_any_queries(
    lm: LoadedModel, queries: list, *, template: str | None = None, batch_size: int = 16
) -> list[np.ndarray]:
    """float32 numpy embeddings of text and image queries, in input order (see the module docstring)."""
    check_queries(queries)
    out: list[np.ndarray | None] = [None] * len(queries)
    texts = [i for i, q in enumerate(queries) if is_text_query(q)]
    images = [i for i, q in enumerate(queries) if not is_text_query(q)]
    if texts:
        for i, e in zip(texts, embed_queries(lm, [queries[i] for i in texts], batch_size, template=template)):
            out[i] = e.float().numpy()
    if images:
        ip = lm.processor.image_processor
        inputs = [queries[i] if isinstance(queries[i], Image.Image) else page_ref_task(queries[i], ip) for i in images]
        for i, e in zip(images, embed_inputs(lm, inputs, batch_size)):
            out[i] = np.asarray(e, dtype=np.float32)
    return out  # type: ignore[return-value]


__all__ = ["check_queries", "embed_any_queries", "is_image_query", "is_text_query"]
