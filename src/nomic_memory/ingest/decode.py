"""Decoding one input (an image file, a document's page, an in-memory image) into RGB pixels at
about the size the model's processor will resize it to.

A :class:`DecodeTask` names one input (a file, and a page for documents).  Decoding reads only
the processor's size settings (``image_processor``), never runs it: turning pixels into model
inputs is :mod:`nomic_memory.model.collate`'s job, and running decodes ahead of the model is
:mod:`nomic_memory.run.prefetch`'s.
"""

from __future__ import annotations

import logging
import os
import threading
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path

from PIL import Image

from nomic_memory.errors import InputError
from nomic_memory.ingest.batching import target_size
from nomic_memory.ingest.documents import is_document_path, render_page
from nomic_memory.ingest.images import (
    hash_file,
    image_size,
    load_image,
    load_image_hashed,
    open_regular,
    os_error_reason,
)

log = logging.getLogger("nomic_memory")

# Pre-resize in the decode worker when the source has this many times the target's pixels (or was
# draft-decoded): below that, the processor's own resize is cheap and keeps results bit-identical
# to the model card's loop.
PRERESIZE_FACTOR = 4.0


@dataclass(frozen=True)
class DecodeTask:
    """One input to decode: ``page`` 0 for an image file, 1..N for a page of a document;
    ``content_hash``, when given, is what the planner saw: decoding other bytes is an error.
    For a PDF page, ``width`` x ``height`` is the size to draw it at (the processor's target)."""

    path: Path
    page: int = 0
    content_hash: str | None = None
    width: int = 0  # the size the inspection read from the header (0: unknown), saving a second read
    height: int = 0


def decode_image(task: DecodeTask, image_processor) -> Image.Image:
    """The RGB image of one input, at most a few times the processor's target size.

    Large JPEGs are draft-decoded at 1/2-1/8 scale (never below what the model will see) and
    anything much larger than the target is resized once, on 8-bit pixels, to exactly the target:
    the processor then has no resize to do.  Below ``PRERESIZE_FACTOR`` the processor's own resize
    runs, which keeps results bit-identical to the model card's loop."""
    if task.page:
        return _decode_page(task, image_processor)
    path = task.path
    src_pixels = 0
    try:  # ask for a draft no smaller than what the model will see
        w, h = task.width, task.height
        if not (w and h):  # the header, read through the same checked open as the decode
            w, h = image_size(path) or (0, 0)
        src_pixels = w * h  # orientation only swaps the sides: the pixel count is the same
        th, tw = _safe_target(w, h, image_processor)
        target = th * tw
    except Exception:  # load_image names the precise reason
        target = None
    if task.content_hash:
        img, digest, _ = load_image_hashed(path, target_pixels=target)
        if digest != task.content_hash:
            # The stored hash must be the hash of the bytes embedded: this content was never
            # planned, so it is left to the next run (which sees its new hash).
            raise InputError(path, _CHANGED)
    else:
        img = load_image(path, target_pixels=target)
    drafted = img.width * img.height < src_pixels  # pixels differ from a full decode anyway
    return fit_to_target(img, image_processor, always=drafted)


def fit_to_target(img: Image.Image, image_processor, always: bool = False) -> Image.Image:
    """Resize once, on 8-bit pixels, to exactly the processor's target size when the image is
    more than ``PRERESIZE_FACTOR`` times larger (or ``always``): the processor then has no resize
    to do.  Smaller images are left to the processor's own resize, as the model card's loop does."""
    th, tw = target_size(img.width, img.height, image_processor)
    if (img.width, img.height) != (tw, th) and (always or img.width * img.height > PRERESIZE_FACTOR * th * tw):
        img = img.resize((tw, th), Image.Resampling.BICUBIC, reducing_gap=3.0)
    return img


_CHANGED = "the file changed while the run was in progress; the next run embeds its new content"
# Content hashes of documents this process has read, by what identifies a file's version without
# reading it: (path, size, mtime_ns, ctime_ns, inode).  A document's pages are decoded one by one,
# possibly in many batches and threads: its bytes are hashed once, not once per page.
_HASHES: OrderedDict[tuple, str] = OrderedDict()
_HASHES_LOCK = threading.Lock()
_HASHES_MAX = 256


def _version(path, st: os.stat_result) -> tuple:
    return (str(path), st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino)


def _hash_of(path, st: os.stat_result) -> str:
    """The content hash of ``path`` as it is now (``st``), hashed at most once per version."""
    key = _version(path, st)
    with _HASHES_LOCK:
        digest = _HASHES.get(key)
        if digest is not None:
            _HASHES.move_to_end(key)
            return digest
    digest, _ = hash_file(path)
    if _version(path, os.stat(path)) != key:  # changed while hashed: the new version is the next run's
        raise InputError(path, _CHANGED)
    with _HASHES_LOCK:
        _HASHES[key] = digest
        while len(_HASHES) > _HASHES_MAX:
            _HASHES.popitem(last=False)
    return digest


def _verify_document(task: DecodeTask, st: os.stat_result | None = None) -> None:
    """The stored hash must be the hash of the bytes drawn: the file as it is now (``st``: of the
    descriptor about to be read, else of the path) must be the version the plan hashed."""
    if not task.content_hash:
        return
    try:
        st = st or os.stat(task.path)
        digest = _hash_of(task.path, st)
    except InputError as e:
        raise InputError(task.path, e.reason, task.page) from None
    except OSError as e:
        raise InputError(task.path, os_error_reason(e), task.page) from None
    if digest != task.content_hash:
        raise InputError(task.path, _CHANGED, task.page)


def _decode_page(task: DecodeTask, image_processor) -> Image.Image:
    """A page of a document: PDF pages are drawn straight at their planned size; TIFF frames are
    decoded like any image (reading that frame only, never the whole file again), then resized
    once to the processor's target."""

    if is_document_path(task.path):
        _verify_document(task)
        return render_page(task.path, task.page, (task.width, task.height))
    try:
        fp, _size = open_regular(task.path)
    except InputError as e:
        raise InputError(task.path, e.reason, task.page) from None
    try:
        _verify_document(task, os.fstat(fp.fileno()))
    except BaseException:
        fp.close()
        raise
    img = load_image(task.path, page=task.page, opened=fp)
    return fit_to_target(img, image_processor)


def _safe_target(w: int, h: int, ip) -> tuple[int, int]:
    try:
        return target_size(w, h, ip)
    except ValueError:  # extreme aspect ratio: padded later, no draft
        return h, w
