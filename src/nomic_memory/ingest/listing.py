"""Listing what a folder holds, before anything is decoded: each file's size, content hash and
the geometry of what will be embedded (one image, or the pages of a document).

Everything the run plans (which inputs are unchanged and skipped, each input's visual tokens,
the batches) comes from here, so no pixel is decoded for a file that needs no embedding and every
batch is known up front.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from PIL import Image

from nomic_memory.errors import InputError
from nomic_memory.ingest.documents import is_document_path, list_pages, may_have_pages
from nomic_memory.ingest.images import (
    ImageError,
    hash_file,
    open_regular,
    oriented_size,
    os_error_reason,
    register_plugins,
)
from nomic_memory.ingest.notices import decode_warnings


@dataclass
class Item:
    """One thing that becomes one stored row: an image file (``page`` 0) or one page of a
    document (``page`` 1..N).  ``width``/``height`` are what the processor will resize from
    (after EXIF orientation); 0 when unknown until decoded."""

    file: SourceFile
    page: int = 0
    width: int = 0
    height: int = 0
    tokens: int = 0
    pdf: bool = False  # a PDF page: ``width``/``height`` become the size it is drawn at (plan)

    @property
    def path(self) -> Path:
        return self.file.path

    @property
    def rel(self) -> str:
        return self.file.rel

    @property
    def label(self) -> str:
        """How the item is named to the user: ``dir/file.png`` or ``dir/report.pdf#3``."""
        return self.file.rel if not self.page else f"{self.file.rel}#{self.page}"


@dataclass
class SourceFile:
    """A file found under the embedded directory."""

    path: Path
    rel: str  # relative to the embedded directory, POSIX separators
    size: int = 0
    mtime: float = 0.0
    content_hash: str = ""
    error: str | None = None  # why the file cannot be read at all
    items: list[Item] = field(default_factory=list)
    page_errors: list[tuple[int, str]] = field(default_factory=list)  # pages that cannot be sized


def _image_geometry(path: Path) -> tuple[int, int]:
    """Width and height as the model will see them (EXIF orientation applied), from the header
    only; (0, 0) when the header cannot be read (decoding then names the precise reason)."""

    register_plugins()
    try:
        f, _ = open_regular(path)  # the same checks as every read: never a FIFO swapped in
        with f, decode_warnings(path, report=False), Image.open(f) as im:  # decoding reports them
            return oriented_size(im)
    except Exception:
        return 0, 0


def _pages(sf: SourceFile) -> bool:
    """The pages of a document (PDF, multi-page TIFF) as items; False when it is one image."""

    if not may_have_pages(sf.path):
        return False
    try:
        pages = list_pages(sf.path)
    except InputError as e:
        sf.error = e.reason
        return True
    if not pages:  # a single-frame TIFF: one image
        return False
    pdf = is_document_path(sf.path)
    for g in pages:
        if g.error:
            sf.page_errors.append((g.page, g.error))
        else:
            sf.items.append(Item(sf, g.page, max(1, round(g.width)), max(1, round(g.height)), pdf=pdf))
    return True


def inspect_file(path: Path, root: Path) -> SourceFile:
    """Stat, hash and measure one file (never raises: a problem is recorded in ``error``)."""

    sf = SourceFile(path, path.relative_to(root).as_posix())
    try:
        st = path.stat()
        sf.content_hash, sf.size = hash_file(path)  # regular files only, bounded reads
    except ImageError as e:
        sf.error = e.reason
        return sf
    except OSError as e:
        sf.error = os_error_reason(e)
        return sf
    sf.mtime = st.st_mtime
    if not _pages(sf):
        w, h = _image_geometry(path)
        sf.items = [Item(sf, 0, w, h)]
    return sf


def inspect_files(paths: list[Path], root: Path, threads: int = 8) -> list[SourceFile]:
    """:func:`inspect_file` for every path, in order (threads: hashing releases the GIL)."""
    if len(paths) < 2:
        return [inspect_file(p, root) for p in paths]
    with ThreadPoolExecutor(max_workers=min(threads, len(paths))) as ex:
        return list(ex.map(lambda p: inspect_file(p, root), paths))


__all__ = ["Item", "SourceFile", "inspect_file", "inspect_files"]
