"""Page images for the server: a stored row's page, decoded safely, and cached thumbnails.

Files are reached only through a row of the store (its ``root`` and ``path``), never through a
path a client sent, and the resolved file must lie inside the row's root (a symlink that leads out
of it is refused).  Thumbnails are made on first request and cached as JPEG beside a local store
(``<store>/_nomic_memory_thumbs/<table>/``) or, for an object-storage store, in a local cache
directory; the file name carries the row's content hash, so a re-embedded file gets a new one.

A page is drawn only from bytes that still hash to the row's stored ``content_hash``: a file
replaced since it was embedded (edited, or a hard link to another file swapped in, which no path
check can see) is refused with :class:`PageChanged` (a thumbnail already cached, made from the
embedded bytes, is still served).  Pages are decoded at the size they are
shown at: PDF pages drawn straight at it, large JPEGs draft-decoded (DCT scaling).

PDF pages are drawn with ``ingest.documents.load_page``, i.e. in the ingest layer's renderer
processes (memory and time limits): a page that makes PDFium allocate without bound, draw for ever
or crash costs its request only (:class:`PageUnavailable` with the reason), never the server.
"""

from __future__ import annotations

import hashlib
import io
import os
from pathlib import Path

from PIL import Image

from nomic_memory.errors import NomicMemoryError
from nomic_memory.ingest.documents import is_document_path
from nomic_memory.ingest.documents import load_page as document_page
from nomic_memory.ingest.images import (
    DEFAULT_MAX_IMAGE_PIXELS,
    ImageError,
    hash_bytes,
    hash_file,
    load_image,
    read_file_bounded,
)
from nomic_memory.locations import cache_dir

THUMBS_DIR = "_nomic_memory_thumbs"
THUMB_SIDE = 384


class PageUnavailable(NomicMemoryError):
    """The page's file cannot be read now (moved, deleted, outside its root, undecodable)."""


class PageChanged(PageUnavailable):
    """The page's file no longer holds the bytes that were embedded (its hash differs)."""


def _changed(row: dict, f: Path) -> PageChanged:
    return PageChanged(
        f"{row['path']}: the file changed since it was embedded (its content no longer matches "
        "the stored hash); run embed again to see it"
    )


def file_identity(f) -> tuple:
    """What file is at ``f`` now (inode, device, size, mtime; a symlink's target): equal only while
    it is the very same, unmodified file."""
    st = os.stat(f)
    return st.st_ino, st.st_dev, st.st_size, st.st_mtime_ns


def thumbs_dir(store, table: str) -> Path:
    """Where thumbnails of ``table`` are cached."""
    if store.local:
        return Path(store.path) / THUMBS_DIR / table
    return cache_dir() / "thumbs" / hashlib.sha256(str(store.path).encode()).hexdigest()[:16] / table


def page_file(row: dict) -> Path:
    """The file of a stored row, checked to lie inside the row's root."""
    root = Path(row["root"]).resolve()
    f = (root / row["path"]).resolve()
    if f != root and root not in f.parents:
        raise PageUnavailable(f"{row['path']} resolves outside its root {root}")
    if not f.is_file():
        raise PageUnavailable(f"{f} is no longer there")
    return f


def _fit(width: int | None, height: int | None, side: int) -> tuple[int, int]:
    """(w, h) of a ``width`` x ``height`` page scaled to fit a ``side`` x ``side`` box."""
    w, h = max(1, int(width or side)), max(1, int(height or side))
    scale = side / max(w, h)
    return max(1, round(w * scale)), max(1, round(h * scale))


def load_page(
    row: dict, size: tuple[int, int] | None = None, *, side: int = 1024, max_pixels: int = DEFAULT_MAX_IMAGE_PIXELS
) -> Image.Image:
    """The row's page as RGB, through the same readers as embedding (:mod:`.images`,
    :mod:`.documents`): a plain image file (page 0), a TIFF frame or a PDF page (1-based), only
    if the file's bytes still hash to the row's ``content_hash`` (else :class:`PageChanged`).

    ``size`` = (w, h): exactly that size (a PDF page is drawn straight at it; a large JPEG is
    draft-decoded no smaller).  Without it, a PDF page is drawn to fit ``side`` (its stored width
    and height give the aspect ratio) and a large JPEG is draft-decoded no smaller than that."""
    f = page_file(row)
    page = int(row.get("page") or 0)
    want = row.get("content_hash")
    try:
        if is_document_path(f):
            before = file_identity(f)
            if want and hash_file(f)[0] != want:
                raise _changed(row, f)
            img = document_page(f, page, size or _fit(row.get("width"), row.get("height"), side), max_pixels=max_pixels)
            if file_identity(f) != before:  # replaced while it was drawn: what was drawn is unverified
                raise _changed(row, f)
            return img
        data = read_file_bounded(f)
        if want and hash_bytes(data) != want:
            raise _changed(row, f)
        target = size[0] * size[1] if size else side * side
        img = load_image(f, data=data, max_image_pixels=max_pixels, target_pixels=target, page=page or None)
        if size is not None and img.size != tuple(size):
            img = img.resize((size[0], size[1]), Image.Resampling.BICUBIC, reducing_gap=3.0)
        return img
    except (PageUnavailable, MemoryError):
        raise
    except (ImageError, NomicMemoryError) as e:
        raise PageUnavailable(str(e)) from None
    except Exception as e:  # noqa: BLE001 - a file that changed since it was embedded
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
    img = load_page(row, side=side)
    img.thumbnail((side, side), Image.Resampling.LANCZOS)
    buf = io.BytesIO()
    # optimize + progressive: the same pixels (the same quantised coefficients, entropy-coded
    # better) in 8 % (photographic noise) to 16 % (a text page) fewer bytes than a baseline JPEG
    img.convert("RGB").save(buf, "JPEG", quality=85, optimize=True, progressive=True)
    data = buf.getvalue()
    try:  # a read-only store still serves thumbnails, uncached
        d.mkdir(parents=True, exist_ok=True)
        tmp = cached.with_suffix(f".tmp{os.getpid()}")
        tmp.write_bytes(data)
        os.replace(tmp, cached)
    except OSError:
        pass
    return data


__all__ = ["PageChanged", "PageUnavailable", "thumbs_dir", "page_file", "load_page", "thumbnail", "THUMBS_DIR"]
