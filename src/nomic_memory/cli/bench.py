"""``nomic-memory bench`` and ``nomic-memory plan``."""

from __future__ import annotations

import json
import tempfile
from enum import Enum
from pathlib import Path
from typing import Optional

import typer

from nomic_memory.cli.common import (
    DTYPE,
    EXIT_FATAL,
    EXIT_OK,
    EXIT_USAGE,
    VERBOSE,
    BackendChoice,
    DtypeChoice,
    fail,
    json_option,
    model_name_option,
    number_option,
    setup_logging,
    value_option,
    workers_option,
)
from nomic_memory.errors import BenchSetupError
from nomic_memory.model.variants import VARIANTS
from nomic_memory.perf.plan import GB, Arch, guess_backend, image_tokens, plan_memory, resized_size

# Neither command imports torch or transformers before it needs them: `plan` reads a
# --model-name's config.json with transformers only, and never imports torch.
_VARIANT_HELP = "colnomic-7b, colnomic-3b, nomic-7b, nomic-3b (comma-separated: several)"


# The options `bench` and `plan` share (each with its own default and help).
def _variants_option(help: str):
    return value_option("--model-variant", "VARIANTS", help)


def _batch_sizes_option(default: str, help: str, *aliases: str):
    return typer.Option(default, "--batch-sizes", *aliases, metavar="N,N,...", help=help)


def _visual_tokens_option(default: int | None, help: str):
    return number_option(default, "--visual-tokens", help, min=4)


class AttnChoice(str, Enum):
    sdpa = "sdpa"
    flash_attention_2 = "flash_attention_2"
    eager = "eager"


class ForwardChoice(str, Enum):
    lean = "lean"
    colpali = "colpali"
    colpali_dense_mask = "colpali-dense-mask"


DTYPE_BYTES = {"bfloat16": 2, "float16": 2, "float32": 4}


def _split(value: Optional[str]) -> list[str]:
    return [v.strip() for v in (value or "").split(",") if v.strip()]


def _variants(value: Optional[str]) -> list[str]:
    variants = _split(value)
    for v in variants:
        if v not in VARIANTS:
            raise fail(f"unknown model variant {v!r}; choose one of {', '.join(VARIANTS)}", EXIT_USAGE)
    return variants


def _batch_sizes(value: str) -> list[int]:
    try:
        sizes = [int(v) for v in _split(value)]
    except ValueError:
        raise fail(f"--batch-sizes must be comma-separated integers, not {value!r}", EXIT_USAGE)
    if not sizes or any(s < 1 for s in sizes):
        raise fail("--batch-sizes needs at least one size, each >= 1", EXIT_USAGE)
    return sorted(set(sizes))


