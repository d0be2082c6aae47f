"""``nomic-memory bench``: throughput and peak memory across batch sizes, modes, models, backends.

Every configuration (model x backend x mode x batch size) is measured ``runs`` times and the
median is reported.  By default each measurement runs in a **fresh Python process**
(``python -m nomic_memory.perf.bench --worker CONFIG``): on the CPU the peak resident set size is a
per-process high-water mark, so figures taken one after another in one process would carry each
other's peaks and allocator caches; a fresh process also gives CUDA a clean caching allocator.
Within the process the model is loaded first, then the memory in use is taken as the baseline
and the peak is tracked over the embedding run (CPU: the kernel's VmHWM, reset after loading;
CUDA: the allocator's peak; MPS: polled), so *above model* is what the batch costs.

Each measurement is a real ``embed_directory`` run into a throw-away store, except with
``--synthetic-weights``: then the model is the variant's real architecture with random weights,
built directly on the device, and its embeddings are discarded, never stored.

The memory planner's prediction (``plan.plan_for_model``) for the same batches is reported next to
each measurement.
"""

from __future__ import annotations

import gc
import json
import logging
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

from nomic_memory.api import Embedder
from nomic_memory.errors import BenchSetupError, NomicMemoryError
from nomic_memory.ingest.batching import MAX_PADDING, make_batches, visual_tokens
from nomic_memory.ingest.images import discover_images, image_size
from nomic_memory.ingest.samples import make_sample_images  # noqa: F401  (bench's sample folder; re-exported)
from nomic_memory.memory import current_rss_bytes
from nomic_memory.model.backends import select_backend
from nomic_memory.model.loading import LoadedModel, load_model, make_image_only
from nomic_memory.model.qwen import token_ids
from nomic_memory.model.tiny import SPECIAL_TOKENS, TinySize, build_processor
from nomic_memory.model.variants import VARIANTS
from nomic_memory.perf.plan import Arch, architecture_config, forward_flops, plan_for_model, qwen_config
from nomic_memory.store.table import Store

SYNTHETIC_LABEL = "synthetic random weights: for memory/throughput only"
MB = 1024 * 1024
GB = 1024 * MB

log = logging.getLogger("nomic_memory")


@dataclass
class BenchConfig:
    directory: str
    batch_size: int
    image_only: bool = False
    backend: str = "auto"
    model_name: str | None = None
    variant: str | None = None
    kind: str | None = None
    synthetic: bool = False
    synthetic_layers: int | None = None
    synthetic_vision_depth: int | None = None
    visual_tokens: int | None = None  # the processor's cap on visual tokens per image
    workers: int | None = None
    dtype: str | None = None
    seed: int = 0

    @property
    def model_label(self) -> str:
        if self.model_name:
            return Path(self.model_name).name if Path(self.model_name).expanduser().exists() else self.model_name
        name = self.variant or "colnomic-7b"
        if self.synthetic and (self.synthetic_layers or self.synthetic_vision_depth):
            name += f" ({self.synthetic_layers or 'all'} layers, vision {self.synthetic_vision_depth or 'all'})"
        return name

    @property
    def mode(self) -> str:
        return "image-only" if self.image_only else "full"

    def key(self) -> tuple:
        return (self.model_label, self.backend, self.mode, self.batch_size)

    @classmethod
    def from_dict(cls, d: dict) -> BenchConfig:
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in names})


