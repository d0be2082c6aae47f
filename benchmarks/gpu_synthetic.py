"""GPU benchmark with synthetic weights: what colnomic-3b costs on a GPU.

    uv run python benchmarks/gpu_synthetic.py [--variant colnomic-3b] [--batch-sizes 1,2,4,8,16,32]
                                              [--visual-tokens 768] [--reps 3] [--peak-tflops N]
                                              [--image-only] [--pipeline-pages 64] [--out bench_out/gpu_synthetic.json]

Builds the variant's real architecture (Qwen2.5-VL-3B: 36 text layers of 2048, 151,936-token
vocabulary, 32-block 1280-wide vision tower) with random weights directly on the GPU in bf16
(nomic_memory.perf.bench.build_synthetic_model; nothing is downloaded or stored), then for each batch
size:

* **model**: ``encode.forward_embeddings`` on pre-processed pages of exactly ``--visual-tokens``
  tokens (672 x 896 pixels for 768), ``--reps`` timed repetitions after a warm-up:
  pages/s, achieved TFLOP/s (``plan.forward_flops``: useful FLOPs, no padding) and that as a
  fraction of the GPU's dense bf16 peak, peak memory allocated / reserved above the loaded model,
  and the memory planner's prediction;
* **pipeline** (``--pipeline-pages`` > 0): ``embed_directory`` end to end on a folder of generated
  A4 page scans at 300 dpi (JPEG), decode workers included, into a discarded store.

Prints a markdown table and writes JSON.  Needs CUDA.  Synthetic random weights: for memory and
throughput only.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

# Dense bf16 tensor-core peaks (TFLOP/s, no sparsity) by device-name fragment.
BF16_PEAK_TFLOPS = {
    "H200": 989.0,
    "H100 SXM": 989.0,
    "H100 NVL": 835.0,
    "H100 PCIe": 756.0,
    "H100": 756.0,
    "GH200": 989.0,
    "B200": 2250.0,
    "A100": 312.0,
    "A10G": 70.0,
    "A10": 125.0,
    "L40S": 362.0,
    "L40": 181.0,
    "L4": 121.0,
    "RTX 4090": 165.0,
    "RTX 3090": 71.0,
    "V100": 125.0,
    "T4": 65.0,
}


def bf16_peak(name: str) -> float | None:
    for frag in sorted(BF16_PEAK_TFLOPS, key=len, reverse=True):
        if frag in name:
            return BF16_PEAK_TFLOPS[frag]
    return None


def make_pages(d: Path, n: int) -> Path:
    import numpy as np

    from nomic_memory.ingest.samples import page

    d.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    first = page(2480, 3508, rng)
    for i in range(n):  # a few distinct pages, repeated: decoding cost is what matters
        img = first if i % 4 else page(2480, 3508, rng)
        img.save(d / f"page_{i:04d}.jpg", quality=85)
    return d


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--variant", default="colnomic-3b")
    ap.add_argument("--batch-sizes", default="1,2,4,8,16,32")
    ap.add_argument("--visual-tokens", type=int, default=768)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--peak-tflops", type=float, default=None, help="the GPU's dense bf16 peak (default: by name)")
    ap.add_argument("--image-only", action="store_true")
    ap.add_argument("--pipeline-pages", type=int, default=64)
    ap.add_argument("--out", default="bench_out/gpu_synthetic.json")
    ap.add_argument(
        "--smoke",
        action="store_true",
        help="check the script on a CPU: 1 text layer, 1 vision block, 16 visual tokens, batch 1,2",
    )
    args = ap.parse_args()
    if args.smoke:
        args.batch_sizes, args.visual_tokens, args.reps, args.pipeline_pages = "1,2", 16, 1, 2

    import torch
    from PIL import Image

    from nomic_memory.model.backends import select_backend
    from nomic_memory.model.collate import collate_flat, prepare_image
    from nomic_memory.model.encode import forward_embeddings
    from nomic_memory.perf.bench import SYNTHETIC_LABEL, build_synthetic_model
    from nomic_memory.perf.plan import Arch, forward_flops, plan_for_model

    cuda = torch.cuda.is_available() and not args.smoke
    if not cuda and not args.smoke:
        raise SystemExit("needs a CUDA GPU (or --smoke to check the script on a CPU)")
    backend = select_backend("cuda" if cuda else "cpu")
    dev = torch.cuda.get_device_name(0) if cuda else "CPU (smoke test)"
    peak_tflops = args.peak_tflops or bf16_peak(dev)
    sync = torch.cuda.synchronize if cuda else (lambda: None)
    if cuda:
        allocated, max_allocated, max_reserved = (
            torch.cuda.memory_allocated,
            torch.cuda.max_memory_allocated,
            torch.cuda.max_memory_reserved,
        )
        reset_peak = torch.cuda.reset_peak_memory_stats
    else:
        from nomic_memory.memory import current_rss_bytes, peak_rss_bytes, reset_peak_rss

        allocated, max_allocated, max_reserved, reset_peak = (
            current_rss_bytes,
            peak_rss_bytes,
            peak_rss_bytes,
            reset_peak_rss,
        )
    t = time.perf_counter()
    scale = {"layers": 1, "vision_depth": 1} if args.smoke else {}
    lm = build_synthetic_model(
        args.variant, backend, image_only=args.image_only, visual_tokens=args.visual_tokens, **scale
    )
    sync()
    build_s = time.perf_counter() - t
    model_bytes = allocated()
    arch = Arch.from_config(lm.model.config, args.variant)
    print(
        f"{dev}: {args.variant} ({SYNTHETIC_LABEL}), {backend.dtype_name}, {backend.attn_implementation}; "
        f"built in {build_s:.1f} s, {model_bytes / 2**30:.2f} GiB allocated; bf16 peak {peak_tflops} TFLOP/s",
        flush=True,
    )

    # One page of exactly visual_tokens tokens: (h/28) x (w/28) = visual_tokens.
    side = {768: (672, 896), 1024: (784, 1148), 16: (112, 112)}.get(args.visual_tokens)
    if side is None:
        import math

        hh = int(math.sqrt(args.visual_tokens * 3 / 4))
        side = (hh * 28, (args.visual_tokens // hh) * 28)
    page_img = Image.new("RGB", (side[1], side[0]), (240, 240, 240))
    item = prepare_image(lm.processor, page_img)
    tokens = int(item.image_grid_thw.prod()) // 4
    proc = lm.processor
    prompt = len(proc.tokenizer(proc.visual_prompt_prefix)["input_ids"]) - 1
    flops = forward_flops(arch, tokens, prompt)
    pad = proc.tokenizer.pad_token_id
    rows = []
    for bs in [int(b) for b in args.batch_sizes.split(",")]:
        items = [item] * bs
        plan = plan_for_model(lm, batch_size=bs, token_counts=[tokens] * bs)
        try:
            forward_embeddings(lm, collate_flat(items, pad, pin_memory=cuda))  # warm-up
            sync()
            reset_peak()
            times = []
            for _ in range(args.reps):
                batch = collate_flat(items, pad, pin_memory=cuda)
                sync()
                t = time.perf_counter()
                forward_embeddings(lm, batch)
                sync()
                times.append(time.perf_counter() - t)
            sec = statistics.median(times)
            peak = max_allocated()
            reserved = max_reserved()
            tfl = flops * bs / sec / 1e12
            row = {
                "batch_size": bs,
                "visual_tokens": tokens,
                "seconds": sec,
                "pages_per_second": bs / sec,
                "tflops": tfl,
                "fraction_of_peak": (tfl / peak_tflops) if peak_tflops else None,
                "peak_allocated_bytes": peak,
                "peak_reserved_bytes": reserved,
                "above_model_bytes": peak - model_bytes,
                "planned_peak_bytes": plan.peak_bytes,
                "planned_activation_bytes": plan.activation_bytes,
            }
        except torch.OutOfMemoryError as e:
            if cuda:
                torch.cuda.empty_cache()
            row = {"batch_size": bs, "error": f"out of memory: {str(e).splitlines()[0]}"}
        rows.append(row)
        if "error" in row:
            print(f"batch {bs}: {row['error']}", flush=True)
        else:
            print(
                f"batch {bs:3d}: {row['pages_per_second']:7.2f} pages/s  {row['tflops']:6.1f} TFLOP/s"
                + (f" ({100 * row['fraction_of_peak']:.0f} % of peak)" if peak_tflops else "")
                + f"  peak {peak / 2**30:6.2f} GiB allocated, {reserved / 2**30:6.2f} GiB reserved"
                f" (planned {plan.peak_bytes / 2**30:.2f} GiB)",
                flush=True,
            )

    pipeline = None
    if args.pipeline_pages:
        from nomic_memory import Embedder
        from nomic_memory.perf.bench import _null_store

        with tempfile.TemporaryDirectory() as td:
            pages = make_pages(Path(td) / "pages", args.pipeline_pages)
            if args.smoke:
                for p in pages.iterdir():
                    Image.open(p).resize((124, 175)).save(p)
            bs = max(r["batch_size"] for r in rows if "error" not in r)
            t = time.perf_counter()
            rep = Embedder.from_loaded(lm).embed_directory(pages, _null_store(), batch_size=bs)
            total = time.perf_counter() - t
            pipeline = {
                "pages": rep.embedded,
                "batch_size": bs,
                "seconds": total,
                "pages_per_second": rep.embedded / total,
                "embed_pages_per_second": rep.images_per_second,
                "decode_workers": rep.decode_workers,
                "peak_allocated_bytes": rep.memory.peak_bytes,
            }
            print(
                f"pipeline: {rep.embedded} A4 JPEG pages at batch {bs}: {rep.embedded / total:.2f} pages/s "
                f"end to end ({rep.decode_workers} decode workers)",
                flush=True,
            )

    print(
        f"\n{dev}, {args.variant}, {SYNTHETIC_LABEL}, {tokens} visual tokens per page, "
        f"{flops / 1e12:.2f} TFLOP per page"
    )
    print("| batch | pages/s | TFLOP/s | % of bf16 peak | peak allocated (GiB) | reserved (GiB) | planned (GiB) |")
    print("|---:|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        if "error" in r:
            print(f"| {r['batch_size']} | {r['error']} | | | | | |")
            continue
        frac = f"{100 * r['fraction_of_peak']:.0f}" if r["fraction_of_peak"] else "?"
        print(
            f"| {r['batch_size']} | {r['pages_per_second']:.2f} | {r['tflops']:.1f} | {frac} | "
            f"{r['peak_allocated_bytes'] / 2**30:.2f} | {r['peak_reserved_bytes'] / 2**30:.2f} | "
            f"{r['planned_peak_bytes'] / 2**30:.2f} |"
        )
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(
        json.dumps(
            {
                "device": dev,
                "variant": args.variant,
                "label": SYNTHETIC_LABEL,
                "dtype": backend.dtype_name,
                "attn": backend.attn_implementation,
                "model_bytes": model_bytes,
                "build_seconds": build_s,
                "flops_per_page": flops,
                "bf16_peak_tflops": peak_tflops,
                "rows": rows,
                "pipeline": pipeline,
                "torch": torch.__version__,
            },
            indent=2,
        )
    )
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
