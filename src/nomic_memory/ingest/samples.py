"""Synthetic sample images: the one generator behind ``bench`` (when given no folder), the
benchmarks in ``benchmarks/`` and the tests that need a folder of images of known sizes.

* ``photo``: smooth colour gradients (a low-resolution random field upscaled bicubically), a few
  soft shapes and mild sensor-like noise: JPEG-compresses like a camera's photo.
* ``page``: off-white paper with lines of dark "words" and a margin: a page scan.

Images are deterministic for a seed, so a benchmark folder is the same on every machine.
:func:`write_try_out_folder` (``nomic-memory samples DIR``) writes a small folder to try the tool
on: photos and a PDF of a few titled pages.
"""

from __future__ import annotations

from pathlib import Path

from nomic_memory.errors import InputError

# (kind, width, height, format), repeated through the folder in this order.
SAMPLE_SPECS = [
    ("page", 1240, 1754, "png"),
    ("photo", 2000, 1500, "jpg"),
    ("screen", 1280, 720, "png"),
    ("snap", 640, 480, "jpg"),
    ("photo", 1500, 2000, "jpg"),
    ("icon", 96, 96, "png"),
]


def photo(w: int, h: int, rng, noise: float = 5.0):
    """Photo-like RGB image: smooth gradients + soft blobs + mild noise."""
    import numpy as np
    from PIL import Image, ImageDraw, ImageFilter

    field = (rng.random((6, 8, 3)) * 255).astype(np.uint8)
    img = Image.fromarray(field).resize((w, h), Image.Resampling.BICUBIC)
    draw = ImageDraw.Draw(img)
    for _ in range(6):
        cx, cy, r = (
            rng.integers(0, w),
            rng.integers(0, h),
            int(rng.integers(max(1, min(w, h) // 20), max(2, min(w, h) // 4))),
        )
        draw.ellipse((cx - r, cy - r, cx + r, cy + r), fill=tuple(int(c) for c in rng.integers(0, 255, 3)))
    img = img.filter(ImageFilter.GaussianBlur(radius=max(1, min(w, h) // 300)))
    arr = np.asarray(img, dtype=np.int16)
    # Noise at 1/2 resolution, upscaled: grain with some spatial correlation, as in real sensors.
    n = rng.normal(0, noise, (h // 2 + 1, w // 2 + 1, 1)).astype(np.float32)
    n = np.repeat(np.repeat(n, 2, axis=0), 2, axis=1)[:h, :w]
    return Image.fromarray(np.clip(arr + n, 0, 255).astype(np.uint8))


def page(w: int, h: int, rng):
    """Page-scan-like image: off-white paper, lines of dark 'words', a margin, slight noise."""
    import numpy as np
    from PIL import Image, ImageDraw

    img = Image.new("L", (w, h), 245)
    draw = ImageDraw.Draw(img)
    margin, line_h = w // 10, max(8, h // 70)
    y = margin
    while y < h - margin:
        x = margin
        while x < w - margin:
            word = int(rng.integers(line_h, line_h * 5))
            draw.rectangle((x, y, min(x + word, w - margin), y + int(line_h * 0.6)), fill=int(rng.integers(10, 60)))
            x += word + line_h // 2
        y += line_h + (line_h if rng.random() < 0.1 else 0)
    arr = np.asarray(img, dtype=np.int16) + rng.normal(0, 3, (h, w)).astype(np.int16)
    return Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8)).convert("RGB")


def render(kind: str, w: int, h: int, rng):
    """One image of ``kind`` (``page``; anything else is photo-like, ``photo`` with more grain)."""
    return page(w, h, rng) if kind == "page" else photo(w, h, rng, noise=5.0 if kind == "photo" else 3.0)


def make_sample_images(
    directory: str | Path, n: int = 24, seed: int = 0, specs: list[tuple[str, int, int, str]] | None = None
) -> Path:
    """Write ``n`` images to ``directory`` as ``NNN_kind.fmt``, cycling through ``specs``
    (default :data:`SAMPLE_SPECS`: page scans, photos, screenshots, phone snaps, icons)."""
    import numpy as np

    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    specs = specs or SAMPLE_SPECS
    for i in range(n):
        kind, w, h, fmt = specs[i % len(specs)]
        img = render(kind, w, h, rng)
        img.save(d / f"{i:03d}_{kind}.{fmt}", **({"quality": 90} if fmt == "jpg" else {}))
    return d


# ------------------------------------------------------------------ the try-out folder
#: What ``nomic-memory samples DIR`` writes: photos and a PDF of a few titled pages.
TRY_OUT_PHOTOS = [
    ("photos/photo_1.jpg", 1024, 768),
    ("photos/photo_2.jpg", 768, 1024),
    ("photos/photo_3.jpg", 1024, 768),
    ("photos/photo_4.jpg", 1024, 1024),
]
TRY_OUT_PAGES = ["Quarterly report", "Revenue by region", "Outlook for next year"]
TRY_OUT_PDF = "report.pdf"


class SampleConflict(InputError):
    """A file the sample folder would write exists with other contents: never overwritten."""


def _titled_page(title: str, number: int, rng):
    """A page scan (:func:`page`) with a title and a page number in real letters."""
    from PIL import ImageDraw, ImageFont

    img = page(1240, 1754, rng)  # A4 at 150 DPI
    draw = ImageDraw.Draw(img)
    draw.rectangle((100, 40, 1140, 150), fill=(245, 245, 245))
    draw.text((124, 60), title, fill=(0, 0, 0), font=ImageFont.load_default(size=64))
    draw.text((600, 1700), str(number), fill=(0, 0, 0), font=ImageFont.load_default(size=32))
    return img


def try_out_files(seed: int = 0) -> dict[str, bytes]:
    """The try-out folder's files, ``relative path -> bytes``: the same bytes for a seed on every
    run (the PDF's dates are fixed)."""
    import io
    import time

    import numpy as np

    rng = np.random.default_rng(seed)
    out: dict[str, bytes] = {}
    for rel, w, h in TRY_OUT_PHOTOS:
        buf = io.BytesIO()
        photo(w, h, rng).save(buf, format="JPEG", quality=90)
        out[rel] = buf.getvalue()
    pages = [_titled_page(t, i + 1, rng) for i, t in enumerate(TRY_OUT_PAGES)]
    buf = io.BytesIO()
    fixed = time.struct_time((2025, 1, 1, 0, 0, 0, 2, 1, 0))
    pages[0].save(
        buf,
        format="PDF",
        save_all=True,
        append_images=pages[1:],
        resolution=150.0,
        title="Quarterly report",
        creationDate=fixed,
        modDate=fixed,
    )
    out[TRY_OUT_PDF] = buf.getvalue()
    return out


def write_try_out_folder(directory: str | Path, seed: int = 0) -> tuple[list[Path], list[Path]]:
    """Write :func:`try_out_files` under ``directory``; returns ``(written, already_there)``.
    A file that exists with other contents is never overwritten (:class:`SampleConflict`,
    checked before anything is written)."""
    d = Path(directory).expanduser()
    files = try_out_files(seed)
    for rel in files:
        p = d / rel
        if p.exists() and (not p.is_file() or p.read_bytes() != files[rel]):
            raise SampleConflict(p, "exists and is not the sample file: choose an empty or new directory")
    written, there = [], []
    for rel, data in files.items():
        p = d / rel
        if p.exists():
            there.append(p)
            continue
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(data)
        written.append(p)
    return written, there


__all__ = [
    "SAMPLE_SPECS",
    "SampleConflict",
    "TRY_OUT_PDF",
    "make_sample_images",
    "page",
    "photo",
    "render",
    "try_out_files",
    "write_try_out_folder",
]