# ---------------------------------------------------------------- synthetic models and images
def build_synthetic_model(
    variant: str,
    backend,
    *,
    image_only: bool = False,
    layers: int | None = None,
    vision_depth: int | None = None,
    visual_tokens: int | None = 768,
    seed: int = 0,
    kind: str | None = None,
):
    """A ``LoadedModel`` with ``variant``'s shipped architecture and random weights, allocated
    directly on ``backend``'s device in its dtype (no checkpoint, no CPU copy).

    The text vocabulary keeps its real size (151,936 / 152,064 rows) so memory is real, but the
    processor is a stand-in (byte-level tokenizer with Qwen's special tokens): the embeddings are
    meaningless and must never be stored.  ``layers`` / ``vision_depth`` scale the depth down
    (tests and CPU demos)."""
    import torch
    from colpali_engine.models import BiQwen2_5, ColQwen2_5

    v = VARIANTS.get(variant)
    kind = kind or (v.kind if v else "colqwen")
    arch = architecture_config(variant, layers=layers, vision_depth=vision_depth)
    t = arch["text_config"]
    max_tokens = int(visual_tokens or 768)
    proc_size = TinySize(t["hidden_size"], 1, 1, 1, 1, 1, 1, 1, 1, max_visual_tokens=max_tokens)
    processor = build_processor(kind, proc_size)
    ids = token_ids(processor.tokenizer)
    assert max(ids.values()) < t["vocab_size"] and len(SPECIAL_TOKENS) == 7
    cfg = qwen_config(arch, token_ids=ids, attn_implementation=backend.attn_implementation)
    cls = ColQwen2_5 if kind == "colqwen" else BiQwen2_5
    torch.manual_seed(seed)
    try:
        from transformers.initialization import no_init_weights
    except ImportError:  # older transformers: initialise twice, slower but the same model
        from contextlib import nullcontext as no_init_weights
    old_dtype = torch.get_default_dtype()
    torch.set_default_dtype(backend.dtype)
    try:
        with torch.device(backend.device), no_init_weights():
            model = cls(cfg)
    finally:
        torch.set_default_dtype(old_dtype)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.dim() > 1:
                p.normal_(0.0, 0.02)
            elif "norm" in name or "ln_q" in name:
                p.fill_(1.0)
            else:
                p.zero_()
        model.get_input_embeddings().weight.normal_(0.0, 1.0)
    model = model.eval()
    model.requires_grad_(False)
    src = Path(tempfile.mkdtemp(prefix="nomic-memory-synthetic-"))
    processor.save_pretrained(src)  # decode workers load the processor from here
    dim = 128 if kind == "colqwen" else t["hidden_size"]
    lm = LoadedModel(
        model=model,
        processor=processor,
        kind=kind,
        model_id=f"synthetic:{variant}",
        revision="synthetic-random-weights",
        fingerprint="",
        backend=backend,
        dim=dim,
        source=src,
        notes=[SYNTHETIC_LABEL],
    )
    if image_only:
        make_image_only(lm)
    return lm


class _NullTable:
    """Stands in for a store table when embeddings must not be kept (synthetic weights)."""

    def __init__(self, name: str, info):
        self.name, self.info = name, info

    def stored_keys(self, root=None) -> dict:
        return {}

    def upsert(self, records, known_new=None) -> list:
        return []  # nothing refused, nothing kept

    def delete_paths(self, root, paths) -> int:
        return 0

    def delete_keys(self, root, keys) -> int:
        return 0

    def ensure_unique(self) -> int:
        return 0

    def maintain(self) -> bool:
        return False


def _null_store():
    class NullStore(Store):
        """Discards every embedding: used for synthetic weights, whose output is meaningless."""

        def __init__(self):  # no database is opened
            self.path = Path("(discarded: synthetic weights)")

        def table_names(self) -> list[str]:
            return []

        def create_or_open(self, name, info):
            return _NullTable(name, info)

    return NullStore()


# ---------------------------------------------------------------- one measurement
def _device_bytes(backend) -> int:
    import torch

    if backend.name == "cuda":
        torch.cuda.synchronize(backend.device)
        return torch.cuda.memory_allocated(backend.device)
    if backend.name == "mps":
        return torch.mps.driver_allocated_memory()
    return current_rss_bytes()


