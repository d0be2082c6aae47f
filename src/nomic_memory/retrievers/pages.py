"""What both retrievers return, framework aside: the hits of :meth:`Index.search` with each page's
image (a JPEG, base64) read through the store's rows only (:mod:`nomic_memory.serve.thumbs`)."""

from __future__ import annotations

import base64
from dataclasses import dataclass

from nomic_memory.errors import MissingExtra
from nomic_memory.search.index import Hit, Index
from nomic_memory.serve.thumbs import PageUnavailable, page_file, thumbnail

IMAGE_SIDE = 768  # the long side of a page image, pixels


@dataclass
class Page:
    """One result: the hit, and its page image (None, with the reason, when the file cannot be read)."""

    hit: Hit
    image_base64: str | None
    image_error: str | None = None

    def metadata(self) -> dict:
        h = self.hit
        meta = {
            "path": h.path,
            "root": h.root,
            "page": h.page,
            "score": h.score,
            "rank": h.rank,
            "id": h.id,
            "file": h.file,
        }
        if self.image_error:
            meta["image_error"] = self.image_error
        return meta

    def text(self) -> str:
        """A one-line description of the page (frameworks want text content)."""
        h = self.hit
        return f"{h.path}" + (f" (page {h.page})" if h.page else "")


def missing_extra(retriever: str, package: str, extra: str, error: ImportError) -> MissingExtra:
    """The one-line error of a retriever whose framework is not installed: ``package`` comes with
    the ``extra`` of nomic-memory."""
    return MissingExtra(
        f"the {retriever} retriever needs {package}: pip install 'nomic-memory[{extra}]' "
        f"(or uv sync --extra {extra}) ({error})"
    )


def open_index(store, table: str | None = None, **kwargs) -> Index:
    """``store`` as an :class:`Index` (an Index, a store path, or None for the default store)."""
    if isinstance(store, Index):
        return store
    return Index.open(store, table, **kwargs)


def search_pages(
    index: Index, query: str, k: int, *, where: str | None = None, images: bool = True, image_side: int = IMAGE_SIDE
) -> list[Page]:
    """The ``k`` best pages for ``query`` (exactly :meth:`Index.search`), with their images."""
    out = []
    for h in index.search(query, k, where=where):
        if not images:
            out.append(Page(h, None))
            continue
        try:
            out.append(Page(h, base64.b64encode(page_jpeg(index, h.id, image_side)).decode()))
        except PageUnavailable as e:
            out.append(Page(h, None, str(e)))
    return out


def page_jpeg(index: Index, row_id: str, side: int = IMAGE_SIDE) -> bytes:
    """JPEG bytes of a stored page (long side at most ``side``), if its file is still inside its root."""
    row = index.row(row_id)
    if row is None:
        raise PageUnavailable(f"no page with id {row_id}")
    page_file(row)
    return thumbnail(index.store, index.table.name, row_id, row, side=side)


__all__ = ["IMAGE_SIDE", "Page", "missing_extra", "open_index", "page_jpeg", "search_pages"]
