"""Pages of documents (PDFs, multi-page TIFFs): count and size them, then draw one at a time.

A document is embedded page by page: page ``0`` is a plain image file (one row), pages
``1..N`` are the pages of a PDF or of a TIFF with more than one frame.  The run driver needs
two things from this module, at two different moments:
* **before anything is drawn** (scan/plan): :func:`list_pages` gives every page's size, read
  with PDFium's page-size API (no page content is parsed, nothing is rasterised) or from each
  TIFF frame's header, so visual tokens can be counted and batches planned for a 2,000-page
  PDF as cheaply as for a folder of JPEGs.  :func:`render_size` turns a page's size into the
  exact pixel size the model's processor will use.
* **in a decode worker**: :func:`render_page` rasterises one PDF page *directly at that
  size* (never at a fixed DPI followed by a downscale: a 200 DPI A4 page is 1654 x 2339 px,
  several times what the model keeps, and a poster-sized page would be gigapixels), and
  :func:`load_page` does the same for any paged file (TIFF frames go through
  :func:`nomic_memory.ingest.images.load_image`).

Pages are drawn in renderer processes (:mod:`nomic_memory.ingest.renderer`), each with a memory
and a time limit, so a page that allocates without bound, never finishes or crashes PDFium costs
that page only; :func:`render_page` is the one way to draw a page, :func:`draw_page_here` what a
renderer runs.  PDFium is not thread-safe, so every call into it in one process is serialised by
one lock.  A renderer keeps at most one document open (the last one it drew from, keyed by path,
size and modification time), so consecutive pages of the same file do not re-parse its
cross-reference table, while pages themselves are loaded and closed one by one: memory does not
grow with the page count.

PDFs are drawn as a viewer shows them: white paper, the page's ``/Rotate``, annotation
appearances (form fields included).  Nothing is executed or followed: this PDFium build has no
JavaScript engine, and embedded files, links and actions are never touched.

Per-document and per-page problems (encrypted, corrupt, no pages, a page that cannot be
loaded, an absurd render size) are :class:`DocumentError`, a
:class:`~nomic_memory.errors.InputError`: the run records the file (and page) and goes on.
"""

from __future__ import annotations

import atexit
import logging
import math
import os
import threading
from dataclasses import dataclass

from PIL import Image

from nomic_memory.errors import InputError
from nomic_memory.ingest.batching import target_size
from nomic_memory.ingest.images import (
    DEFAULT_MAX_IMAGE_PIXELS,
    ImageError,
    is_image_path,
    load_image,
    open_regular,
    oriented_size,
    os_error_reason,
    register_plugins,
)
from nomic_memory.ingest.notices import decode_warnings, one_line
from nomic_memory.ingest.pdf_images import damaged_images
from nomic_memory.ingest.renderer import RenderFailure
from nomic_memory.ingest.renderer import pool as renderer_pool

log = logging.getLogger("nomic_memory")

__all__ = [
    "DOCUMENT_EXTENSIONS",
    "PAGED_IMAGE_EXTENSIONS",
    "DocumentError",
    "PageGeometry",
    "close_cached_document",
    "draw_page_here",
    "is_document_path",
    "is_input_path",
    "list_pages",
    "load_page",
    "may_have_pages",
    "render_page",
    "render_size",
]

#: File name endings of documents, whose pages are always embedded as pages 1..N.
DOCUMENT_EXTENSIONS = (".pdf",)
#: Image formats that may hold several pages; only those with more than one are documents.
PAGED_IMAGE_EXTENSIONS = (".tif", ".tiff")

#: Pages whose long side is more than this times the short side are padded with white to this
#: ratio, as :func:`nomic_memory.ingest.images.pad_extreme_aspect` does for images: Qwen's
#: ``smart_resize`` refuses ratios above 200.
MAX_ASPECT = 200.0 * 0.9

# PDFium keeps global state and is not thread-safe: one lock for every call into it.
_PDFIUM_LOCK = threading.RLock()
# The one document this process keeps open: (key, PdfDocument) or None.
_cached: tuple[tuple, object] | None = None
_atexit_registered = False

