"""Find image files in a folder and decode them into model-ready RGB images.

The embedding pipeline feeds every image to a Qwen2.5-VL-based retriever whose
processor expects a plain 8-bit RGB ``PIL.Image``.  Real photo folders are far
messier than that, so this module is the one place that turns "a file with an
image-looking name" into either such an image or a clear, per-file
:class:`ImageError` the caller can log and skip:

* **Discovery** (:func:`discover_images`) is recursive, case-insensitive on the
  extension and returns a stable order, so that two runs over the same folder
  embed the same images in the same order (needed for resumable runs and for
  comparing benchmarks).
* **Decoding** (:func:`load_image`) uses Pillow only.  It applies the EXIF
  orientation (phones store portrait photos sideways), flattens transparency
  onto white (a transparent pixel's hidden colour is usually black, which would
  make logos and screenshots look like dark noise to the model), converts
  CMYK/palette/1-bit/grey images, rescales 16-bit and float images to 8-bit
  instead of letting Pillow clip them to white, and takes the first frame of
  animations (or, with ``page=n``, frame ``n - 1`` of a multi-page TIFF).
* **Formats**: everything Pillow reads, plus HEIC/HEIF (phones) through pillow-heif's
  opener, registered once on first use by :func:`register_plugins`, and AVIF through
  Pillow's own plugin.  Both decode to 8-bit (10-bit HEIC/AVIF included).
* **Safety**: the pixel count is checked against a *local* limit from the file
  header before anything is decoded, so one hostile or absurd file cannot eat
  the memory of a long embedding run.  Pillow's global
  ``Image.MAX_IMAGE_PIXELS`` and ``ImageFile.LOAD_TRUNCATED_IMAGES`` are never
  modified: other code in the same process (or another thread) may depend on
  them, and silently accepting truncated files would embed half-grey images.
* **Speed**: for JPEGs much larger than what the model will see,
  ``Image.draft`` lets libjpeg decode at 1/2, 1/4 or 1/8 scale (DCT scaling),
  which is several times faster and smaller than decoding at full size and
  resizing afterwards.
* **Processor limits**: Qwen's ``smart_resize`` raises for aspect ratios above
  200:1 and misbehaves on images thinner than one 28 px patch, so
  :func:`pad_extreme_aspect` pads such images with white - after shrinking
  the image when the padded canvas would exceed a pixel budget (a 1 x 600 000
  strip would otherwise need an 8 GB canvas).
* **Only regular files are read** (:func:`open_regular`, :func:`read_file_bounded`):
  FIFOs are opened without blocking and refused, ``/proc``, ``/sys`` and
  devices are refused, the size is taken from the opened descriptor and reads
  never go past it, so no file can hang or exhaust a run.  The same functions
  serve hashing and decoding, so a run can hash exactly the bytes it decodes.
"""

from __future__ import annotations

import hashlib
import io
import logging
import math
import os
import stat
from pathlib import Path

from PIL import Image, ImageOps, UnidentifiedImageError

from nomic_memory.errors import InputError
from nomic_memory.ingest.notices import decode_warnings, one_line

__all__ = [
    "DEFAULT_MAX_IMAGE_PIXELS",
    "DEFAULT_MAX_PADDED_PIXELS",
    "MAX_FILE_BYTES",
    "discover",
    "discover_paths",
    "hash_bytes",
    "hash_file",
    "image_size",
    "open_regular",
    "read_file_bounded",
    "IMAGE_EXTENSIONS",
    "MIN_SIDE",
    "ImageError",
    "discover_images",
    "is_image_path",
    "jpeg_draft_scale",
    "load_image",
    "oriented_size",
    "load_image_hashed",
    "pad_extreme_aspect",
    "register_plugins",
    "to_rgb",
]

logger = logging.getLogger(__name__)

#: File name endings treated as images (compared case-insensitively).
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".heic", ".heif", ".avif")

#: Same value as Pillow's default ``Image.MAX_IMAGE_PIXELS`` (~179 Mpx, e.g.
#: 13400 x 13400), but enforced locally so the global is left alone.
DEFAULT_MAX_IMAGE_PIXELS = 178_956_970