# Long: twenty options to check against each other before the sweep starts, then the report.
def bench(
    directory: Optional[Path] = typer.Argument(
        None, metavar="DIR", help="Images to embed (default: a generated sample set)."
    ),
    model_variant: Optional[str] = _variants_option(_VARIANT_HELP),
    model_name: Optional[str] = model_name_option("NAMES", "Hub id or local directory (comma-separated: several)."),
    batch_sizes: str = _batch_sizes_option("1,2,4,8,16,32", "Batch sizes to sweep."),
    backend: str = typer.Option(
        "auto", "--backend", metavar="BACKENDS", help="auto, cuda, mps, cpu (comma-separated: several)."
    ),
    image_only: bool = typer.Option(False, "--image-only", help="Measure image-only mode only."),
    both_modes: bool = typer.Option(False, "--both-modes", help="Measure full and image-only mode."),
    synthetic_weights: bool = typer.Option(
        False,
        "--synthetic-weights",
        help="The variant's real architecture with random weights, built on the device (memory/throughput only; nothing is stored).",
    ),
    synthetic_layers: Optional[int] = number_option(
        None, "--synthetic-layers", "Scale the synthetic model's text layers down (e.g. 2, for a quick CPU try).", min=1
    ),
    synthetic_vision_depth: Optional[int] = number_option(
        None, "--synthetic-vision-depth", "Scale the synthetic vision tower's depth down.", min=1
    ),
    visual_tokens: Optional[int] = _visual_tokens_option(
        None, "Cap on visual tokens per image (synthetic default 768)."
    ),
    images: int = number_option(24, "--images", "Sample images to generate when DIR is omitted.", min=1),
    runs: int = number_option(3, "--runs", "Runs per configuration; the median is reported.", min=1),
    workers: Optional[int] = workers_option("Decode worker processes (default: automatic)."),
    dtype: DtypeChoice = DTYPE,
    out_dir: Path = value_option("--out-dir", "DIR", "Where bench.json and bench.png go.", default=Path("bench_out")),
    in_process: bool = typer.Option(
        False,
        "--in-process",
        help="Measure in this process (faster; CPU peaks then carry over between configurations).",
    ),
    json_out: bool = json_option("Also print the JSON results on stdout."),
    verbose: bool = VERBOSE,
) -> None:
    """Sweep batch sizes (x modes, models, backends): peak memory, time, images/s, and the plan."""
    setup_logging(verbose)
    sizes = _batch_sizes(batch_sizes)
    variants = _variants(model_variant)
    names = _split(model_name)
    backends = _check_backends(_split(backend) or ["auto"])  # before torch loads and images are made
    from nomic_memory.perf.bench import (  # late: torch (a second)
        SYNTHETIC_LABEL,
        BenchConfig,
        make_sample_images,
        run_bench,
        table_markdown,
        write_json,
        write_plot,
    )

    if image_only and both_modes:
        raise fail("--image-only and --both-modes exclude each other", EXIT_USAGE)
    if synthetic_weights and names:
        raise fail(
            "--synthetic-weights builds a variant's architecture: use --model-variant, not --model-name", EXIT_USAGE
        )
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
    configs = [
        BenchConfig(
            str(directory.resolve()),
            bs,
            image_only=m,
            backend=be,
            model_name=n,
            variant=v,
            synthetic=synthetic_weights,
            synthetic_layers=synthetic_layers,
            synthetic_vision_depth=synthetic_vision_depth,
            visual_tokens=visual_tokens,
            workers=workers,
            dtype=None if dtype is DtypeChoice.auto else dtype.value,
        )
        for n, v in models
        for be in backends
        for m in modes
        for bs in sizes
    ]
    typer.echo(
        f"Measuring {len(configs)} configurations x {runs} runs, "
        f"{'in this process' if in_process else 'each in a fresh process'}"
    )

    def progress(run: int, res: dict) -> None:
        if "error" in res:
            typer.echo(
                f"  run {run + 1}: {res['model']} batch {res['batch_size']} {res['mode']}: {res['error']}", err=True
            )
        else:
            typer.echo(
                f"  run {run + 1}: {res['model']} {res['resolved_backend']} batch {res['batch_size']} "
                f"{res['mode']}: {res['images_per_second']:.2f} images/s, "
                f"{res['above_model_bytes'] / 2**20:.1f} MB above model"
            )

    try:
        results = run_bench(configs, runs=runs, isolate=not in_process, on_result=progress)
    except BenchSetupError as e:  # every other configuration would fail alike
        raise fail(f"cannot benchmark {e}")
    finally:
        if tmp is not None:
            tmp.cleanup()
    title = f"nomic-memory bench: {', '.join(variants + names)}"
    meta = {
        "directory": str(directory),
        "runs": runs,
        "isolated": not in_process,
        "batch_sizes": sizes,
        "synthetic": synthetic_weights,
        "label": SYNTHETIC_LABEL if synthetic_weights else "",
    }
    json_path = write_json(results, out_dir / "bench.json", meta)
    png_path = write_plot(results, out_dir / "bench.png", title)
    typer.echo("")
    if synthetic_weights:
        typer.echo(f"** {SYNTHETIC_LABEL} **")
    typer.echo(table_markdown(results))
    typer.echo(
        f"\nMedians of {runs} runs. 'Above model' is the peak while embedding minus the memory in use once "
        "the model was loaded; 'Planned' is nomic-memory plan's prediction for the same batches."
    )
    typer.echo(f"Wrote {json_path} and {png_path}")
    if json_out:
        typer.echo(json.dumps({"meta": meta, "results": results}, default=str))
    failed = [r for r in results if r.get("errors") or ("error" in r and not r.get("runs"))]
    raise typer.Exit(EXIT_FATAL if failed and len(failed) == len(results) else EXIT_OK)


