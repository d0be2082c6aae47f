"""A page of a document as one image: ``report.pdf#3`` (page 3), or ``report.pdf`` (page 1).

Wherever one image is expected - an image query in ``nomic-memory search --image``, in
:meth:`nomic_memory.search.Index.search`, in the server - a PDF or a multi-page TIFF stands for
one of its pages.  The reference is the file name, optionally followed by ``#N`` (pages are
numbered from 1, as the store numbers them); a file whose name really ends in ``#N`` is taken
whole when it exists.

:func:`split_page_ref` only parses; :func:`resolve_page_ref` checks the file and the page (cheap:
page counts are read without drawing anything); :func:`page_ref_task` gives the decode task that
draws that page at the size the model's processor keeps, exactly as a run draws it.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from nomic_memory.errors import InputError
from nomic_memory.ingest.decode import DecodeTask
from nomic_memory.ingest.documents import PageGeometry, is_document_path, list_pages, may_have_pages, render_size

_PAGE_SUFFIX = re.compile(r"^(?P<path>.+)#(?P<page>\d+)$", re.DOTALL)


def split_page_ref(ref: str | os.PathLike[str]) -> tuple[Path, int | None]:
    """``"report.pdf#3"`` -> ``(Path("report.pdf"), 3)``; ``"photo.jpg"`` -> ``(Path("photo.jpg"), None)``.
    ``~`` is expanded.  A name that exists as it is (``odd#2.png``) is never split."""
    s = os.fspath(ref)
    whole = Path(s).expanduser()
    m = _PAGE_SUFFIX.match(s)
    if m is None or whole.exists():
        return whole, None
    return Path(m["path"]).expanduser(), int(m["page"])


def resolve_page_ref(ref: str | os.PathLike[str]) -> tuple[Path, int]:
    """``(file, page)`` for an image reference, checked: ``page`` 0 for an image file, 1..N for
    a page of a document (1 when no ``#N`` is given).  :class:`InputError` naming the file: no
    such file, a page number on a file that has no pages, a page beyond the last."""
    path, page = split_page_ref(ref)
    if not path.is_file():
        raise InputError(path, "no such file" if not path.exists() else "not a regular file")
    pages = list_pages(path) if may_have_pages(path) else []  # a broken document raises its InputError
    if not pages:
        if page is not None and page != 1:
            raise InputError(path, f"has no pages (#{page} names a page of a PDF or multi-page TIFF)")
        return path, 0
    page = 1 if page is None else page
    if not 1 <= page <= len(pages):
        raise InputError(path, f"has {len(pages)} pages: #{page} is not one of them (pages are numbered from 1)")
    if pages[page - 1].error:
        raise InputError(path, pages[page - 1].error, page=page)
    return path, page


def page_task(path: Path, geometry: PageGeometry, image_processor) -> DecodeTask:
    """The decode task of one page: a PDF page drawn at the size the processor keeps (its size
    rounded as the inspection rounds it, so the drawing is the run's), a TIFF frame as it is."""
    g = PageGeometry(geometry.page, max(1, round(geometry.width)), max(1, round(geometry.height)))
    w, h = render_size(g, image_processor) if is_document_path(path) else (0, 0)
    return DecodeTask(path, g.page, None, w, h)


def page_ref_task(ref: str | os.PathLike[str], image_processor) -> DecodeTask:
    """The decode task of the image a reference names (:func:`resolve_page_ref`)."""
    path, page = resolve_page_ref(ref)
    if page == 0:
        return DecodeTask(path)
    return page_task(path, list_pages(path)[page - 1], image_processor)


__all__ = ["page_ref_task", "page_task", "resolve_page_ref", "split_page_ref"]