#: Largest image file read (judged from the opened descriptor, before reading).
MAX_FILE_BYTES = 2 * 1024**3

#: Pixel budget of the white canvas :func:`pad_extreme_aspect` may make when no
#: tighter one is given (16 Mpx: 48 MB in RGB).  An extreme strip is shrunk
#: first so that its padded canvas fits; the model sees at most its
#: ``max_pixels`` (about 1 Mpx) anyway.
DEFAULT_MAX_PADDED_PIXELS = 16 * 1024 * 1024

#: Where no image lives: reading there hangs (/proc/self/pagemap is "regular"
#: and effectively endless) or has side effects.  (Devices anywhere, /dev
#: included, are refused by their file type; /dev/shm holds regular files.)
_REFUSED_PREFIXES = ("/proc/", "/sys/")

#: Qwen2.5-VL works on 28 x 28 px patches (14 px ViT patches merged 2 x 2); an
#: image thinner than one patch gets rounded to zero or upscaled wildly.
MIN_SIDE = 28

_WHITE = (255, 255, 255)
_ORIENTATION_TAG = 0x0112  # EXIF "Orientation"
_ALPHA_MODES = frozenset({"RGBA", "RGBa", "LA", "La", "PA"})
_NATIVE_WHITE = {"RGB": _WHITE, "RGBA": (255, 255, 255, 255), "L": 255, "LA": (255, 255), "1": 1}


_plugins_registered = False


def register_plugins() -> None:
    """Make ``Image.open`` read HEIC/HEIF (pillow-heif's opener); idempotent and cheap.

    Called by :func:`discover_images` and :func:`load_image`, so any process that finds or
    decodes images (the main process scanning headers, every decode worker) can open HEIC
    files.  Lazy because importing pillow-heif loads libheif, which a run without HEIC files
    never needs.  Only the opener is registered: pillow-heif's global options are left as
    they are (its default converts 10/12-bit images to 8-bit, as the model needs).  AVIF
    needs nothing: Pillow (>= 11.3) reads it with its own bundled libavif.
    """
    global _plugins_registered
    if _plugins_registered:
        return
    try:
        from pillow_heif import register_heif_opener
    except ImportError:  # optional at runtime: HEIC files then fail as "cannot identify"
        logger.debug("pillow-heif is not installed: HEIC/HEIF files cannot be read")
    else:
        register_heif_opener()
    _plugins_registered = True


class ImageError(InputError):
    """A single image file could not be turned into an RGB image.

    Raised by :func:`load_image` for per-file problems (empty, truncated,
    not an image, too large, unreadable).  Callers embedding a whole folder
    are expected to catch it, record ``path`` and ``reason``, and carry on
    with the next file instead of aborting a long run.
    """


# --------------------------------------------------------------------------
# Discovery
# --------------------------------------------------------------------------


def is_image_path(path: str | os.PathLike[str]) -> bool:
    """True when the file name ends with one of :data:`IMAGE_EXTENSIONS` (any case).

    Only the name is looked at (no I/O): discovery must stay cheap on folders
    with hundreds of thousands of files; the content is checked when loading.
    """
    return os.fspath(path).lower().endswith(IMAGE_EXTENSIONS)


def discover_images(root: str | os.PathLike[str], *, match=is_image_path) -> list[Path]:
    """Return absolute paths of all image files under ``root``, recursively.

    The files of :func:`discover` (which also reports what it skipped and why).
    ``match`` (a file name -> bool) widens what is found, e.g.
    :func:`nomic_memory.ingest.documents.is_input_path` for images and PDFs.

    Raises:
        FileNotFoundError: ``root`` does not exist.
        NotADirectoryError: ``root`` exists but is not a directory.
    """
    return discover(root, match=match)[0]


#: The reason :func:`discover` gives for a folder it could not list (what a prune must leave alone).
UNLISTABLE = "cannot list directory"


