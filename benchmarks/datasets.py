"""Synthetic image folders for the throughput benchmarks, generated once into /tmp.

* ``photos12mp``: 12-megapixel (4000x3000) JPEGs with photo-like content: smooth colour
  gradients (a low-resolution random field upscaled bicubically), a few soft shapes and mild
  sensor-like noise, saved at quality 90 (3-5 MB each, like a phone camera's files).
* ``mixed``: what a real folder holds: A4 page scans at 300 dpi (2480x3508, text-like lines,
  PNG and JPEG), 12 MP photos, 1920x1080 screenshots/frames, 640x480 snaps, small icons and long
  strips (banners, receipts), file names interleaved so a loop in file order mixes sizes.

Folders are cached: a ``.complete`` marker records the recipe, and a folder is rebuilt only when
it is missing or was made by another recipe.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

ROOT = Path("/tmp/nomic-memory-bench")
RECIPE_VERSION = 1


def photo(w: int, h: int, rng: np.random.Generator, noise: float = 5.0) -> Image.Image:
    """Photo-like RGB image: smooth gradients + soft blobs + mild noise."""
    field = (rng.random((6, 8, 3)) * 255).astype(np.uint8)
    img = Image.fromarray(field).resize((w, h), Image.Resampling.BICUBIC)
    draw = ImageDraw.Draw(img)
    for _ in range(6):
        cx, cy, r = rng.integers(0, w), rng.integers(0, h), int(rng.integers(min(w, h) // 20, min(w, h) // 4))
        draw.ellipse((cx - r, cy - r, cx + r, cy + r), fill=tuple(int(c) for c in rng.integers(0, 255, 3)))
    img = img.filter(ImageFilter.GaussianBlur(radius=max(1, min(w, h) // 300)))
    arr = np.asarray(img, dtype=np.int16)
    # Noise at 1/2 resolution, upscaled: grain with some spatial correlation, as in real sensors.
    n = rng.normal(0, noise, (h // 2 + 1, w // 2 + 1, 1)).astype(np.float32)
    n = np.repeat(np.repeat(n, 2, axis=0), 2, axis=1)[:h, :w]
    return Image.fromarray(np.clip(arr + n, 0, 255).astype(np.uint8))


def page(w: int, h: int, rng: np.random.Generator) -> Image.Image:
    """Page-scan-like image: off-white paper, lines of dark 'words', a margin, slight noise."""
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


def _ready(d: Path, recipe: dict) -> bool:
    m = d / ".complete"
    return m.is_file() and json.loads(m.read_text()) == recipe


def _mark(d: Path, recipe: dict) -> None:
    (d / ".complete").write_text(json.dumps(recipe))


def photos12mp(n: int = 24, root: Path = ROOT) -> Path:
    d = root / f"photos12mp-{n}"
    recipe = {"kind": "photos12mp", "n": n, "v": RECIPE_VERSION}
    if _ready(d, recipe):
        return d
    d.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(12)
    for i in range(n):
        photo(4000, 3000, rng).save(d / f"IMG_{i:04d}.jpg", quality=90)
    _mark(d, recipe)
    return d


# (kind, width, height, format) in the order they repeat through the folder.
MIXED_SPECS = [
    ("page", 2480, 3508, "png"),
    ("photo", 4000, 3000, "jpg"),
    ("snap", 640, 480, "jpg"),
    ("icon", 64, 64, "png"),
    ("screen", 1920, 1080, "png"),
    ("page", 2480, 3508, "jpg"),
    ("strip", 3000, 200, "png"),
    ("photo", 3000, 4000, "jpg"),
    ("snap", 480, 640, "jpg"),
    ("screen", 1920, 1080, "jpg"),
    ("icon", 128, 128, "png"),
    ("page", 1700, 2200, "png"),  # US letter at 200 dpi
]


def mixed(n: int = 36, root: Path = ROOT) -> Path:
    d = root / f"mixed-{n}"
    recipe = {"kind": "mixed", "n": n, "v": RECIPE_VERSION}
    if _ready(d, recipe):
        return d
    d.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(7)
    for i in range(n):
        kind, w, h, fmt = MIXED_SPECS[i % len(MIXED_SPECS)]
        img = page(w, h, rng) if kind == "page" else photo(w, h, rng, noise=3.0 if kind != "photo" else 5.0)
        path = d / f"{i:03d}_{kind}.{fmt}"
        img.save(path, **({"quality": 90} if fmt == "jpg" else {"optimize": False}))
    _mark(d, recipe)
    return d


if __name__ == "__main__":
    import time

    for fn in (photos12mp, mixed):
        t = time.perf_counter()
        print(fn.__name__, fn(), f"{time.perf_counter() - t:.1f} s")
