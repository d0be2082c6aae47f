"""Rendering PDF pages alone: nomic-memory's render_page at the model's size vs pdf2image at 200 DPI.

    python benchmarks/pdf_render.py CORPUS_DIR [--files 4] [--runs 3] [--size medium]

Configurations, each run in a fresh process, interleaved run by run, medians of ``--runs``:

* ``render_page``: every page listed with :func:`list_pages` and drawn by PDFium straight at
  :func:`render_size` for the processor of the tiny model ``--size`` (medium: up to 768 visual
  tokens, ~0.6 MP), one page at a time, in a renderer process (memory and time limits; its pixels
  come back over a pipe).
* ``in-process``: the same drawing (:func:`draw_page_here`) in this process, as every page was
  drawn before renderer processes (no memory or time limit, a crash takes the process).
* ``...-2threads``: the same with two threads drawing (as a run's decode threads do on two
  cores): renderer processes draw in parallel; in one process PDFium's lock serialises them.
* ``pdfium-200dpi``: the same PDFium, but each page drawn at 200 DPI and then resized to the
  same target size (what "render at a fixed DPI, let the processor downscale" costs with the
  same rasteriser).
* ``pdf2image-200dpi``: byaldi's way: ``pdf2image.convert_from_path(path, dpi=200)``, i.e.
  poppler's ``pdftoppm``, every page of a file into memory at once (no resize: favours it).

``pages_per_second`` counts all pages of the files; ``cpu_ms_per_page`` is the CPU time of this
process and of its renderer processes per page (what isolation costs, whatever else the machine runs); ``peak_above_start_mb`` is this process's
peak RSS above its RSS before the first page (pdftoppm's own process is not counted: its peak RSS
as the kernel reports it includes the Python parent it was forked from).  The corpus comes from ``benchmarks/pdf_corpus.py`` (written if missing).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

CONFIGS = (
    "render_page",
    "in-process",
    "render_page-2threads",
    "in-process-2threads",
    "pdfium-200dpi",
    "pdf2image-200dpi",
)


def _rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * resource.getpagesize() / 2**20


def _processor(size: str):
    from nomic_memory.model.tiny import SIZES, build_processor

    return build_processor("colqwen", SIZES[size]).image_processor


def _renderer_cpu(renderer, since: dict | None = None) -> float:
    """CPU seconds the running renderer processes have used (from /proc), minus ``since``'s."""
    total = 0.0
    p = renderer._POOL
    for r in p._idle if p is not None else []:
        with open(f"/proc/{r.proc.pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        total += (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    return total - sum((since or {}).values())


def run_once(config: str, pdfs: list[Path], size: str = "medium", warm: bool = False) -> dict:
    """One configuration over ``pdfs`` in this process; returns pages/s and memory."""
    from PIL import Image

    from nomic_memory.ingest.documents import close_cached_document, list_pages, render_page, render_size

    ip = _processor(size)
    if warm and config.startswith(("render_page", "in-process")):  # renderers started, PDFium and fonts loaded
        from nomic_memory.ingest.documents import draw_page_here

        g = list_pages(pdfs[0])[0]
        for _ in range(2 if config.endswith("2threads") else 1):
            (
                render_page(pdfs[0], 1, render_size(g, ip))
                if config.startswith("render_page")
                else draw_page_here(pdfs[0], 1, render_size(g, ip))
            )
    start_rss = _rss_mb()
    pages = 0
    pixels = 0
    t0 = time.perf_counter()
    cpu0 = sum(getattr(resource.getrusage(resource.RUSAGE_SELF), f) for f in ("ru_utime", "ru_stime"))
    cpu_renderers = 0.0
    from nomic_memory.ingest import renderer as _r

    warm_renderers = _renderer_cpu(_r)  # the warm-up's share, not counted
    if config.startswith(("render_page", "in-process")):
        from concurrent.futures import ThreadPoolExecutor

        from nomic_memory.ingest.documents import draw_page_here

        def draw(pdf, g):
            if config.startswith("render_page"):
                return render_page(pdf, g.page, render_size(g, ip))
            return draw_page_here(pdf, g.page, render_size(g, ip))[0]

        from nomic_memory.ingest import renderer

        jobs = [(pdf, g) for pdf in pdfs for g in list_pages(pdf)]
        with ThreadPoolExecutor(2 if config.endswith("2threads") else 1) as ex:
            for img in ex.map(lambda j: draw(*j), jobs):
                pages += 1
                pixels += img.width * img.height
        close_cached_document()
        cpu_renderers = _renderer_cpu(renderer) - warm_renderers
        renderer.shutdown()
    elif config == "pdfium-200dpi":
        import pypdfium2 as pdfium

        for pdf in pdfs:
            doc = pdfium.PdfDocument(str(pdf))
            for i in range(len(doc)):
                page = doc[i]
                big = page.render(scale=200 / 72).to_pil()
                w, h = page.get_size()
                page.close()
                from nomic_memory.ingest.documents import PageGeometry

                img = big.resize(render_size(PageGeometry(i + 1, w, h), ip), Image.Resampling.BICUBIC)
                pages += 1
                pixels += img.width * img.height
            doc.close()
    elif config == "pdf2image-200dpi":
        from pdf2image import convert_from_path

        for pdf in pdfs:
            images = convert_from_path(str(pdf), dpi=200)
            pages += len(images)
            pixels += sum(im.width * im.height for im in images)
            del images
    else:
        raise ValueError(config)
    seconds = time.perf_counter() - t0
    cpu = sum(getattr(resource.getrusage(resource.RUSAGE_SELF), f) for f in ("ru_utime", "ru_stime")) - cpu0
    cpu += cpu_renderers
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return {
        "config": config,
        "pages": pages,
        "seconds": round(seconds, 3),
        "pages_per_second": round(pages / seconds, 2),
        "cpu_ms_per_page": round(1000 * cpu / max(pages, 1), 1),
        "mean_pixels": int(pixels / max(pages, 1)),
        "peak_above_start_mb": round(max(0.0, peak_mb - start_rss), 1),
    }


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("corpus")
    ap.add_argument("--files", type=int, default=4)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--size", default="medium", help="tiny model size whose processor sets the target")
    ap.add_argument("--configs", default=",".join(CONFIGS))
    ap.add_argument(
        "--warm",
        action="store_true",
        help="draw one page before the clock starts (renderers up, "
        "fonts loaded): the steady-state cost per page of a long run",
    )
    ap.add_argument("--one", default=None, help=argparse.SUPPRESS)  # internal: one run, one config
    args = ap.parse_args(argv)
    corpus = Path(args.corpus)
    if args.one:
        pdfs = sorted(corpus.glob("*.pdf"))[: args.files]
        print(json.dumps(run_once(args.one, pdfs, args.size, args.warm)))
        return
    sys.path.insert(0, str(Path(__file__).parent))
    from pdf_corpus import write_corpus

    write_corpus(corpus)
    results: dict[str, list[dict]] = {c: [] for c in args.configs.split(",")}
    for run in range(args.runs):
        for config in results:  # interleaved, each in a fresh process
            out = subprocess.run(
                [
                    sys.executable,
                    __file__,
                    str(corpus),
                    "--one",
                    config,
                    "--files",
                    str(args.files),
                    "--size",
                    args.size,
                ]
                + (["--warm"] if args.warm else []),
                capture_output=True,
                text=True,
                check=True,
            )
            r = json.loads(out.stdout.strip().splitlines()[-1])
            results[config].append(r)
            print(
                f"run {run + 1} {config}: {r['pages_per_second']} pages/s, {r['cpu_ms_per_page']} CPU ms/page, "
                f"peak {r['peak_above_start_mb']} MB",
                file=sys.stderr,
            )
    summary = {
        c: {
            "pages_per_second": statistics.median(r["pages_per_second"] for r in rs),
            "cpu_ms_per_page": statistics.median(r["cpu_ms_per_page"] for r in rs),
            "peak_above_start_mb": statistics.median(r["peak_above_start_mb"] for r in rs),
            "mean_pixels": rs[0]["mean_pixels"],
            "pages": rs[0]["pages"],
            "runs": rs,
        }
        for c, rs in results.items()
    }
    print(json.dumps(summary, indent=1))


if __name__ == "__main__":
    main()
