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

from nomic_memory.ingest.samples import make_sample_images, page, photo, render  # noqa: F401  (the one generator)

ROOT = Path("/tmp/nomic-memory-bench")
RECIPE_VERSION = 1


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
    make_sample_images(d, n, seed=7, specs=MIXED_SPECS)
    _mark(d, recipe)
    return d


if __name__ == "__main__":
    import time

    for fn in (photos12mp, mixed):
        t = time.perf_counter()
        print(fn.__name__, fn(), f"{time.perf_counter() - t:.1f} s")
