"""``nomic-memory bench`` and ``nomic-memory plan`` (registered on the main CLI app)."""

from __future__ import annotations

import json
import tempfile
from pathlib import Path
from typing import Optional

import typer

from .common import EXIT_FATAL, EXIT_OK, EXIT_USAGE, fail, setup_logging

_VARIANT_HELP = "colnomic-7b, colnomic-3b, nomic-7b, nomic-3b (comma-separated: several)"


def _split(value: Optional[str]) -> list[str]:
    return [v.strip() for v in (value or "").split(",") if v.strip()]


def _batch_sizes(value: str) -> list[int]:
    try:
        sizes = [int(v) for v in _split(value)]
    except ValueError:
        raise fail(f"--batch-sizes must be comma-separated integers, not {value!r}", EXIT_USAGE)
    if not sizes or any(s < 1 for s in sizes):
        raise fail("--batch-sizes needs at least one size, each >= 1", EXIT_USAGE)
    return sorted(set(sizes))


def bench(
    directory: Optional[Path] = typer.Argument(None, help="Images to embed (default: a generated sample set)."),
    model_variant: Optional[str] = typer.Option(None, "--model-variant", help=_VARIANT_HELP),
    model_name: Optional[str] = typer.Option(None, "--model-name", help="Hub id or local directory (comma-separated: several)."),
    batch_sizes: str = typer.Option("1,2,4,8,16,32", "--batch-sizes", help="Batch sizes to sweep."),
    backend: str = typer.Option("auto", "--backend", help="auto, cuda, mps, cpu (comma-separated: several)."),
    image_only: bool = typer.Option(False, "--image-only", help="Measure image-only mode only."),
    both_modes: bool = typer.Option(False, "--both-modes", help="Measure full and image-only mode."),
    synthetic_weights: bool = typer.Option(False, "--synthetic-weights", help="The variant's real architecture with random weights, built on the device (memory/throughput only; nothing is stored)."),
    synthetic_layers: Optional[int] = typer.Option(None, "--synthetic-layers", min=1, help="Scale the synthetic model's text layers down (e.g. 2, for a quick CPU try)."),
    synthetic_vision_depth: Optional[int] = typer.Option(None, "--synthetic-vision-depth", min=1, help="Scale the synthetic vision tower's depth down."),
    visual_tokens: Optional[int] = typer.Option(None, "--visual-tokens", min=4, help="Cap on visual tokens per image (synthetic default 768)."),
    images: int = typer.Option(24, "--images", min=1, help="Sample images to generate when DIR is omitted."),
    runs: int = typer.Option(3, "--runs", min=1, help="Runs per configuration; the median is reported."),
    workers: Optional[int] = typer.Option(None, "--workers", min=0, help="Decode worker processes (default: automatic)."),
    dtype: str = typer.Option("auto", "--dtype", help="auto, bfloat16, float16, float32."),
    out_dir: Path = typer.Option(Path("bench_out"), "--out-dir", help="Where bench.json and bench.png go."),
    in_process: bool = typer.Option(False, "--in-process", help="Measure in this process (faster; CPU peaks then carry over between configurations)."),
    json_out: bool = typer.Option(False, "--json", help="Also print the JSON results on stdout."),
    verbose: bool = typer.Option(False, "--verbose", "-v"),
) -> None:
    """Sweep batch sizes (x modes, models, backends): peak memory, time, images/s, and the plan."""
    setup_logging(verbose)
    from ..backends import BACKENDS
    from ..bench import SYNTHETIC_LABEL, BenchConfig, make_sample_images, run_bench, table_markdown, write_json, write_plot
    from ..variants import VARIANTS

    sizes = _batch_sizes(batch_sizes)
    variants = _split(model_variant)
    names = _split(model_name)
    backends = _split(backend) or ["auto"]
    for v in variants:
        if v not in VARIANTS:
            raise fail(f"unknown model variant {v!r}; choose one of {', '.join(VARIANTS)}", EXIT_USAGE)
    for b in backends:
        if b not in BACKENDS:
            raise fail(f"unknown backend {b!r}; choose one of {', '.join(BACKENDS)}", EXIT_USAGE)
    if image_only and both_modes:
        raise fail("--image-only and --both-modes exclude each other", EXIT_USAGE)
    if synthetic_weights and names:
        raise fail("--synthetic-weights builds a variant's architecture: use --model-variant, not --model-name",
                   EXIT_USAGE)
    if (synthetic_layers or synthetic_vision_depth) and not synthetic_weights:
        raise fail("--synthetic-layers/--synthetic-vision-depth need --synthetic-weights", EXIT_USAGE)
    if not variants and not names:
        variants = ["colnomic-7b"]
    if directory is not None and not directory.is_dir():
        raise fail(f"not a directory: {directory}")
    modes = [False, True] if both_modes else [image_only]
    tmp = None
    if directory is None:
        tmp = tempfile.TemporaryDirectory(prefix="nomic-memory-bench-images-")
        directory = make_sample_images(Path(tmp.name) / "images", images)
        typer.echo(f"No directory given: generated {images} sample images (pages, photos, screenshots, snaps, icons)")
    if synthetic_weights:
        typer.echo(f"Model: {', '.join(variants)} architecture with {SYNTHETIC_LABEL}")
    models = [(None, v) for v in variants] + [(n, None) for n in names]
    configs = [BenchConfig(str(directory.resolve()), bs, image_only=m, backend=be, model_name=n, variant=v,
                           synthetic=synthetic_weights, synthetic_layers=synthetic_layers,
                           synthetic_vision_depth=synthetic_vision_depth, visual_tokens=visual_tokens,
                           workers=workers, dtype=None if dtype == "auto" else dtype)
               for n, v in models for be in backends for m in modes for bs in sizes]
    typer.echo(f"Measuring {len(configs)} configurations x {runs} runs, "
               f"{'in this process' if in_process else 'each in a fresh process'}")

    def progress(run: int, res: dict) -> None:
        if "error" in res:
            typer.echo(f"  run {run + 1}: {res['model']} batch {res['batch_size']} {res['mode']}: {res['error']}", err=True)
        else:
            typer.echo(f"  run {run + 1}: {res['model']} {res['resolved_backend']} batch {res['batch_size']} "
                       f"{res['mode']}: {res['images_per_second']:.2f} images/s, "
                       f"{res['above_model_bytes'] / 2**20:.1f} MB above model")

    try:
        results = run_bench(configs, runs=runs, isolate=not in_process, on_result=progress)
    finally:
        if tmp is not None:
            tmp.cleanup()
    title = f"nomic-memory bench: {', '.join(variants + names)}"
    meta = {"directory": str(directory), "runs": runs, "isolated": not in_process, "batch_sizes": sizes,
            "synthetic": synthetic_weights, "label": SYNTHETIC_LABEL if synthetic_weights else ""}
    json_path = write_json(results, out_dir / "bench.json", meta)
    png_path = write_plot(results, out_dir / "bench.png", title)
    typer.echo("")
    if synthetic_weights:
        typer.echo(f"** {SYNTHETIC_LABEL} **")
    typer.echo(table_markdown(results))
    typer.echo(f"\nMedians of {runs} runs. 'Above model' is the peak while embedding minus the memory in use once "
               "the model was loaded; 'Planned' is nomic-memory plan's prediction for the same batches.")
    typer.echo(f"Wrote {json_path} and {png_path}")
    if json_out:
        typer.echo(json.dumps({"meta": meta, "results": results}, default=str))
    failed = [r for r in results if r.get("errors") or ("error" in r and not r.get("runs"))]
    raise typer.Exit(EXIT_FATAL if failed and len(failed) == len(results) else EXIT_OK)