def discover(root: str | os.PathLike[str], *, match=is_image_path) -> tuple[list[Path], list[tuple[str, str]]]:
    """Image files under ``root`` and the image-named entries skipped, with the reason.

    Files are matched by extension only (``.JPG`` and ``.jpg`` alike); every
    other name is ignored.  The files are sorted by the path relative to
    ``root`` in POSIX form, which is independent of the file system's listing
    order, so repeated runs (and runs on other machines) see the same order.
    Names that are not valid UTF-8 are kept (as ``os.fsdecode`` gives them).

    Symlinks: a symlinked *file* is followed wherever it points (a folder of
    links to photos works); a symlinked *directory* is not followed (no loops,
    no walking out of the folder) and is reported as skipped.  Only regular
    files are returned: FIFOs, sockets, devices, broken links and links into
    ``/proc`` or ``/sys`` are reported as skipped, so a run can list
    them instead of hanging on them.  Folders that cannot be listed are reported
    too (reason :data:`UNLISTABLE`; the folder itself as ``"."``).

    Returns:
        ``(files, skipped)``: absolute paths, and ``(relative path, reason)``.
    """
    register_plugins()  # header reads (sizes) of HEIC files in this process
    base = Path(os.path.abspath(os.path.expanduser(os.fspath(root))))
    if not base.exists():
        raise FileNotFoundError(f"image folder does not exist: {base}")
    if not base.is_dir():
        raise NotADirectoryError(f"expected a folder of images, got a file: {base}")

    found: list[tuple[str, Path]] = []
    skipped: list[tuple[str, str]] = []

    def rel_of(p: str) -> str:
        return Path(p).relative_to(base).as_posix()

    def on_error(e: OSError) -> None:  # the folder itself is "." (nothing under it was seen)
        if e.filename:
            skipped.append(
                (
                    rel_of(e.filename) if os.path.abspath(e.filename) != str(base) else ".",
                    f"{UNLISTABLE}: {e.strerror or e}",
                )
            )

    for dirpath, dirnames, filenames in os.walk(base, onerror=on_error):
        for name in dirnames:  # os.walk lists symlinked directories here and does not enter them
            full = os.path.join(dirpath, name)
            if os.path.islink(full):
                skipped.append((rel_of(full), "symbolic link to a directory (not followed)"))
        for name in filenames:
            if not match(name):
                continue
            full = Path(dirpath, name)
            reason = _not_regular_reason(full)
            if reason:
                skipped.append((full.relative_to(base).as_posix(), reason))
                continue
            found.append((full.relative_to(base).as_posix(), full))
    found.sort(key=lambda item: item[0])
    skipped.sort()
    return [full for _rel, full in found], skipped


def discover_paths(
    root: str | os.PathLike[str], paths, *, match=is_image_path
) -> tuple[list[Path], list[tuple[str, str]]]:
    """:func:`discover` restricted to ``paths`` under ``root`` (files, or folders listed whole;
    e.g. what a watcher saw change): the same files, reasons and order as :func:`discover` gives
    for them.  Paths outside ``root``, paths that no longer exist and names ``match`` rejects are
    left out (a vanished path is the caller's to prune)."""
    base = Path(os.path.abspath(os.path.expanduser(os.fspath(root))))
    found: dict[str, Path] = {}
    skipped: list[tuple[str, str]] = []
    for p in paths:
        full = Path(os.path.abspath(os.fspath(p)))
        if full != base and base not in full.parents:
            continue
        rel = full.relative_to(base).as_posix()
        if full.is_dir() and not full.is_symlink():
            sub, sub_skipped = discover(full, match=match)
            prefix = "" if full == base else rel + "/"
            found.update((f.relative_to(base).as_posix(), f) for f in sub)
            skipped.extend((prefix + r, reason) for r, reason in sub_skipped)
        elif full.is_dir():
            skipped.append((rel, "symbolic link to a directory (not followed)"))
        elif match(full.name) and (os.path.lexists(full)):
            reason = _not_regular_reason(full)
            if reason is None:
                found[rel] = full
            elif reason != "file vanished":
                skipped.append((rel, reason))
    return [found[r] for r in sorted(found)], sorted(set(skipped))


