"""Page images for the server: a stored row's page, decoded safely, and cached thumbnails.

Files are reached only through a row of the store (its ``root`` and ``path``), never through a
path a client sent, and the resolved file must lie inside the row's root (a symlink that leads out
of it is refused).  Thumbnails are made on first request and cached as JPEG beside a local store
(``<store>/_nomic_memory_thumbs/<table>/``) or, for an object-storage store, in a local cache
directory; the file name carries the row's content hash, so a re-embedded file gets a new one.
"""

from __future__ import annotations

import hashlib
import io
import os
from pathlib import Path

from PIL import Image

from .errors import NomicMemoryError
from .images import DEFAULT_MAX_IMAGE_PIXELS, load_image

THUMBS_DIR = "_nomic_memory_thumbs"
THUMB_SIDE = 384


class PageUnavailable(NomicMemoryError):
    """The page's file cannot be read now (moved, deleted, outside its root, undecodable)."""


def thumbs_dir(store, table: str) -> Path:
    """Where thumbnails of ``table`` are cached."""
    if store.local:
        return Path(store.path) / THUMBS_DIR / table
    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "nomic-memory" / "thumbs"
    return base / hashlib.sha256(str(store.path).encode()).hexdigest()[:16] / table


def page_file(row: dict) -> Path:
    """The file of a stored row, checked to lie inside the row's root."""
    root = Path(row["root"]).resolve()
    f = (root / row["path"]).resolve()
    if f != root and root not in f.parents:
        raise PageUnavailable(f"{row['path']} resolves outside its root {root}")
    if not f.is_file():
        raise PageUnavailable(f"{f} is no longer there")
    return f


def _document_page(f: Path, page: int, max_pixels: int) -> Image.Image:
    """Page ``page`` (1-based) of a PDF or multi-page TIFF, as RGB."""
    if f.suffix.lower() == ".pdf":
        import pypdfium2 as pdfium

        pdf = pdfium.PdfDocument(str(f))
        try:
            if not 1 <= page <= len(pdf):
                raise PageUnavailable(f"{f} has no page {page}")
            p = pdf[page - 1]
            w, h = p.get_size()  # points
            scale = min(2.0, (max_pixels / max(w * h, 1)) ** 0.5)
            return p.render(scale=scale).to_pil().convert("RGB")
        finally:
            pdf.close()
    with Image.open(f) as im:
        if im.width * im.height > max_pixels:
            raise PageUnavailable(f"{f}: image too large")
        try:
            im.seek(page - 1)
        except EOFError:
            raise PageUnavailable(f"{f} has no page {page}") from None
        return im.convert("RGB")


def load_page(row: dict, max_pixels: int = DEFAULT_MAX_IMAGE_PIXELS, target_pixels: int | None = None) -> Image.Image:
    """The row's page as an RGB image (the first frame of a plain image file); ``target_pixels``
    lets a large JPEG decode at a reduced scale (never below that many pixels)."""
    f = page_file(row)
    page = int(row.get("page") or 0)
    try:
        if page == 0:
            return load_image(f, max_image_pixels=max_pixels, target_pixels=target_pixels)
        return _document_page(f, page, max_pixels)
    except PageUnavailable:
        raise
    except NomicMemoryError as e:
        raise PageUnavailable(str(e)) from None
    except Exception as e:  # a file that changed since it was embedded
        raise PageUnavailable(f"{f}: cannot decode page {page}: {e}") from None


def thumbnail(store, table: str, row_id: str, row: dict, side: int = THUMB_SIDE) -> bytes:
    """JPEG bytes of the row's thumbnail, from the cache or made now (and cached)."""
    d = thumbs_dir(store, table)
    tag = (row.get("content_hash") or "")[:12]
    cached = d / f"{row_id}-{tag}-{side}.jpg"
    try:
        return cached.read_bytes()
    except OSError:
        pass
    img = load_page(row, target_pixels=4 * side * side)
    img.thumbnail((side, side), Image.Resampling.LANCZOS)
    buf = io.BytesIO()
    img.convert("RGB").save(buf, "JPEG", quality=85)
    data = buf.getvalue()
    try:  # a read-only store still serves thumbnails, uncached
        d.mkdir(parents=True, exist_ok=True)
        tmp = cached.with_suffix(f".tmp{os.getpid()}")
        tmp.write_bytes(data)
        os.replace(tmp, cached)
    except OSError:
        pass
    return data


__all__ = ["PageUnavailable", "thumbs_dir", "page_file", "load_page", "thumbnail", "THUMBS_DIR"]