def planned_batches(lm, directory: str | Path, batch_size: int) -> list[list[int]]:
    """Visual-token counts of the batches ``embed_directory`` will form for ``directory``
    (from image headers, as the pipeline computes them)."""
    ip = lm.processor.image_processor
    tokens = []
    for p in discover_images(directory):
        try:
            w, h = image_size(p) or (0, 0)  # the one checked open: never blocks on a FIFO
            tokens.append(visual_tokens(w, h, ip))
        except Exception:
            tokens.append(ip.size["longest_edge"] // (28 * 28))
    return [[tokens[i] for i in b] for b in make_batches(tokens, batch_size, sort=True, max_padding=MAX_PADDING)]


# Long: one measured run, set-up to teardown, in the order the numbers are taken.
def measure(cfg: BenchConfig) -> dict:
    """Measure one configuration in this process (see the module docstring)."""
    import torch

    t_load = time.perf_counter()
    try:  # a backend or model that cannot be set up fails every batch size alike
        backend = select_backend(cfg.backend, dtype=cfg.dtype)
        if cfg.synthetic:
            lm = build_synthetic_model(
                cfg.variant or "colnomic-7b",
                backend,
                image_only=cfg.image_only,
                layers=cfg.synthetic_layers,
                vision_depth=cfg.synthetic_vision_depth,
                visual_tokens=cfg.visual_tokens or 768,
                seed=cfg.seed,
                kind=cfg.kind,
            )
            store = _null_store()
        else:
            lm = load_model(
                cfg.model_name,
                cfg.variant if cfg.model_name is None else None,
                backend=backend,
                kind=cfg.kind,
                image_only=cfg.image_only,
                seed=cfg.seed,
                max_visual_tokens=cfg.visual_tokens,
            )
            import lancedb  # noqa: F401  (an import is start-up cost, not throughput)

            store = None
    except Exception as e:
        if _is_oom(e):  # the weights alone do not fit: this batch size says nothing more
            raise
        raise BenchSetupError(f"{cfg.model_label} on backend {cfg.backend}: {_one_line(e)}") from e
    load_seconds = time.perf_counter() - t_load
    batches = planned_batches(lm, cfg.directory, cfg.batch_size)
    plans = [plan_for_model(lm, batch_size=len(b), token_counts=b) for b in batches]
    arch = Arch.from_config(lm.model.config)
    prompt = plans[0].seq_len - plans[0].visual_tokens if plans else 0
    flops = sum(forward_flops(arch, t, prompt) for b in batches for t in b)
    worst = max(plans, key=lambda p: p.activation_bytes) if plans else None
    gc.collect()
    model_bytes = _device_bytes(backend)
    with tempfile.TemporaryDirectory(prefix="nomic-memory-bench-") as td:
        t0 = time.perf_counter()
        report = Embedder.from_loaded(lm).embed_directory(
            cfg.directory,
            store if store is not None else Path(td) / "store",
            batch_size=cfg.batch_size,
            workers=cfg.workers,
        )
        total = time.perf_counter() - t0
    mem = report.memory
    peak = mem.peak_bytes if mem else 0
    child_kb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    out = {
        **asdict(cfg),
        "model": cfg.model_label,
        "mode": cfg.mode,
        "synthetic_label": SYNTHETIC_LABEL if cfg.synthetic else "",
        "model_id": lm.model_id,
        "kind": lm.kind,
        "params": sum(t.numel() for t in lm.model.parameters()),
        "store": str(report.store),
        "resolved_backend": backend.name,
        "dtype_name": backend.dtype_name,
        "attn": backend.attn_implementation,
        "device_name": _device_name(backend),
        "images": report.embedded,
        "failed": len(report.failed),
        "batches": report.batches,
        "seconds": report.embed_seconds,
        "total_seconds": total,
        "load_seconds": load_seconds,
        "images_per_second": report.images_per_second,
        "tflops": flops / report.embed_seconds / 1e12 if report.embed_seconds > 0 else 0.0,
        "padding_overhead": report.padding_overhead,
        "oom_splits": report.oom_splits,
        "final_batch_cap": report.final_batch_cap,
        "decode_workers": report.decode_workers,
        "model_threads": report.model_threads,
        "model_bytes": model_bytes,
        "peak_bytes": peak,
        "above_model_bytes": max(0, peak - model_bytes),
        "reserved_bytes": (mem.extra.get("reserved", 0) if mem else 0),
        "decode_worker_peak_rss_bytes": child_kb * 1024 if report.decode_workers else 0,
        "largest_batch": max((len(b) for b in batches), default=0),
        "predicted_weights_bytes": worst.weights_bytes if worst else 0,
        "predicted_activation_bytes": worst.activation_bytes if worst else 0,
        "predicted_peak_bytes": worst.peak_bytes if worst else 0,
        "predicted_phase": worst.peak_phase if worst else "",
        "torch": torch.__version__,
    }
    return out


def _device_name(backend) -> str:
    import platform

    import torch

    if backend.name == "cuda":
        return torch.cuda.get_device_name(backend.device)
    if backend.name == "mps":
        return "Apple MPS"
    return f"{platform.processor() or platform.machine()} ({os.cpu_count()} CPUs)"


def measure_isolated(cfg: BenchConfig, timeout: float | None = None) -> dict:
    """Measure one configuration in a fresh Python process."""
    cmd = [sys.executable, "-m", "nomic_memory.perf.bench", "--worker", json.dumps(asdict(cfg))]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, check=False)
    lines = [ln for ln in proc.stdout.strip().splitlines() if ln.startswith("{")]
    if proc.returncode != 0 or not lines:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-5:]
        return {
            **asdict(cfg),
            "model": cfg.model_label,
            "mode": cfg.mode,
            "error_kind": "crash",
            "error": f"exit {proc.returncode}: " + " | ".join(tail),
        }
    return json.loads(lines[-1])