_OPEN_ERRORS = {  # PDFium's FPDF_GetLastError codes after a failed open
    1: "cannot open PDF (unknown error)",
    2: "cannot read file",
    3: "corrupt or not a PDF (cannot parse it)",
    4: "encrypted PDF (password required)",
    5: "unsupported PDF security handler",
}


class DocumentError(InputError):
    """A document, or one page of it, cannot be embedded (``page`` says which, if one)."""


@dataclass(frozen=True)
class PageGeometry:
    """One page's displayed size, known before it is drawn.

    ``width`` and ``height`` are pixels at 72 dpi: PDF points after the page's ``/Rotate``
    (PDFium's page size), or a TIFF frame's pixel size after its EXIF orientation.  ``error``
    is set (and the size is 0 x 0) for a page whose size cannot be read: that page will not
    render either, and the driver can report it without trying.
    """

    page: int
    width: float
    height: float
    error: str | None = None


# --------------------------------------------------------------------------- names
def is_document_path(path: str | os.PathLike[str]) -> bool:
    """True when the file name ends with one of :data:`DOCUMENT_EXTENSIONS` (any case)."""
    return os.fspath(path).lower().endswith(DOCUMENT_EXTENSIONS)


def is_input_path(path: str | os.PathLike[str]) -> bool:
    """True for anything embeddable by name: an image or a document (for ``discover_images``)."""

    return is_image_path(path) or is_document_path(path)


def may_have_pages(path: str | os.PathLike[str]) -> bool:
    """True for names whose file may hold several pages (PDF, TIFF): call :func:`list_pages`.

    Looks at the name only, so the inspection knows which files need the (cheap) page listing.
    """
    return os.fspath(path).lower().endswith(DOCUMENT_EXTENSIONS + PAGED_IMAGE_EXTENSIONS)


# --------------------------------------------------------------------------- PDFium access
def _pdfium():
    import pypdfium2 as pdfium

    return pdfium


def _file_key(path: str | os.PathLike[str]) -> tuple:
    """(real path, size, mtime): a changed file is reopened, never served from the cache."""
    real = os.path.realpath(os.fspath(path))
    try:
        st = os.stat(real)
    except OSError as exc:
        raise DocumentError(path, os_error_reason(exc)) from None
    if not os.path.isfile(real):
        raise DocumentError(path, "not a regular file")
    if st.st_size == 0:
        raise DocumentError(path, "empty file")
    return real, st.st_size, st.st_mtime_ns


def _open_pdf(path: str | os.PathLike[str], key: tuple):
    """Open a PDF with PDFium (caller holds the lock), mapping failures to clear reasons."""
    pdfium = _pdfium()
    import pypdfium2.raw as c

    try:  # PDFium reports an unreadable file only as "cannot open"; a FIFO would block it for ever
        fp, _size = open_regular(key[0])
    except ImageError as exc:
        raise DocumentError(path, exc.reason) from None
    with fp:
        # PDFium opens by name: through the descriptor just checked to be a regular file where
        # the system can (the same file, even if the name now points to a FIFO).
        by_fd = f"/proc/self/fd/{fp.fileno()}"
        name = os.fsencode(by_fd if os.path.exists(by_fd) else key[0])
        # The raw open, not PdfDocument(path): pypdfium2 reports a document without pages as a
        # failed open, with PDFium's *previous* error code (it is not reset on success).
        raw = c.FPDF_LoadDocument(name + b"\0", None)
    if not raw:
        code = c.FPDF_GetLastError()
        raise DocumentError(path, _OPEN_ERRORS.get(code, f"cannot open PDF (PDFium error {code})"))
    pdf = pdfium.PdfDocument(raw)
    if len(pdf) < 1:
        pdf.close()
        raise DocumentError(path, "PDF has no pages")
    try:
        # The form environment draws form fields (their values) as viewers do; without it only
        # fields that carry a ready-made appearance show.  This PDFium build has no JavaScript
        # or XFA engine, so initialising forms runs no document code.
        pdf.init_forms()
    except pdfium.PdfiumError:
        pass  # drawn without form fields rather than not at all
    return pdf