def _check_backends(backends: list[str]) -> list[str]:
    """Every backend named is known and present: refused in a moment (a machine with no NVIDIA
    driver or no Apple silicon, without importing torch), then asked of torch (a driver but no
    device), before any image is generated or any model loaded."""
    known = [c.value for c in BackendChoice]
    for b in backends:
        if b not in known:
            raise fail(f"unknown backend {b!r}; choose one of {', '.join(known)}", EXIT_USAGE)
    present, _ = guess_backend()
    for b in backends:
        if b == "cuda" and present != "cuda":
            raise fail(
                "backend 'cuda' was requested but this machine has no NVIDIA driver (no CUDA device); "
                "use --backend auto or cpu"
            )
        if b == "mps" and present != "mps":
            raise fail(
                "backend 'mps' was requested but Apple MPS is not available on this machine; use --backend auto or cpu"
            )
    if any(b in ("cuda", "mps") for b in backends):
        from nomic_memory.model.backends import select_backend  # late: torch (a second); only to ask it about a device

        for b in backends:
            if b != "auto":
                select_backend(b)  # BackendUnavailable: one line, exit 1
    return backends


def plan(
    model_variant: Optional[str] = _variants_option(
        _VARIANT_HELP + "; default colnomic-7b unless --model-name is given"
    ),
    model_name: Optional[str] = model_name_option(
        "DIRS", "Local model directories (their config.json) instead of variants (comma-separated: several)."
    ),
    batch_sizes: str = _batch_sizes_option("8", "Batch sizes (comma-separated: several).", "--batch-size"),
    visual_tokens: int = _visual_tokens_option(
        768, "The processor's cap on visual tokens per image; without --image-size every image has this many."
    ),
    image_size: Optional[str] = value_option(
        "--image-size",
        "WxH,...",
        "WIDTHxHEIGHT of the images (comma-separated: a batch cycles through them); each gets the tokens of the processor's resize under --visual-tokens.",
    ),
    backend: BackendChoice = typer.Option(
        "auto",
        "--backend",
        help="auto (CUDA if an NVIDIA driver is installed, MPS on Apple silicon, else CPU; guessed without loading torch), cuda (bf16), mps (fp16), cpu (fp32).",
    ),
    dtype: DtypeChoice = typer.Option("auto", "--dtype", help="auto: the backend's (as embed)."),
    attn: AttnChoice = typer.Option("sdpa", "--attn", help="The attention implementation."),
    forward: ForwardChoice = typer.Option(
        "lean",
        "--forward",
        help="lean (nomic-memory), colpali (colpali-engine's forward) or colpali-dense-mask (colpali-engine's forward on transformers <= 4.53, whose vision tower masks the whole batch at once).",
    ),
    image_only: bool = typer.Option(False, "--image-only", help="Plan for image-only mode (no text-embedding table)."),
    json_out: bool = json_option("Print each plan as one JSON object per line."),
) -> None:
    """Predict peak memory from the architecture and token counts (weights + activations), and
    say what it assumes. One plan: its breakdown; several (variants x batch sizes): a table."""

    sizes = _batch_sizes(batch_sizes)
    images = [_image_size(v) for v in _split(image_size)]
    be, be_note = guess_backend() if backend is BackendChoice.auto else (backend.value, "")
    dtype_bytes = DTYPE_BYTES.get(dtype.value)
    names = _split(model_name)
    variants = _variants(model_variant) or ([] if names else ["colnomic-7b"])  # --model-name replaces the default
    models = [(v, Arch.for_variant(v), VARIANTS[v].kind) for v in variants]
    models += [(Path(n).name, *_arch_from_dir(Path(n))) for n in names]
    if not models:
        raise fail("give --model-variant or --model-name", EXIT_USAGE)
    note = ""
    if images:
        note = "; ".join(f"{w}x{h} -> {'x'.join(map(str, _resized(w, h, visual_tokens)))}" for w, h in images)
        note = f"images {note} under a cap of {visual_tokens} tokens"
    plans = []
    for label, arch, kind in models:
        for bs in sizes:
            counts = [image_tokens(*images[i % len(images)], visual_tokens) for i in range(bs)] if images else None
            p = plan_memory(
                arch,
                batch_size=bs,
                visual_tokens=visual_tokens,
                kind=kind,
                backend=be,
                dtype_bytes=dtype_bytes,
                image_only=image_only,
                attn=attn.value,
                forward=forward.value,
                token_counts=counts,
                image_note=note,
            )
            if be_note:
                p.assumptions.insert(0, f"backend {be} ({be_note}; --backend to choose)")
            plans.append((label, p))
    if json_out:
        for label, p in plans:
            typer.echo(json.dumps({"model": label, **p.to_dict()}, default=str))
    elif len(plans) == 1:
        for line in plans[0][1].lines():
            typer.echo(line)
    else:
        for line in _plan_table(plans):
            typer.echo(line)
    raise typer.Exit(EXIT_OK)