# ---------------------------------------------------------------- sweeps, tables, plots
_NUMERIC = (
    "seconds",
    "total_seconds",
    "images_per_second",
    "peak_bytes",
    "above_model_bytes",
    "model_bytes",
    "reserved_bytes",
    "decode_worker_peak_rss_bytes",
)


@dataclass
class BenchRow:
    config: BenchConfig
    runs: list[dict] = field(default_factory=list)

    @property
    def ok(self) -> list[dict]:
        return [r for r in self.runs if "error" not in r]

    def median(self, key: str) -> float:
        vals = [r[key] for r in self.ok if r.get(key) is not None]
        return statistics.median(vals) if vals else float("nan")

    def summary(self) -> dict:
        ok = self.ok
        base = dict(ok[-1]) if ok else dict(self.runs[-1])
        for k in _NUMERIC:
            if ok:
                base[k] = self.median(k)
        base["runs"] = len(ok)
        base["per_run"] = [
            {k: r.get(k) for k in ("seconds", "images_per_second", "peak_bytes", "above_model_bytes")} for r in ok
        ]
        errors = [r["error"] for r in self.runs if "error" in r]
        if errors:
            base["errors"] = errors
        return base


def run_bench(
    configs: list[BenchConfig], runs: int = 3, isolate: bool = True, on_result=None, timeout: float | None = None
) -> list[dict]:
    """Measure every configuration ``runs`` times, interleaved (run 1 of all, then run 2 ...), so
    a machine whose speed drifts affects every configuration alike; return the medians.

    Raises :class:`BenchSetupError` at the first configuration whose backend or model cannot be
    set up (every other would fail alike); an out-of-memory error is recorded and the sweep goes on."""
    rows = [BenchRow(c) for c in configs]
    for r in range(runs):
        for row in rows:
            res = measure_isolated(row.config, timeout) if isolate else _measure_caught(row.config)
            if res.get("error_kind") == "setup":
                raise BenchSetupError(res["error"])
            row.runs.append(res)
            if on_result:
                on_result(r, res)
    return [row.summary() for row in rows]


def _one_line(e: BaseException) -> str:
    first = (str(e).strip().splitlines() or [""])[0]
    return f"{type(e).__name__}: {first[:300]}" if not isinstance(e, NomicMemoryError) else first[:300]


def _is_oom(e: BaseException) -> bool:
    return type(e).__name__ == "OutOfMemoryError" or "out of memory" in str(e).lower()


