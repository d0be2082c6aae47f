"""A deterministic PDF corpus for the document benchmarks: text, vector figures and photos.

    python benchmarks/pdf_corpus.py OUT_DIR [--files 20] [--pages 40]

Writes ``doc-00.pdf`` .. ``doc-19.pdf`` (A4 and Letter alternating by file), each page a
reportlab page with a heading, paragraphs of vector text, and every other page a bar chart drawn
as vector paths or a photo-like image (smooth colour fields plus noise, JPEG-compressed as a
scanned or camera photo is).  Same arguments, same files (fixed seeds), so runs compare.
Existing files with the expected page count are kept (the corpus is built once per machine).
"""

from __future__ import annotations

import argparse
import io
import random
from pathlib import Path

import numpy as np
from PIL import Image

WORDS = (
    "retrieval memory vector page image embedding model query document index token patch "
    "search layer scan figure table result corpus photo batch store"
).split()


def _photo(seed: int, w: int = 900, h: int = 600) -> Image.Image:
    """A photo-like RGB image: low-frequency colour fields with sensor-like noise."""
    rng = np.random.default_rng(seed)
    coarse = rng.integers(0, 256, (6, 9, 3), dtype=np.uint8)
    img = Image.fromarray(coarse).resize((w, h), Image.Resampling.BICUBIC)
    noisy = np.asarray(img, dtype=np.int16) + rng.normal(0, 12, (h, w, 3)).astype(np.int16)
    return Image.fromarray(np.clip(noisy, 0, 255).astype(np.uint8))


def _jpeg_reader(img: Image.Image):
    from reportlab.lib.utils import ImageReader

    buf = io.BytesIO()
    img.save(buf, "JPEG", quality=85)
    buf.seek(0)
    return ImageReader(buf)


def _paragraph(rng: random.Random, n: int) -> str:
    return " ".join(rng.choice(WORDS) for _ in range(n)).capitalize() + "."


def write_pdf(path: Path, pages: int, pagesize, seed: int) -> Path:
    from reportlab.lib.utils import simpleSplit
    from reportlab.pdfgen import canvas

    rng = random.Random(seed)
    photos = [_jpeg_reader(_photo(seed * 10 + i)) for i in range(4)]  # reused: embedded once each
    w, h = pagesize
    c = canvas.Canvas(str(path), pagesize=pagesize)
    for p in range(pages):
        margin = 56
        y = h - margin
        c.setFont("Helvetica-Bold", 18)
        c.drawString(margin, y, f"Section {p + 1}: {_paragraph(rng, 4)[:-1]}")
        y -= 30
        c.setFont("Times-Roman", 11)
        for _ in range(4):
            for line in simpleSplit(_paragraph(rng, 60), "Times-Roman", 11, w - 2 * margin):
                c.drawString(margin, y, line)
                y -= 14
            y -= 8
        box_w, box_h = w - 2 * margin, min(260, y - margin - 20)
        if p % 2 == 0:  # a vector bar chart
            values = [rng.uniform(0.1, 1.0) for _ in range(12)]
            bw = box_w / len(values)
            c.setStrokeColorRGB(0, 0, 0)
            c.line(margin, margin + 20, margin + box_w, margin + 20)
            for i, v in enumerate(values):
                c.setFillColorRGB(0.2 + 0.05 * i, 0.4, 0.8 - 0.05 * i)
                c.rect(margin + i * bw + 2, margin + 20, bw - 4, v * box_h, stroke=1, fill=1)
        else:  # a photo
            c.drawImage(photos[p % len(photos)], margin, margin + 20, box_w, box_h)
        c.setFont("Helvetica", 9)
        c.drawCentredString(w / 2, 24, f"{p + 1} / {pages}")
        c.showPage()
    c.save()
    return path


def write_corpus(out_dir: str | Path, files: int = 20, pages: int = 40) -> list[Path]:
    """Write (or keep) ``files`` PDFs of ``pages`` pages in ``out_dir``; returns their paths."""
    from reportlab.lib.pagesizes import A4, letter

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(files):
        path = out / f"doc-{i:02d}.pdf"
        if not (path.exists() and _page_count(path) == pages):
            write_pdf(path, pages, A4 if i % 2 == 0 else letter, seed=i)
        paths.append(path)
    return paths


def _page_count(path: Path) -> int:
    try:
        from nomic_memory.ingest.documents import list_pages

        return len(list_pages(path))
    except Exception:  # noqa: BLE001 - a broken leftover is rewritten
        return -1


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("out_dir")
    ap.add_argument("--files", type=int, default=20)
    ap.add_argument("--pages", type=int, default=40)
    args = ap.parse_args(argv)
    paths = write_corpus(args.out_dir, args.files, args.pages)
    total = sum(p.stat().st_size for p in paths)
    print(f"{len(paths)} PDFs x {args.pages} pages in {args.out_dir} ({total / 1e6:.1f} MB)")


if __name__ == "__main__":
    main()