def _image_size(value: str) -> tuple[int, int]:
    try:
        w, h = (int(x) for x in value.lower().split("x"))
    except ValueError:
        raise fail(f"--image-size takes WIDTHxHEIGHT (e.g. 4032x3024), not {value!r}", EXIT_USAGE)
    if w < 1 or h < 1 or max(w, h) / min(w, h) > 200:  # the processor refuses aspect ratios over 200
        raise fail(f"--image-size {value}: sides must be >= 1 with an aspect ratio of at most 200", EXIT_USAGE)
    return w, h


def _resized(w: int, h: int, cap: int) -> tuple[int, int]:
    return resized_size(w, h, cap)


def _arch_from_dir(model_dir: Path):
    """``(Arch, kind)`` from a local model directory's config.json (the only path that imports transformers)."""

    cfg_path = model_dir / "config.json"
    if not cfg_path.is_file():
        raise fail(f"{model_dir} has no config.json (a PEFT adapter? plan its base with --model-variant)")
    from transformers import AutoConfig

    try:
        arch = Arch.from_config(AutoConfig.from_pretrained(str(model_dir)), model_dir.name)
    except Exception as e:
        raise fail(f"cannot read a Qwen2.5-VL configuration from {cfg_path}: {str(e).splitlines()[0]}")
    archs = json.loads(cfg_path.read_text()).get("architectures") or []
    return arch, ("biqwen" if any(a.startswith("BiQwen") for a in archs) else "colqwen")


def _plan_table(plans) -> list[str]:
    seen: list[str] = []
    for _, p in plans:
        seen += [a for a in p.assumptions if a not in seen]
    out = [f"Assumes: {a}" for a in seen]
    out += [
        "",
        "| Model | Batch | Visual tokens | Weights (GB) | Activations (GB) | Predicted peak (GB) | Peak phase |",
        "|---|---:|---:|---:|---:|---:|---|",
    ]
    for label, p in plans:
        out.append(
            f"| {label} | {p.batch_size} | {p.visual_tokens} | {p.weights_bytes / GB:.2f} | "
            f"{p.activation_bytes / GB:.2f} | {p.peak_bytes / GB:.2f} | {p.peak_phase} |"
        )
    out += [""] + [f"Note: {n}" for n in dict.fromkeys(n for _, p in plans for n in p.notes)]
    return out
