"""Listing what a folder holds, before anything is decoded: each file's size, content hash and
the geometry of what will be embedded (one image, or the pages of a document).

Everything the run plans (which inputs are unchanged and skipped, each input's visual tokens,
the batches) comes from here, so no pixel is decoded for a file that needs no embedding and every
batch is known up front.
"""

from __future__ import annotations

import hashlib
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from PIL import Image


@dataclass
class Item:
    """One thing that becomes one stored row: an image file (``page`` 0) or one page of a
    document (``page`` 1..N).  ``width``/``height`` are what the processor will resize from
    (after EXIF orientation); 0 when unknown until decoded."""

    file: "SourceFile"
    page: int = 0
    width: int = 0
    height: int = 0
    tokens: int = 0

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


def hash_file(path: Path, chunk: int = 1 << 20) -> tuple[str, int]:
    """sha256 of the file's bytes, and how many there were."""
    h = hashlib.sha256()
    n = 0
    with open(path, "rb") as f:
        while True:
            b = f.read(chunk)
            if not b:
                break
            n += len(b)
            h.update(b)
    return h.hexdigest(), n


def _os_reason(e: OSError) -> str:
    if isinstance(e, PermissionError):
        return "permission denied"
    return e.strerror or str(e)


def _image_geometry(path: Path) -> tuple[int, int]:
    """Width and height as the model will see them (EXIF orientation applied), from the header
    only; (0, 0) when the header cannot be read (decoding then names the precise reason)."""
    try:
        with Image.open(path) as im:
            w, h = im.size
            orient = im.getexif().get(0x0112, 1) if hasattr(im, "getexif") else 1
            return (h, w) if orient in (5, 6, 7, 8) else (w, h)
    except Exception:
        return 0, 0


def scan_file(path: Path, root: Path) -> SourceFile:
    """Stat, hash and measure one file (never raises: a problem is recorded in ``error``)."""
    sf = SourceFile(path, path.relative_to(root).as_posix())
    try:
        st = path.stat()
        sf.content_hash, _ = hash_file(path)
    except OSError as e:
        sf.error = _os_reason(e)
        return sf
    sf.size, sf.mtime = st.st_size, st.st_mtime
    w, h = _image_geometry(path)
    sf.items = [Item(sf, 0, w, h)]
    return sf


def scan_files(paths: list[Path], root: Path, threads: int = 8) -> list[SourceFile]:
    """:func:`scan_file` for every path, in order (threads: hashing releases the GIL)."""
    if len(paths) < 2:
        return [scan_file(p, root) for p in paths]
    with ThreadPoolExecutor(max_workers=min(threads, len(paths))) as ex:
        return list(ex.map(lambda p: scan_file(p, root), paths))


__all__ = ["Item", "SourceFile", "hash_file", "scan_file", "scan_files"]