def plan(
    model_variant: str = typer.Option("colnomic-7b", "--model-variant", help=_VARIANT_HELP.split(" (")[0]),
    model_name: Optional[Path] = typer.Option(None, "--model-name", help="A local model directory (its config.json) instead of a variant."),
    batch_size: int = typer.Option(8, "--batch-size", min=1),
    visual_tokens: int = typer.Option(768, "--visual-tokens", min=4, help="Visual tokens per image (the processor's cap)."),
    backend: str = typer.Option("cuda", "--backend", help="cuda (bf16), mps (fp16) or cpu (fp32)."),
    image_only: bool = typer.Option(False, "--image-only", help="Plan for image-only mode (no text-embedding table)."),
    attn: str = typer.Option("sdpa", "--attn", help="sdpa, flash_attention_2 or eager."),
    forward: str = typer.Option("lean", "--forward", help="lean (nomic-memory) or colpali (colpali-engine's forward)."),
    dtype: Optional[str] = typer.Option(None, "--dtype", help="Override the backend's dtype: bfloat16, float16, float32."),
    json_out: bool = typer.Option(False, "--json", help="Print the plan as JSON."),
) -> None:
    """Predict peak memory for a batch from the architecture and token counts (weights + activations)."""
    setup_logging(False)
    from ..plan import Arch, plan_memory
    from ..variants import VARIANTS

    if backend not in ("cuda", "mps", "cpu"):
        raise fail(f"unknown backend {backend!r}; choose cuda, mps or cpu", EXIT_USAGE)
    if attn not in ("sdpa", "flash_attention_2", "eager"):
        raise fail(f"unknown attention {attn!r}; choose sdpa, flash_attention_2 or eager", EXIT_USAGE)
    if forward not in ("lean", "colpali"):
        raise fail(f"unknown forward {forward!r}; choose lean or colpali", EXIT_USAGE)
    sizes = {"bfloat16": 2, "float16": 2, "float32": 4}
    if dtype is not None and dtype not in sizes:
        raise fail(f"unknown dtype {dtype!r}; choose bfloat16, float16 or float32", EXIT_USAGE)
    if model_name is not None:
        cfg_path = model_name / "config.json"
        if not cfg_path.is_file():
            raise fail(f"{model_name} has no config.json (a PEFT adapter? plan its base with --model-variant)")
        from transformers import AutoConfig

        try:
            cfg = AutoConfig.from_pretrained(str(model_name))
            arch = Arch.from_config(cfg, model_name.name)
        except Exception as e:
            raise fail(f"cannot read a Qwen2.5-VL configuration from {cfg_path}: {e}")
        archs = json.loads(cfg_path.read_text()).get("architectures") or []
        kind = "biqwen" if any(a.startswith("BiQwen") for a in archs) else "colqwen"
    else:
        if model_variant not in VARIANTS:
            raise fail(f"unknown model variant {model_variant!r}; choose one of {', '.join(VARIANTS)}", EXIT_USAGE)
        arch = Arch.for_variant(model_variant)
        kind = VARIANTS[model_variant].kind
    p = plan_memory(arch, batch_size=batch_size, visual_tokens=visual_tokens, kind=kind, backend=backend,
                    dtype_bytes=sizes.get(dtype) if dtype else None, image_only=image_only, attn=attn, forward=forward)
    if json_out:
        typer.echo(json.dumps(p.to_dict(), default=str))
    else:
        for line in p.lines():
            typer.echo(line)
    raise typer.Exit(EXIT_OK)
