"""Synthetic sample images: the one generator behind ``bench`` (when given no folder), the
benchmarks in ``benchmarks/`` and the tests that need a folder of images of known sizes.

* ``photo``: smooth colour gradients (a low-resolution random field upscaled bicubically), a few
  soft shapes and mild sensor-like noise: JPEG-compresses like a camera's photo.
* ``page``: off-white paper with lines of dark "words" and a margin: a page scan.

Images are deterministic for a seed, so a benchmark folder is the same on every machine.
"""

from __future__ import annotations

from pathlib import Path

# (kind, width, height, format), repeated through the folder in this order.
SAMPLE_SPECS = [("page", 1240, 1754, "png"), ("photo", 2000, 1500, "jpg"), ("screen", 1280, 720, "png"),
                ("snap", 640, 480, "jpg"), ("photo", 1500, 2000, "jpg"), ("icon", 96, 96, "png")]


def photo(w: int, h: int, rng, noise: float = 5.0):
    """Photo-like RGB image: smooth gradients + soft blobs + mild noise."""
    import numpy as np
    from PIL import Image, ImageDraw, ImageFilter

    field = (rng.random((6, 8, 3)) * 255).astype(np.uint8)
    img = Image.fromarray(field).resize((w, h), Image.Resampling.BICUBIC)
    draw = ImageDraw.Draw(img)
    for _ in range(6):
        cx, cy, r = rng.integers(0, w), rng.integers(0, h), int(rng.integers(max(1, min(w, h) // 20),
                                                                          max(2, min(w, h) // 4)))
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


def make_sample_images(directory: str | Path, n: int = 24, seed: int = 0,
                       specs: list[tuple[str, int, int, str]] | None = None) -> Path:
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


__all__ = ["SAMPLE_SPECS", "make_sample_images", "page", "photo", "render"]