def _document(path: str | os.PathLike[str], *, cache: bool):
    """The open document for ``path`` (caller holds the lock); reuses the cached one if current."""
    global _cached
    key = _file_key(path)
    if _cached is not None and _cached[0] == key:
        return _cached[1]
    if not cache:
        return _open_pdf(path, key)
    close_cached_document()
    pdf = _open_pdf(path, key)
    if not _atexit_registered:
        _register_atexit()
    _cached = (key, pdf)
    return pdf


def _register_atexit() -> None:
    """Close the cached document at exit, before pypdfium2's own exit check warns about it.

    Exit handlers run last-registered first, and pypdfium2 registers its check when imported,
    so this must be registered after that import (it is: a document is open by now)."""
    global _atexit_registered
    atexit.register(close_cached_document)
    _atexit_registered = True


def close_cached_document() -> None:
    """Close the document this process keeps open (if any); the next call reopens as needed."""
    global _cached
    with _PDFIUM_LOCK:
        if _cached is not None:
            _cached[1].close()
            _cached = None


# --------------------------------------------------------------------------- listing
def list_pages(path: str | os.PathLike[str]) -> list[PageGeometry]:
    """The pages of a document (numbered from 1) and their sizes, without drawing any.

    * PDF: one :class:`PageGeometry` per page, in points after ``/Rotate`` (PDFium's
      ``FPDF_GetPageSizeByIndexF``, which reads the page's boxes but not its content).
    * TIFF with more than one frame: one per frame, in pixels after EXIF orientation.
    * Anything else, a single-frame TIFF included: ``[]`` - not a document; the file is one
      image, page 0.

    Raises:
        DocumentError: the document cannot be opened (encrypted, corrupt, no pages, ...).
        nomic_memory.ingest.images.ImageError: a TIFF whose header cannot be read.
    """
    if is_document_path(path):
        return _list_pdf_pages(path)
    if os.fspath(path).lower().endswith(PAGED_IMAGE_EXTENSIONS):
        return _list_image_frames(path)
    return []


def _list_pdf_pages(path) -> list[PageGeometry]:
    pdfium = _pdfium()
    with _PDFIUM_LOCK:
        pdf = _document(path, cache=False)
        try:
            pages = []
            for index in range(len(pdf)):
                try:
                    w, h = pdf.get_page_size(index)
                except pdfium.PdfiumError:
                    pages.append(PageGeometry(index + 1, 0.0, 0.0, "page cannot be read (damaged page)"))
                    continue
                if not (math.isfinite(w) and math.isfinite(h) and w > 0 and h > 0):
                    pages.append(PageGeometry(index + 1, 0.0, 0.0, f"invalid page size {w} x {h}"))
                    continue
                pages.append(PageGeometry(index + 1, float(w), float(h)))
        finally:
            if _cached is None or _cached[1] is not pdf:
                pdf.close()
    return pages


def _list_image_frames(path) -> list[PageGeometry]:
    register_plugins()
    fp, _size = open_regular(path)  # never a FIFO swapped in after the listing
    try:
        with fp, decode_warnings(path, report=False), Image.open(fp) as im:  # decoding reports them
            frames = getattr(im, "n_frames", 1)
            if frames <= 1:
                return []
            pages = []
            for frame in range(frames):
                im.seek(frame)  # frame headers only, no pixel data
                w, h = oriented_size(im)
                pages.append(PageGeometry(frame + 1, float(w), float(h)))
            return pages
    except OSError as exc:
        raise ImageError(path, f"cannot read pages: {one_line(exc)}") from None
    except Exception as exc:  # noqa: BLE001 - Pillow raises many kinds on bad headers
        raise ImageError(path, f"truncated or corrupt image data: {one_line(exc)}") from None