def _measure_caught(cfg: BenchConfig) -> dict:
    """``measure``, with a failure turned into a result: ``error_kind`` is ``setup`` (the backend
    or model cannot be set up: fatal for the sweep), ``oom`` or ``error`` (this configuration
    only: recorded, the sweep goes on)."""
    try:
        return measure(cfg)
    except BenchSetupError as e:
        kind, msg = "setup", str(e)
    except Exception as e:  # one failing configuration must not lose the others
        kind, msg = ("oom" if _is_oom(e) else "error"), _one_line(e)
    return {**asdict(cfg), "model": cfg.model_label, "mode": cfg.mode, "error": msg, "error_kind": kind}


TABLE_COLUMNS = [
    "Model",
    "Backend",
    "Batch size",
    "Mode",
    "Peak memory",
    "Above model (MB)",
    "Planned above model (MB)",
    "Time (s)",
    "Images/s",
]


def table_rows(results: list[dict]) -> list[list[str]]:
    out = []
    for r in results:
        if "error" in r and not r.get("runs"):
            out.append(
                [
                    r.get("model", "?"),
                    r.get("backend", "?"),
                    str(r.get("batch_size")),
                    r.get("mode", "?"),
                    "error",
                    "",
                    "",
                    "",
                    r["error"][:60],
                ]
            )
            continue
        peak = r["peak_bytes"]
        out.append(
            [
                r["model"],
                r.get("resolved_backend", r.get("backend", "")),
                str(r["batch_size"]),
                r["mode"],
                f"{peak / GB:.2f} GB ({peak / MB:.2f} MB)",
                f"{r['above_model_bytes'] / MB:.1f}",
                f"{r['predicted_activation_bytes'] / MB:.1f}",
                f"{r['seconds']:.2f}",
                f"{r['images_per_second']:.2f}",
            ]
        )
    return out


def table_markdown(results: list[dict]) -> str:
    lines = ["| " + " | ".join(TABLE_COLUMNS) + " |", "|" + "|".join("---" for _ in TABLE_COLUMNS) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in table_rows(results)]
    return "\n".join(lines)


def write_json(results: list[dict], path: str | Path, meta: dict | None = None) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"meta": meta or {}, "results": results}, indent=2, default=str))
    return path


def write_plot(results: list[dict], path: str | Path, title: str = "") -> Path:
    """Peak memory above the loaded model (measured and planned) and throughput vs batch size."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    series: dict[tuple, list[dict]] = {}
    for r in results:
        if "error" in r and not r.get("runs"):
            continue
        series.setdefault((r["model"], r.get("resolved_backend", r.get("backend")), r["mode"]), []).append(r)
    fig, (ax_m, ax_t) = plt.subplots(1, 2, figsize=(12, 4.8))
    for (model, backend, mode), rs in series.items():
        rs = sorted(rs, key=lambda r: r["batch_size"])
        bs = [r["batch_size"] for r in rs]
        label = f"{model}, {backend}, {mode}"
        (line,) = ax_m.plot(bs, [r["above_model_bytes"] / MB for r in rs], marker="o", label=f"{label} (measured)")
        ax_m.plot(
            bs,
            [r["predicted_activation_bytes"] / MB for r in rs],
            linestyle="--",
            color=line.get_color(),
            label=f"{label} (planned)",
        )
        ax_t.plot(bs, [r["images_per_second"] for r in rs], marker="o", label=label)
    for ax, ylabel in ((ax_m, "peak memory above loaded model (MB)"), (ax_t, "images / s")):
        ax.set_xscale("log", base=2)
        ax.set_xlabel("batch size")
        ax.set_ylabel(ylabel)
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=7)
    synthetic = any(r.get("synthetic") for r in results)
    fig.suptitle((title or "nomic-memory bench") + (f"\n({SYNTHETIC_LABEL})" if synthetic else ""), fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _worker_main(argv: list[str]) -> None:
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
    try:
        from transformers.utils import logging as tlog

        tlog.set_verbosity_error()
        tlog.disable_progress_bar()
    except Exception:
        pass
    cfg = BenchConfig.from_dict(json.loads(argv[argv.index("--worker") + 1]))
    res = _measure_caught(cfg)
    sys.stdout.write(json.dumps(res, default=str) + "\n")
    sys.stdout.flush()


if __name__ == "__main__":
    _worker_main(sys.argv)
