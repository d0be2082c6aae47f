"""Embedding PDFs end to end: nomic-memory against the byaldi-style loop, on the CPU.

    uv run python benchmarks/pdf_embed.py [--files 2] [--pages 40] [--runs 3] [--batch-sizes 8,2]

Writes a corpus of ``--files`` PDFs x ``--pages`` pages (A4 and Letter, text and figures:
benchmarks/pdf_corpus.py) and the random ``medium`` ColQwen2.5 model (hidden 512, 6 layers,
vision 256 x 6, <= 768 visual tokens) under /tmp/nomic-memory-bench, then measures, each in a
fresh process and interleaved (run 1 of both, run 2 of both, ...), medians reported:

* **byaldi-style loop** (benchmarks/pdf_byaldi_loop.py): pdf2image at 200 DPI through poppler,
  every page of a file in memory, ``process_images`` + colpali-engine's forward one page at a time;
* **nomic-memory**: ``Embedder.embed_directory`` over the same folder into a fresh store (list,
  hash, plan, draw each page at the model's size in decode threads, batches of ``--batch-sizes``,
  store).

Both load the model before the clock starts; pages/s is pages over the embedding phase (for
nomic-memory, the whole ``embed_directory`` call, scan and store included); memory is the phase's
peak RSS above the loaded model.  Results: bench_out/pdf_embed.json.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = Path(tempfile.gettempdir()) / "nomic-memory-bench"
MB = 2**20

NOMIC = r"""
import json, sys, tempfile, time
from pathlib import Path
from nomic_memory import Embedder
from nomic_memory.memory import MemoryTracker
corpus, model, batch = sys.argv[1], sys.argv[2], int(sys.argv[3])
emb = Embedder(model, backend="cpu")
import lancedb  # an import is start-up cost, not throughput
with tempfile.TemporaryDirectory() as td:
    t0 = time.perf_counter()
    rep = emb.embed_directory(corpus, Path(td) / "store", batch_size=batch)
    dt = time.perf_counter() - t0
mem = rep.memory
print(json.dumps({"pages": rep.embedded, "failed": len(rep.failed), "seconds": dt,
                  "pages_per_second": rep.embedded / dt, "embed_phase_pages_per_second": rep.images_per_second,
                  "above_model_bytes": max(0, mem.peak_bytes - mem.baseline_bytes) if mem else 0,
                  "decode_workers": rep.decode_workers}))
"""


def _json_line(cmd: list[str]) -> dict:
    out = subprocess.run(cmd, capture_output=True, text=True, check=False)
    lines = [ln for ln in out.stdout.splitlines() if ln.startswith("{")]
    if out.returncode or not lines:
        raise SystemExit(f"{cmd[:3]} failed: {out.stderr[-3000:]}")
    return json.loads(lines[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--files", type=int, default=2)
    ap.add_argument("--pages", type=int, default=40)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--batch-sizes", default="8,2", help="nomic-memory's batch sizes to measure")
    args = ap.parse_args()
    sys.path.insert(0, str(HERE))
    from nomic_memory.model.tiny import build_tiny_model
    from pdf_corpus import write_corpus

    corpus = ROOT / f"pdfs-{args.files}x{args.pages}"
    if not corpus.is_dir() or len(list(corpus.glob("*.pdf"))) != args.files:
        write_corpus(corpus, files=args.files, pages=args.pages)
    model = ROOT / "models" / "medium-colqwen"
    if not (model / "config.json").is_file():
        build_tiny_model(model, "colqwen", "medium")
    print(f"{args.files} PDFs x {args.pages} pages in {corpus}, medium random model, CPU, {args.runs} runs", flush=True)
    sizes = [int(b) for b in args.batch_sizes.split(",")]
    res: dict[str, list[dict]] = {"byaldi-style loop": [], **{f"nomic-memory, batch {b}": [] for b in sizes}}
    for r in range(args.runs):
        for label in res:
            t = time.perf_counter()
            if label.startswith("nomic-memory"):
                out = _json_line([sys.executable, "-c", NOMIC, str(corpus), str(model), label.rsplit(" ", 1)[-1]])
            else:
                out = _json_line(
                    [sys.executable, str(HERE / "pdf_byaldi_loop.py"), str(corpus), "--model-name", str(model)]
                )
            res[label].append(out)
            print(
                f"  run {r + 1} {label:<18} {out['pages_per_second']:6.3f} pages/s  "
                f"{out['above_model_bytes'] / MB:8.1f} MB above model  ({time.perf_counter() - t:.0f} s)",
                flush=True,
            )
    med = {
        k: {m: statistics.median(x[m] for x in v) for m in ("pages_per_second", "above_model_bytes")}
        for k, v in res.items()
    }
    base = med["byaldi-style loop"]
    ratios = {
        k: (
            m["pages_per_second"] / base["pages_per_second"],
            m["above_model_bytes"] / max(1, base["above_model_bytes"]),
        )
        for k, m in med.items()
        if k.startswith("nomic")
    }
    print(f"\n| configuration | pages/s (median of {args.runs}) | peak above model (MB) |\n|---|---:|---:|")
    for k, m in med.items():
        print(f"| {k} | {m['pages_per_second']:.3f} | {m['above_model_bytes'] / MB:.1f} |")
    for k, (ratio, mem) in ratios.items():
        print(
            f"{k} / byaldi-style loop: {ratio:.2f}x pages/s (goal >= 2x); peak above model "
            f"{100 * mem:.0f} % of the loop's (goal <= 33 %)"
        )
    out = Path("bench_out") / "pdf_embed.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps({"medians": med, "ratios": ratios, "all": res}, indent=2))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