# --------------------------------------------------------------------------- sizes
def _padded(width: float, height: float) -> tuple[float, float]:
    """The page's canvas: the page itself, or padded with white to :data:`MAX_ASPECT`."""
    long, short = max(width, height), min(width, height)
    if long / short <= MAX_ASPECT:
        return width, height
    short = long / MAX_ASPECT
    return (width, short) if width >= height else (short, height)


def render_size(geometry: PageGeometry, image_processor) -> tuple[int, int]:
    """(width, height) in pixels to render this page at: what the processor keeps of it.

    The page's shape (after padding pages thinner than 1:180 with white, as images are) scaled
    so that the model's visual-token budget decides the pixels, not a DPI: a page's size in
    points is 72 dpi, at which an A4 page would get 640 of 768 tokens and small text would be
    lost; then the processor's ``smart_resize`` target, so the processor itself has nothing
    left to resize.  The visual tokens are ``batching.visual_tokens(*render_size(...), ip)``.

    Raises:
        ValueError: the geometry has an ``error`` or no area (check ``geometry.error`` first).
    """

    if geometry.error or not (geometry.width > 0 and geometry.height > 0):
        raise ValueError(f"page {geometry.page} has no usable size: {geometry.error or 'zero area'}")
    cw, ch = _padded(geometry.width, geometry.height)
    size = image_processor.size
    budget = size.get("longest_edge") if hasattr(size, "get") else size["longest_edge"]
    scale = max(1.0, (budget / (cw * ch)) ** 0.5)
    cw, ch = cw * scale, ch * scale
    # Whole pixels for smart_resize, which rounds to its 28 px grid anyway.
    th, tw = target_size(max(1, round(cw)), max(1, round(ch)), image_processor)
    return tw, th


# --------------------------------------------------------------------------- rendering
def render_page(
    path: str | os.PathLike[str],
    page: int,
    size: tuple[int, int],
    *,
    max_pixels: int = DEFAULT_MAX_IMAGE_PIXELS,
) -> Image.Image:
    """Draw page ``page`` (1-based) of a PDF as an RGB image of exactly ``size`` = (w, h).

    The one way nomic-memory draws a PDF page (runs, the API, the server's thumbnails and
    heatmaps): in a renderer process (:mod:`nomic_memory.ingest.renderer`) with a memory and a
    time limit, so a page that allocates without bound, draws for ever or crashes PDFium costs
    that page only.  Drawing itself is :func:`draw_page_here`.  Damaged images the page holds
    (a JBIG2 or JPX image that cannot be decoded, drawn blank) are logged as one warning line.
    A renderer keeps its last document open, so the pages of one document are drawn without
    reopening it.

    Raises:
        DocumentError: the document cannot be opened, has no such page, the page cannot be
            loaded or drawn (``page`` set; the other pages still render), ``size`` is invalid,
            or the page exceeded the renderer's memory or time limit.
    """
    _check_size(path, page, size, max_pixels)
    real = os.path.realpath(os.fspath(path))
    try:
        reply = renderer_pool().call(real, ("draw", os.fspath(path), page, tuple(int(v) for v in size), max_pixels))
    except RenderFailure as e:
        raise DocumentError(path, e.reason, page=page) from None
    if reply[0] != "ok":
        raise DocumentError(path, reply[1], page=page)
    _, mode, got, pixels, notes = reply
    for note in notes:
        log.warning("%s (page %d): %s", path, page, note)
    return Image.frombytes(mode, got, pixels)


def _check_size(path, page: int, size: tuple[int, int], max_pixels: int) -> tuple[int, int]:
    width, height = (int(v) for v in size)
    if width < 1 or height < 1:
        raise DocumentError(path, f"invalid render size {width} x {height}", page=page)
    if width * height > max_pixels:
        raise DocumentError(path, f"render size {width} x {height} pixels exceeds limit {max_pixels}", page=page)
    return width, height