def _kind_of(mode: int) -> str:
    for test, name in (
        (stat.S_ISFIFO, "a FIFO (named pipe)"),
        (stat.S_ISSOCK, "a socket"),
        (stat.S_ISCHR, "a character device"),
        (stat.S_ISBLK, "a block device"),
        (stat.S_ISDIR, "a directory"),
    ):
        if test(mode):
            return name
    return "not a regular file"


def _not_regular_reason(path: Path) -> str | None:
    """Why ``path`` is not a regular file worth reading (None when it is one); never opens it."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return "broken symbolic link" if os.path.islink(path) else "file vanished"
    except OSError as e:
        return f"cannot stat: {e.strerror or e}"
    if not stat.S_ISREG(st.st_mode):
        return f"not a regular file: {_kind_of(st.st_mode)}"
    if os.path.islink(path):
        real = os.path.realpath(path)
        if real.startswith(_REFUSED_PREFIXES):
            return f"symbolic link into /{real.split('/')[1]} (not an image file)"
    return None


# --------------------------------------------------------------------------
# Reading: regular files only, bounded
# --------------------------------------------------------------------------


def os_error_reason(exc: OSError) -> str:
    """The reason, for the user, that a file could not be opened or read (one wording everywhere:
    the inspection, image decoding, documents)."""
    if isinstance(exc, FileNotFoundError):
        return "file not found"
    if isinstance(exc, IsADirectoryError):
        return "is a directory, not an image file"
    if isinstance(exc, PermissionError):
        return "permission denied"
    return f"cannot read file: {exc.strerror or exc}"


def open_regular(path: str | os.PathLike[str], max_bytes: int = MAX_FILE_BYTES):
    """Open ``path`` for reading if, and only if, it is a regular file of sane size.

    The checks are made on the *opened* descriptor (``fstat``), so a file
    swapped for a FIFO or a device after discovery is still caught: the open
    itself uses ``O_NONBLOCK`` (opening a FIFO without a writer would block for
    ever).  Paths resolving into ``/proc`` or ``/sys`` are refused.

    Returns ``(file object, size)``; raises :class:`ImageError` with the reason.
    """
    real = os.path.realpath(path)
    if real.startswith(_REFUSED_PREFIXES):
        raise ImageError(path, f"refused: {real} is not an image file (system or device path)")
    flags = os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0) | getattr(os, "O_BINARY", 0)
    try:
        fd = os.open(path, flags)
    except OSError as exc:
        raise ImageError(path, os_error_reason(exc)) from None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise ImageError(path, f"not a regular file: {_kind_of(st.st_mode)}")
        if st.st_size == 0:
            raise ImageError(path, "empty file")
        if st.st_size > max_bytes:
            raise ImageError(path, f"file too large: {st.st_size} bytes (limit {max_bytes})")
        if hasattr(os, "set_blocking"):
            os.set_blocking(fd, True)
        return os.fdopen(fd, "rb"), st.st_size
    except BaseException:
        os.close(fd)
        raise


def read_file_bounded(path: str | os.PathLike[str], max_bytes: int = MAX_FILE_BYTES) -> bytes:
    """All bytes of a regular file (see :func:`open_regular`), read with a bound.

    Never reads more than the size ``fstat`` gave plus one byte: a file that
    grows while it is read (being written, or not a real file) is refused, as
    is one that shrinks.  Hash these bytes with :func:`hash_bytes` and decode
    them with ``load_image(path, data=...)`` so that the stored hash is the
    hash of the bytes embedded."""
    f, size = open_regular(path, max_bytes)
    with f:
        data = f.read(size + 1)
    if len(data) > size:
        raise ImageError(path, "file is growing while being read (still being written?)")
    if len(data) < size:
        raise ImageError(path, f"file shrank while being read ({len(data)} of {size} bytes)")
    return data


def hash_bytes(data: bytes) -> str:
    """The content hash stored with each row (SHA-256, hex)."""
    return hashlib.sha256(data).hexdigest()


def hash_file(path: str | os.PathLike[str], max_bytes: int = MAX_FILE_BYTES, chunk: int = 1 << 20) -> tuple[str, int]:
    """``(hash_bytes of the file, size)``, streamed with the same checks and bounds as
    :func:`read_file_bounded` (for an inspection that must not hold every file in memory)."""
    f, size = open_regular(path, max_bytes)
    h = hashlib.sha256()
    n = 0
    with f:
        while n <= size:
            b = f.read(min(chunk, size + 1 - n))
            if not b:
                break
            n += len(b)
            h.update(b)
    if n > size:
        raise ImageError(path, "file is growing while being read (still being written?)")
    if n < size:
        raise ImageError(path, f"file shrank while being read ({n} of {size} bytes)")
    return h.hexdigest(), size


def image_size(path: str | os.PathLike[str], data: bytes | None = None) -> tuple[int, int] | None:
    """Width and height as displayed (EXIF orientation applied), from the header only; ``None``
    when the header cannot be read.  Safe on any path (regular files only, no decompression-bomb
    warning printed): for an inspection that plans batches before decoding."""
    try:
        if data is None:
            f, _size = open_regular(path)
        else:
            f = io.BytesIO(data)
        with f, decode_warnings(path, report=False):  # the decode reports them
            with Image.open(f) as im:
                w, h = im.size
                orient = im.getexif().get(_ORIENTATION_TAG, 1) if hasattr(im, "getexif") else 1
        return (h, w) if orient in (5, 6, 7, 8) else (w, h)
    except Exception:  # noqa: BLE001 - the decode names the precise reason
        return None


# --------------------------------------------------------------------------
# Geometry helpers
# --------------------------------------------------------------------------


def jpeg_draft_scale(width: int, height: int, target_pixels: int | None, *, min_side: int = MIN_SIDE) -> int:
    """Largest JPEG DCT down-scale factor (1, 2, 4 or 8) that keeps enough pixels.

    libjpeg can decode directly at 1/2, 1/4 or 1/8 size, producing
    ``ceil(width / s) x ceil(height / s)`` pixels.  The factor returned is the
    largest ``s`` for which that is still at least ``target_pixels`` pixels
    (so the model never sees fewer pixels than it would from the full-size
    decode) and whose short side stays at least ``min(min_side, short side)``.
    Returns 1 (decode at full size) when no reduction is possible or
    ``target_pixels`` is ``None``/non-positive.
    """
    if not target_pixels or target_pixels <= 0 or width <= 0 or height <= 0:
        return 1
    short = min(width, height)
    for scale in (8, 4, 2):
        w = -(-width // scale)
        h = -(-height // scale)
        if w * h >= target_pixels and min(w, h) >= min(min_side, short):
            return scale
    return 1


def pad_extreme_aspect(
    img: Image.Image,
    max_ratio: float = 200.0,
    margin: float = 0.9,
    *,
    min_side: int = MIN_SIDE,
    max_pixels: int | None = DEFAULT_MAX_PADDED_PIXELS,
) -> Image.Image:
    """Pad ``img`` with white so Qwen's processor accepts its shape.

    Qwen2.5-VL's ``smart_resize`` raises ``ValueError`` when the aspect ratio
    exceeds 200:1, and images with a side shorter than one 28 px patch are
    degenerate for it.  Rather than fail on panoramas, receipts or 1-px
    rules, the image is centred on a white canvas:

    * every side shorter than ``min_side`` is padded up to ``min_side``;
    * then, if ``long / short > max_ratio * margin``, the short side is padded
      until the ratio is at most ``max_ratio * margin``.  The margin keeps
      the ratio safely below the limit after the processor's own rounding of
      both sides to multiples of 28.

    When the padded canvas would exceed ``max_pixels`` (a 1 x 600 000 strip
    needs 3 334 x 600 000), the image is first shrunk, keeping its aspect
    ratio, until its padded canvas fits: the model would shrink it to its
    own ``max_pixels`` anyway, and every allocation stays bounded.  ``None``
    disables this.

    Padding (not stretching or cropping) keeps the original proportions.  The input is returned unchanged (same object) when no
    padding is needed.  RGB, RGBA, L, LA and 1-bit images keep their mode
    (padding is opaque white); any other mode is converted with
    :func:`to_rgb` first, since "white" is ambiguous for CMYK, palette or
    16-bit data.
    """
    if max_ratio <= 0 or not (0 < margin <= 1):
        raise ValueError("max_ratio must be > 0 and margin in (0, 1]")
    limit = max_ratio * margin
    w, h = img.size
    new_w, new_h = padded_size(w, h, limit, min_side)
    if max_pixels and new_w * new_h > max_pixels:
        # Shrink the long side until the padded canvas fits (a few steps at most: the canvas
        # shrinks with the square of the long side).
        scale = math.sqrt(max_pixels / (new_w * new_h))
        while True:
            sw, sh = max(1, int(w * scale)), max(1, int(h * scale))
            new_w, new_h = padded_size(sw, sh, limit, min_side)
            if new_w * new_h <= max_pixels or scale < 1e-9:
                break
            scale *= 0.95
        if img.mode not in _NATIVE_WHITE:
            img = to_rgb(img)
        img = img.resize((sw, sh), Image.Resampling.BOX)
        w, h = sw, sh
    if (new_w, new_h) == (w, h):
        return img

    fill = _NATIVE_WHITE.get(img.mode)
    if fill is None:
        img = to_rgb(img)
        fill = _WHITE
    canvas = Image.new(img.mode, (new_w, new_h), fill)
    canvas.paste(img, ((new_w - w) // 2, (new_h - h) // 2))
    return canvas


def padded_size(w: int, h: int, limit: float, min_side: int = MIN_SIDE) -> tuple[int, int]:
    """The canvas :func:`pad_extreme_aspect` pads a ``w x h`` image to (ratio ``limit``)."""
    new_w, new_h = max(w, min_side), max(h, min_side)
    if max(new_w, new_h) / min(new_w, new_h) > limit:
        needed_short = math.ceil(max(new_w, new_h) / limit)
        if new_w < new_h:
            new_w = max(new_w, needed_short)
        else:
            new_h = max(new_h, needed_short)
    return new_w, new_h


# --------------------------------------------------------------------------
# Mode conversion
# --------------------------------------------------------------------------


def to_rgb(img: Image.Image) -> Image.Image:
    """Convert any Pillow image to 8-bit RGB the way a viewer would show it.

    * Transparency (alpha channel, or a palette/colour-key ``transparency``)
      is composited onto **white**: a plain ``convert("RGB")`` would expose
      the colour hidden under transparent pixels, usually black.
    * 16-bit unsigned modes (``I;16*``) are scaled from their nominal
      0..65535 range; 32-bit integer (``I``) and float (``F``) images have no
      fixed range, so they are stretched from their actual min..max.  A plain
      conversion would clip everything above 255 to white.
    * Everything else (1-bit, L, P, CMYK, YCbCr, LAB, HSV, RGBX...) goes
      through Pillow's own conversion.

    Returns ``img`` itself when it is already RGB without transparency.
    """
    mode = img.mode
    if mode == "RGB" and "transparency" not in img.info:
        return img
    if mode in ("I", "F") or mode.startswith("I;"):
        return _high_depth_to_rgb(img)
    if mode == "La":  # premultiplied; Pillow cannot convert it directly
        img = img.convert("RGBa")
        mode = "RGBa"
    if mode in _ALPHA_MODES or "transparency" in img.info:
        rgba = img.convert("RGBA")
        canvas = Image.new("RGB", rgba.size, _WHITE)
        canvas.paste(rgba, mask=rgba.getchannel("A"))
        return canvas
    return img.convert("RGB")


def _high_depth_to_rgb(img: Image.Image) -> Image.Image:
    """Map a 16/32-bit integer or float image linearly onto 0..255 grey."""
    if img.mode.startswith("I;16"):
        lo, hi = 0.0, 65535.0
    else:
        lo, hi = (float(v) for v in img.getextrema())
        if not (math.isfinite(lo) and math.isfinite(hi)):
            raise ValueError("float image contains NaN or infinite values")
    if hi <= lo:  # constant image: no range to stretch, keep the value if it fits
        value = int(round(min(max(lo, 0.0), 255.0)))
        return Image.new("RGB", img.size, (value, value, value))
    scale = 255.0 / (hi - lo)
    offset = -lo * scale
    as_float = img if img.mode == "F" else img.convert("F")
    # For "F" images Image.point only accepts linear functions, which is
    # exactly what this is; conversion to "L" then rounds and clamps.
    grey = as_float.point(lambda v: v * scale + offset).convert("L")
    return grey.convert("RGB")


# --------------------------------------------------------------------------
# Loading
# --------------------------------------------------------------------------


def oriented_size(img: Image.Image) -> tuple[int, int]:
    """(width, height) of an opened, not yet decoded image as :func:`load_image` will return it.

    EXIF orientations 5-8 swap the sides, unless the reader has already turned the image:
    Pillow's TIFF reader reports (and loads) TIFFs turned, and libheif applies HEIF's own
    rotation and resets the EXIF tag.  Telling the two apart by the TIFF size tags, instead of by
    Pillow's version, keeps the count right on every Pillow.  Only headers are read.
    """
    w, h = img.size
    try:
        orientation = img.getexif().get(_ORIENTATION_TAG, 1)
    except Exception:  # noqa: BLE001 - unreadable EXIF is ignored when loading too
        return w, h
    if orientation not in (5, 6, 7, 8) or w == h:
        return w, h
    tags = getattr(img, "tag_v2", None)
    if tags is not None and (tags.get(256), tags.get(257)) == (h, w):  # stored W x H, shown H x W
        return w, h
    return h, w


def load_image(
    path: str | os.PathLike[str],
    *,
    max_image_pixels: int = DEFAULT_MAX_IMAGE_PIXELS,
    target_pixels: int | None = None,
    page: int | None = None,
    data: bytes | None = None,
    max_padded_pixels: int | None = DEFAULT_MAX_PADDED_PIXELS,
    opened=None,
) -> Image.Image:
    """Decode one image file into a fully loaded 8-bit RGB ``PIL.Image``.

    The returned image is detached from the file (which is closed), oriented
    per EXIF, flattened onto white, converted with :func:`to_rgb` and padded
    with :func:`pad_extreme_aspect`.  For animated or multi-page files only
    the first frame/page is used (one vector set per file), unless ``page``
    asks for another: the pages of a multi-page TIFF are embedded as pages
    ``1..N`` of a document (see :func:`nomic_memory.ingest.documents.list_pages`).

    Args:
        path: the image file.
        max_image_pixels: refuse images with more pixels than this, judged
            from the header before any pixel is decoded (protection against
            decompression bombs and accidental gigapixel scans).
        target_pixels: roughly how many pixels the model will keep (its
            ``max_pixels``).  For JPEGs at least 4x larger, the file is
            decoded at 1/2, 1/4 or 1/8 scale via ``Image.draft``, never below
            ``target_pixels`` (see :func:`jpeg_draft_scale`).  Ignored for
            other formats, which have no cheap reduced decode.
        page: ``None`` or ``0`` for the image itself (its first frame);
            ``n >= 1`` for frame ``n - 1`` (page ``n`` of a multi-page file),
            decoded with the same conversions.
        data: the file's bytes, already read (:func:`read_file_bounded`): decoded
            from memory, so that the caller's hash is the hash of what was decoded.
            ``path`` then only names the file in errors.
        max_padded_pixels: pixel budget of the padded canvas (see
            :func:`pad_extreme_aspect`).
        opened: ``path`` already opened with :func:`open_regular` (read from there and closed;
            for a caller that checked the descriptor, e.g. its version, first).

    The file is opened with :func:`open_regular`: FIFOs, devices, ``/proc``
    and files over :data:`MAX_FILE_BYTES` are refused, never read.

    Raises:
        ImageError: with a short ``reason`` such as ``"empty file"``,
            ``"permission denied"``, ``"not an image (cannot identify
            format)"``, ``"truncated or corrupt image data: ..."`` or
            ``"image too large: W x H pixels exceeds limit N"``; for a
            ``page``, the error carries it and a missing page is ``"no page
            n (the file has N)"``.
    """
    register_plugins()
    frame = 0 if not page else page - 1
    err_page = page or None
    if frame < 0:
        if opened is not None:
            opened.close()
        raise ImageError(path, f"invalid page number {page}", page=page)
    if opened is not None:
        fp = opened
    elif data is not None:
        if not data:
            raise ImageError(path, "empty file", page=err_page)
        fp = io.BytesIO(data)
    else:
        try:
            fp, _size = open_regular(path)
        except ImageError as e:
            raise ImageError(path, e.reason, page=err_page) from None

    with fp, decode_warnings(path, err_page):
        source: Image.Image | None = None
        try:
            source = _open_and_decode(fp, path, max_image_pixels, target_pixels, frame)
            oriented = _apply_exif_orientation(source, path)
            rgb = pad_extreme_aspect(to_rgb(oriented), max_pixels=max_padded_pixels)
            if rgb is source:
                # Never hand out the file-backed object itself: its methods
                # (seek, n_frames, getexif on TIFF) would touch the closed file.
                rgb = rgb.copy()
            return rgb
        except ImageError as exc:
            if exc.page is None and err_page is not None:
                raise ImageError(path, exc.reason, page=err_page) from None
            raise
        except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
            raise ImageError(path, f"image too large: {exc}", page=err_page) from None
        except UnidentifiedImageError:
            raise ImageError(path, "not an image (cannot identify format)", page=err_page) from None
        except MemoryError:
            raise
        except Exception as exc:  # Pillow raises OSError, SyntaxError, ValueError, EOFError, ...
            raise ImageError(path, f"truncated or corrupt image data: {one_line(exc)}", page=err_page) from exc
        finally:
            if source is not None:
                source.close()


def load_image_hashed(path: str | os.PathLike[str], **kwargs) -> tuple[Image.Image, str, int]:
    """Read ``path`` once (:func:`read_file_bounded`), decode those bytes (:func:`load_image`) and
    hash the same bytes: ``(image, content hash, size)``.  A run that stores this hash with the
    embedding can never record the hash of a version of the file it did not embed."""
    data = read_file_bounded(path)
    return load_image(path, data=data, **kwargs), hash_bytes(data), len(data)


def _open_and_decode(fp, path, max_image_pixels: int, target_pixels: int | None, frame: int = 0) -> Image.Image:
    """Open ``fp``, enforce the pixel limit from the header, then decode ``frame``."""
    # Pillow warns above its global limit (and raises at twice it): the warning is collected by
    # the caller's decode_warnings, and dropped when the local limit below refuses the image.
    # (No catch_warnings here: it swaps process-wide state, which decode threads would race on.)
    img = Image.open(fp)
    try:
        if frame:
            frames = getattr(img, "n_frames", 1)
            if frame >= frames:
                raise ImageError(path, f"no page {frame + 1} (the file has {frames})")
            img.seek(frame)  # reads that frame's header only
        width, height = img.size
        if width * height > max_image_pixels:
            raise ImageError(
                path,
                f"image too large: {width} x {height} pixels exceeds limit {max_image_pixels}",
            )
        # MPO (multi-picture JPEG, written by many cameras) is a JPEG
        # subclass in Pillow and supports draft() the same way.
        if img.format in ("JPEG", "MPO") and target_pixels:
            scale = jpeg_draft_scale(width, height, target_pixels)
            if scale > 1:
                # Request exactly 1/scale; Pillow picks the largest DCT
                # factor whose output is >= the requested size, i.e. scale.
                img.draft("RGB", (width // scale, height // scale))
        img.load()  # the current frame: 0 unless seeked above
    except BaseException:
        img.close()
        raise
    return img


def _apply_exif_orientation(img: Image.Image, path) -> Image.Image:
    """Rotate/flip per the EXIF Orientation tag, as cameras and viewers expect.

    Corrupt EXIF blocks are common (edited files, cheap cameras); they cost the
    orientation, not the image, so failures here are logged and ignored.
    """
    try:
        orientation = img.getexif().get(_ORIENTATION_TAG, 1)
        if orientation in (2, 3, 4, 5, 6, 7, 8):
            transposed = ImageOps.exif_transpose(img)
            if transposed is not None:
                return transposed
    except Exception as exc:  # noqa: BLE001 - best effort by design
        logger.debug("ignoring unreadable EXIF orientation in %s: %s", path, exc)
    return img
