"""The byaldi-style PDF loop: the baseline for embedding documents.

    for each PDF:
        images = pdf2image.convert_from_path(pdf, dpi=200)   # poppler's pdftoppm; every page in memory
        for each page image:
            batch = processor.process_images([image])         # the processor downscales ~3.9 MP pages
            embedding = model(**batch)                         # colpali-engine's own forward, one page
            keep the embedding

This is what byaldi's ``index`` does for a PDF (pdf2image's default 200 DPI, one page per forward).

    python benchmarks/pdf_byaldi_loop.py CORPUS_DIR --model-name MODEL_DIR [--files 4] [--backend cpu]

prints one JSON line.  From Python, one call: ``measure(corpus_dir, model_dir)`` (or
``byaldi_loop(model, processor, pdfs, device)`` with a model already loaded).  As in
``card_loop.py``: the model is loaded (colpali-engine's classes, as the model card does) before
the clock starts; ``pages_per_second`` counts from the first PDF opened to the last embedding on
the host; ``above_model_bytes`` is the phase's peak memory above what the process held with the
model loaded (CPU: peak RSS; CUDA: the allocator's peak).  A tiny random model for a machine
without downloads: ``nomic_memory.model.tiny.build_tiny_model(dir, "colqwen", "medium")``.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from card_loop import load_reference, on_the_clock  # noqa: E402 - the model card's loading and clock, shared


def byaldi_loop(model, processor, pdfs: list[Path], device, dpi: int = 200) -> list[torch.Tensor]:
    """The loop itself; returns one embedding per page, in document order."""
    from pdf2image import convert_from_path

    out: list[torch.Tensor] = []
    for pdf in pdfs:
        images = convert_from_path(str(pdf), dpi=dpi)
        for image in images:
            batch = processor.process_images([image]).to(device)
            with torch.no_grad():
                embedding = model(**batch)
            out.append(embedding[0].to("cpu"))
        del images
    return out


def measure(
    corpus: str | Path,
    model_dir: str | Path,
    backend_name: str = "cpu",
    files: int | None = None,
    kind: str | None = None,
    dpi: int = 200,
) -> dict:
    """Load the model, run the loop over the corpus's PDFs (the first ``files``), report."""
    from nomic_memory.model.backends import select_backend
    from nomic_memory.model.variants import detect_kind_from_files

    backend = select_backend(backend_name)
    kind = kind or detect_kind_from_files(model_dir)
    model, processor = load_reference(model_dir, kind, backend)
    pdfs = sorted(Path(corpus).glob("*.pdf"))[:files]
    embeddings, figures = on_the_clock(backend, lambda: byaldi_loop(model, processor, pdfs, backend.device, dpi))
    n, seconds = len(embeddings), figures["seconds"]
    return {
        "impl": "byaldi-loop",
        "dpi": dpi,
        "files": len(pdfs),
        "pages": n,
        "pages_per_second": n / seconds,
        **figures,
    }


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("corpus", help="folder of PDFs (benchmarks/pdf_corpus.py writes one)")
    ap.add_argument("--model-name", required=True, help="local model directory")
    ap.add_argument("--files", type=int, default=None, help="only the first N PDFs")
    ap.add_argument("--backend", default="cpu")
    ap.add_argument("--kind", default=None)
    ap.add_argument("--dpi", type=int, default=200)
    ap.add_argument("--threads", type=int, default=None)
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    print(json.dumps(measure(args.corpus, args.model_name, args.backend, args.files, args.kind, args.dpi)))
    sys.stdout.flush()


if __name__ == "__main__":
    main()
