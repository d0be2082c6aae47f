"""The hand-written loop the model cards (and the project's original README) suggest: the baseline.

    for each fixed batch of files, in file order:
        images = [PIL.Image.open(p).convert("RGB") ...]      # every image decoded at full size
        batch = processor.process_images(images)               # the processor resizes from full size
        embeddings = model(**batch)                            # colpali-engine's own forward
        keep the embeddings

Nothing else: no draft decoding, no prefetching, no sorting by size, colpali-engine's forward
(which asks the backbone for every layer's hidden states and projects the padded rectangle).

Run on its own, it measures one configuration in this process and prints one JSON line:

    python benchmarks/card_loop.py DIR --model-name MODEL_DIR --batch-size 8 [--backend cpu]

``images_per_second`` counts from the first file opened to the last embedding on the host (the
model is loaded before the clock starts, as for nomic-memory); ``above_model_bytes`` is the peak
memory of that phase above what the process held once the model was loaded (CPU: peak RSS, with
the kernel's high-water mark reset after loading; CUDA: the allocator's peak).
"""

from __future__ import annotations

import argparse
import gc
import json
import sys
import time
from pathlib import Path

import torch
from PIL import Image


def load_reference(model_dir: str | Path, kind: str, backend) -> tuple[torch.nn.Module, object]:
    """colpali-engine's model and processor, loaded the way the model card does."""
    from colpali_engine.models import BiQwen2_5, BiQwen2_5_Processor, ColQwen2_5, ColQwen2_5_Processor

    from nomic_memory.model.loading import BIQWEN_KEY_MAPPING

    torch.manual_seed(0)
    if kind == "colqwen":
        model = ColQwen2_5.from_pretrained(
            str(model_dir), dtype=backend.dtype, attn_implementation=backend.attn_implementation
        )
        processor = ColQwen2_5_Processor.from_pretrained(str(model_dir))
    else:
        model = BiQwen2_5.from_pretrained(
            str(model_dir),
            dtype=backend.dtype,
            attn_implementation=backend.attn_implementation,
            key_mapping=dict(BIQWEN_KEY_MAPPING),
        )
        processor = BiQwen2_5_Processor.from_pretrained(str(model_dir))
    return model.to(backend.device).eval(), processor


def card_loop(model, processor, paths: list[Path], batch_size: int, device) -> list[torch.Tensor]:
    """The loop itself; returns one embedding tensor per image (padded rows included, as the card
    keeps them)."""
    out: list[torch.Tensor] = []
    for i in range(0, len(paths), batch_size):
        images = [Image.open(p).convert("RGB") for p in paths[i : i + batch_size]]
        batch = processor.process_images(images).to(device)
        with torch.no_grad():
            embeddings = model(**batch)
        out.extend(torch.unbind(embeddings.to("cpu")))
    return out


def on_the_clock(backend, loop) -> tuple[list[torch.Tensor], dict]:
    """``loop()`` timed and under the memory tracker, the model already loaded: its embeddings and
    the figures every baseline reports (seconds, the backend, peak memory above the model, threads)."""
    from nomic_memory.memory import MemoryTracker, current_rss_bytes

    gc.collect()
    tracker = MemoryTracker(backend.name, backend.device).start()
    model_bytes = tracker.baseline
    t0 = time.perf_counter()
    embeddings = loop()
    if backend.name == "cuda":
        torch.cuda.synchronize()
    seconds = time.perf_counter() - t0
    mem = tracker.stop()
    return embeddings, {
        "seconds": seconds,
        "backend": backend.name,
        "peak_bytes": mem.peak_bytes,
        "model_bytes": model_bytes,
        "above_model_bytes": max(0, mem.peak_bytes - model_bytes),
        "rss_after_bytes": current_rss_bytes(),
        "threads": torch.get_num_threads(),
    }


def measure(
    directory: str | Path, model_dir: str | Path, batch_size: int, backend_name: str = "cpu", kind: str | None = None
) -> dict:
    from nomic_memory.ingest.images import discover_images
    from nomic_memory.model.backends import select_backend
    from nomic_memory.model.variants import detect_kind_from_files

    backend = select_backend(backend_name)
    kind = kind or detect_kind_from_files(model_dir)
    model, processor = load_reference(model_dir, kind, backend)
    paths = discover_images(directory)
    embeddings, figures = on_the_clock(backend, lambda: card_loop(model, processor, paths, batch_size, backend.device))
    n, seconds = len(embeddings), figures["seconds"]
    return {"impl": "card-loop", "batch_size": batch_size, "images": n, "images_per_second": n / seconds, **figures}


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("directory")
    ap.add_argument("--model-name", required=True, help="local model directory")
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--backend", default="cpu")
    ap.add_argument("--kind", default=None)
    ap.add_argument(
        "--threads",
        type=int,
        default=None,
        help="torch intra-op threads (default: torch's own choice, as a user's script has)",
    )
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    print(json.dumps(measure(args.directory, args.model_name, args.batch_size, args.backend, args.kind)))
    sys.stdout.flush()


if __name__ == "__main__":
    main()