def draw_page_here(
    path: str | os.PathLike[str],
    page: int,
    size: tuple[int, int],
    *,
    max_pixels: int = DEFAULT_MAX_IMAGE_PIXELS,
) -> tuple[Image.Image, list[str]]:
    """Draw a page in *this* process (what a renderer process runs; see :func:`render_page`):
    ``(RGB image of exactly size, notes)``, the notes naming damaged images on the page.

    The page is scaled straight to ``size`` (from :func:`render_size`): no full-resolution
    bitmap ever exists, so a 200 x 200 inch poster costs what an A4 page costs.  Pages padded
    by :func:`render_size` are centred on white.  ``size`` itself is bounded by
    ``max_pixels`` before the bitmap is allocated.  The document stays open for the next call
    (one document per process)."""
    width, height = _check_size(path, page, size, max_pixels)
    pdfium = _pdfium()
    with _PDFIUM_LOCK:
        pdf = _document(path, cache=True)
        count = len(pdf)
        if not 1 <= page <= count:
            raise DocumentError(path, f"no page {page} (the document has {count})", page=page)
        try:
            pdf_page = pdf[page - 1]
        except pdfium.PdfiumError:
            raise DocumentError(path, "page cannot be loaded (damaged page)", page=page) from None
        try:
            return _draw(pdf_page, width, height), damaged_images(pdf_page)
        except ValueError as exc:
            raise DocumentError(path, f"page cannot be drawn: {exc}", page=page) from None
        finally:
            pdf_page.close()


def _draw(pdf_page, width: int, height: int) -> Image.Image:
    """Rasterise an open page into a white ``width`` x ``height`` RGB bitmap (lock held)."""
    import pypdfium2.raw as c

    pw, ph = pdf_page.get_size()
    if not (pw > 0 and ph > 0):
        raise ValueError("page has no area")
    cw, ch = _padded(pw, ph)
    sx, sy = width / cw, height / ch
    # The page's box inside the bitmap: all of it, or centred when the canvas is padded.
    box_w, box_h = max(1, round(pw * sx)), max(1, round(ph * sy))
    x0, y0 = (width - box_w) // 2, (height - box_h) // 2
    bitmap = _pdfium().PdfBitmap.new_native(width, height, c.FPDFBitmap_BGR, rev_byteorder=True)
    try:
        bitmap.fill_rect((255, 255, 255, 255), 0, 0, width, height)
        # FPDF_ANNOT: annotation appearances (as viewers show them); REVERSE_BYTE_ORDER: RGB.
        flags = c.FPDF_ANNOT | c.FPDF_REVERSE_BYTE_ORDER
        c.FPDF_RenderPageBitmap(bitmap.raw, pdf_page.raw, x0, y0, box_w, box_h, 0, flags)
        if pdf_page.formenv:  # form fields on top, as pypdfium2's own render does
            c.FPDF_FFLDraw(pdf_page.formenv, bitmap.raw, pdf_page.raw, x0, y0, box_w, box_h, 0, flags)
        return bitmap.to_pil().convert("RGB")  # a copy: the buffer goes with the bitmap
    finally:
        bitmap.close()


def load_page(
    path: str | os.PathLike[str],
    page: int,
    size: tuple[int, int] | None = None,
    *,
    max_pixels: int = DEFAULT_MAX_IMAGE_PIXELS,
) -> Image.Image:
    """Page ``page`` of any file as RGB: PDF pages drawn at ``size``; image frames decoded.

    For a PDF, ``size`` is required (see :func:`render_page`).  For an image file (page 0)
    or a TIFF page (``page >= 1``), the frame goes through
    :func:`nomic_memory.ingest.images.load_image` with every image conversion, then, if ``size`` is
    given and differs, is resized to it (bicubic).
    """
    if is_document_path(path):
        if size is None:
            raise ValueError("a PDF page needs a render size")
        return render_page(path, page, size, max_pixels=max_pixels)
    img = load_image(path, max_image_pixels=max_pixels, page=page or None)
    if size is not None and img.size != tuple(size):
        img = img.resize(tuple(size), Image.Resampling.BICUBIC, reducing_gap=3.0)
    return img
