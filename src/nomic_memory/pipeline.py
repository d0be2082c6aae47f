"""discover -> scan -> decode -> batch -> encode -> store.

* **scan** (threads): stat, content hash and header-only image size of every file, so unchanged
  files are skipped before any decoding and every image's visual-token count is known up front.
* **batch**: images are grouped by token count (little padding), capped by images and tokens.
* **decode** (worker processes, prefetching ahead of the model): JPEG draft decoding, a single
  resize to the processor's target size, the processor itself; the GIL never serialises them.
* **encode**: the lean forward; an out-of-memory batch is split and retried, and the lower size
  is remembered.
* **store**: each batch is one atomic LanceDB commit.
"""

from __future__ import annotations

import hashlib
import logging
import multiprocessing as mp
import os
import sys
import time
from collections import deque
from concurrent.futures import Future, ProcessPoolExecutor, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch
from PIL import Image

from .encode import Prepared, collate, forward_embeddings, is_oom, make_batches, padding_overhead, prepare_image, target_size, visual_tokens
from .images import ImageError, discover_images, load_image
from .loading import LoadedModel
from .memory import MemoryReport, MemoryTracker
from .store import EmbeddingTable, Record, Store, TableInfo

log = logging.getLogger("nomic_memory")

# Pre-resize in the decode worker when the source has this many times the target's pixels:
# below that, the processor's own resize is cheap and keeps results bit-identical to the
# model card's loop.
PRERESIZE_FACTOR = 4.0


@dataclass
class FileInfo:
    path: Path
    rel: str
    size: int
    mtime: float
    content_hash: str
    width: int = 0
    height: int = 0
    tokens: int = 0
    error: str | None = None


@dataclass
class RunReport:
    directory: str
    store: str
    table: str
    discovered: int = 0
    skipped_unchanged: int = 0
    embedded: int = 0
    failed: list[tuple[str, str]] = field(default_factory=list)
    pruned: int = 0
    seconds: float = 0.0
    embed_seconds: float = 0.0
    batches: int = 0
    padding_overhead: float = 0.0
    memory: MemoryReport | None = None
    oom_splits: int = 0
    final_batch_cap: int = 0

    @property
    def images_per_second(self) -> float:
        return self.embedded / self.embed_seconds if self.embed_seconds > 0 else 0.0

    def to_dict(self) -> dict:
        return {"directory": self.directory, "store": self.store, "table": self.table,
                "discovered": self.discovered, "skipped_unchanged": self.skipped_unchanged,
                "embedded": self.embedded, "failed": [{"path": p, "reason": r} for p, r in self.failed],
                "pruned": self.pruned, "seconds": round(self.seconds, 3),
                "images_per_second": round(self.images_per_second, 3), "batches": self.batches,
                "padding_overhead": round(self.padding_overhead, 4), "oom_splits": self.oom_splits,
                "memory": self.memory.to_dict() if self.memory else None}


def hash_file(path: Path, chunk: int = 1 << 20) -> tuple[str, int]:
    h = hashlib.sha256()
    n = 0
    with open(path, "rb") as f:
        while True:
            b = f.read(chunk)
            if not b:
                break
            n += len(b)
            h.update(b)
    return h.hexdigest(), n


def scan_file(path: Path, root: Path) -> FileInfo:
    rel = path.relative_to(root).as_posix()
    try:
        st = path.stat()
        digest, _ = hash_file(path)
    except OSError as e:
        return FileInfo(path, rel, 0, 0.0, "", error=_os_reason(e))
    info = FileInfo(path, rel, st.st_size, st.st_mtime, digest)
    try:
        with Image.open(path) as im:  # header only: no pixel decoding
            w, h = im.size
            orient = im.getexif().get(0x0112, 1) if hasattr(im, "getexif") else 1
            if orient in (5, 6, 7, 8):
                w, h = h, w
            info.width, info.height = w, h
    except Exception:
        # Not decodable from its header: the decode stage reports the precise reason.
        info.width, info.height = 0, 0
    return info


def _os_reason(e: OSError) -> str:
    if isinstance(e, PermissionError):
        return "permission denied"
    return e.strerror or str(e)


# ---------------------------------------------------------------- decode workers
_WORKER_PROCESSOR = None


def _init_worker(source: str, kind: str, max_visual_tokens: int | None) -> None:
    global _WORKER_PROCESSOR
    torch.set_num_threads(1)
    from colpali_engine.models import BiQwen2_5_Processor, ColQwen2_5_Processor

    cls = ColQwen2_5_Processor if kind == "colqwen" else BiQwen2_5_Processor
    kw = {"max_num_visual_tokens": max_visual_tokens} if max_visual_tokens else {}
    _WORKER_PROCESSOR = cls.from_pretrained(source, **kw)


def decode_and_prepare(processor, path: Path | Image.Image) -> Prepared:
    """Decode one image (draft-decoding large JPEGs) and run the processor on it."""
    ip = processor.image_processor
    if isinstance(path, Image.Image):
        from .images import pad_extreme_aspect, to_rgb

        img = pad_extreme_aspect(to_rgb(path))
    else:
        # Ask for a draft no smaller than what the model will see.
        try:
            with Image.open(path) as probe:
                w, h = probe.size
            th, tw = _safe_target(w, h, ip)
            target = th * tw
        except Exception:  # load_image names the precise reason
            target = None
        img = load_image(path, target_pixels=target)
    th, tw = target_size(img.width, img.height, ip)
    if img.width * img.height > PRERESIZE_FACTOR * th * tw:
        img = img.resize((tw, th), Image.Resampling.BICUBIC, reducing_gap=3.0)
    return prepare_image(processor, img)


def _safe_target(w: int, h: int, ip) -> tuple[int, int]:
    try:
        return target_size(w, h, ip)
    except ValueError:  # extreme aspect ratio: padded later, no draft
        return h, w


def _decode_batch_worker(paths: list[Path]) -> list[Prepared | ImageError]:
    return _decode_batch(_WORKER_PROCESSOR, paths)


def _decode_batch(processor, paths: list[Path]) -> list[Prepared | ImageError]:
    out: list[Prepared | ImageError] = []
    for p in paths:
        try:
            out.append(decode_and_prepare(processor, p))
        except ImageError as e:
            out.append(e)
        except Exception as e:  # a processor failure on one file must not stop the run
            out.append(ImageError(p, f"{type(e).__name__}: {e}"))
    return out


class Decoder:
    """Decodes batches ahead of the model: in worker processes, or inline when workers=0."""

    def __init__(self, lm: LoadedModel, workers: int, prefetch: int | None = None,
                 max_visual_tokens: int | None = None):
        self.lm = lm
        self.workers = workers
        self.prefetch = prefetch or max(2, 2 * workers)
        self.pool: ProcessPoolExecutor | None = None
        if workers > 0:
            ctx = mp.get_context("spawn")  # fork after torch/OpenMP threads can deadlock
            self.pool = ProcessPoolExecutor(workers, mp_context=ctx, initializer=_init_worker,
                                            initargs=(str(lm.source), lm.kind, max_visual_tokens))

    def map(self, batches: list[list[Path]]):
        """Yield decoded batches in order, keeping up to ``prefetch`` in flight."""
        if self.pool is None:
            for b in batches:
                yield _decode_batch(self.lm.processor, b)
            return
        pending: deque[Future] = deque()
        it = iter(batches)
        for b in it:
            pending.append(self.pool.submit(_decode_batch_worker, b))
            if len(pending) >= self.prefetch:
                break
        while pending:
            fut = pending.popleft()
            nxt = next(it, None)
            if nxt is not None:
                pending.append(self.pool.submit(_decode_batch_worker, nxt))
            yield fut.result()

    def close(self) -> None:
        if self.pool is not None:
            self.pool.shutdown(wait=True, cancel_futures=True)
            self.pool = None


def default_workers(n_images: int) -> int:
    cpus = os.cpu_count() or 1
    if n_images < 16 or cpus < 2:
        return 0
    return max(1, min(8, cpus - 1))


# ---------------------------------------------------------------- encoding with OOM resilience
class BatchEncoder:
    """Runs the forward; on out-of-memory splits the batch, retries, and remembers the cap."""

    def __init__(self, lm: LoadedModel):
        self.lm = lm
        self.cap: int | None = None
        self.splits = 0
        self.pin = lm.backend.name == "cuda"

    def __call__(self, items: list[Prepared]) -> list[torch.Tensor]:
        if self.cap is not None and len(items) > self.cap:
            out: list[torch.Tensor] = []
            for i in range(0, len(items), self.cap):
                out.extend(self(items[i:i + self.cap]))
            return out
        try:
            return forward_embeddings(self.lm, collate(items, self.lm.processor.tokenizer.pad_token_id, self.pin))
        except Exception as e:
            if not is_oom(e) or len(items) == 1:
                raise
            self._free()
            self.splits += 1
            half = max(1, len(items) // 2)
            self.cap = half if self.cap is None else min(self.cap, half)
            log.warning("out of memory on a batch of %d images: retrying in batches of %d", len(items), half)
            return self(items[:half]) + self(items[half:])

    def _free(self) -> None:
        if self.lm.backend.name == "cuda":
            torch.cuda.empty_cache()
        elif self.lm.backend.name == "mps":
            torch.mps.empty_cache()


# ---------------------------------------------------------------- the run
ProgressCallback = Callable[[str, dict], None]


def table_info(lm: LoadedModel, seed: int = 0) -> TableInfo:
    storage = "float32" if lm.backend.dtype == torch.float32 else "float16"
    return TableInfo(lm.model_id, lm.revision, lm.kind, lm.dim, lm.fingerprint, storage, seed)


def embed_directory(lm: LoadedModel, directory: str | Path, store: Store | str | Path, *,
                    batch_size: int = 8, max_batch_tokens: int | None = None, workers: int | None = None,
                    prune: bool = False, table_name: str | None = None, seed: int = 0,
                    on_event: ProgressCallback | None = None, sort_by_tokens: bool = True) -> RunReport:
    """Embed every image under ``directory`` into ``store``; see the module docstring."""
    t0 = time.perf_counter()
    emit = on_event or (lambda kind, data: None)
    root = Path(directory).expanduser().resolve()
    paths = discover_images(root)
    if not isinstance(store, Store):
        store = Store(store)
    info = table_info(lm, seed)
    table = store.create_or_open(table_name or lm.table_name, info)
    if table.info.fingerprint != info.fingerprint or table.info.revision != info.revision:
        log.warning("store table %s was made with revision %s / projection %s; this model is %s / %s: "
                    "changed rows will be re-embedded", table.name, table.info.revision,
                    table.info.fingerprint, info.revision, info.fingerprint)
    report = RunReport(str(root), str(store.path), table.name, discovered=len(paths))
    emit("discovered", {"count": len(paths)})

    existing = table.index(str(root))
    if prune:
        present = {p.relative_to(root).as_posix() for p in paths}
        gone = [p for p in existing if p not in present]
        if gone:
            report.pruned = table.delete_paths(str(root), gone)
            emit("pruned", {"count": report.pruned})

    with ThreadPoolExecutor(max_workers=8) as ex:
        scanned = list(ex.map(lambda p: scan_file(p, root), paths))
    todo: list[FileInfo] = []
    for fi in scanned:
        if fi.error:
            report.failed.append((fi.rel, fi.error))
            emit("failed", {"path": fi.rel, "reason": fi.error})
            continue
        old = existing.get(fi.rel)
        if old and old["content_hash"] == fi.content_hash and old["model_revision"] == info.revision \
                and old["proj_fingerprint"] == info.fingerprint:
            report.skipped_unchanged += 1
            continue
        todo.append(fi)
    emit("todo", {"count": len(todo), "skipped": report.skipped_unchanged})

    ip = lm.processor.image_processor
    for fi in todo:
        try:
            fi.tokens = visual_tokens(fi.width, fi.height, ip) if fi.width and fi.height else 0
        except ValueError:
            fi.tokens = ip.size["longest_edge"] // (28 * 28)  # extreme aspect: padded on decode
    tokens = [fi.tokens for fi in todo]
    max_tokens = max_batch_tokens or None
    batches = make_batches(tokens, batch_size, max_tokens, sort=sort_by_tokens)
    report.batches = len(batches)
    report.padding_overhead = padding_overhead(tokens, batches) if todo else 0.0
    emit("plan", {"batches": len(batches), "padding_overhead": report.padding_overhead})

    n_workers = default_workers(len(todo)) if workers is None else workers
    decoder = Decoder(lm, n_workers)
    encoder = BatchEncoder(lm)
    tracker = MemoryTracker(lm.backend.name, lm.backend.device).start()
    t_embed = time.perf_counter()
    try:
        for bi, (idx, decoded) in enumerate(zip(batches, decoder.map([[todo[i].path for i in b] for b in batches]))):
            good: list[tuple[FileInfo, Prepared]] = []
            for i, d in zip(idx, decoded):
                fi = todo[i]
                if isinstance(d, ImageError):
                    report.failed.append((fi.rel, d.reason))
                    emit("failed", {"path": fi.rel, "reason": d.reason})
                else:
                    good.append((fi, d))
            if good:
                embs = encoder([d for _, d in good])
                tracker.sample()
                records = [Record(str(root), fi.rel, fi.content_hash, fi.size, fi.mtime, fi.width, fi.height,
                                  e.float().numpy(), lm.backend.dtype_name) for (fi, _), e in zip(good, embs)]
                table.upsert(records, known_new={fi.rel for fi, _ in good if fi.rel not in existing})
                report.embedded += len(records)
            log.info("Processed batch %d/%d (%d images, %d embedded so far)", bi + 1, len(batches),
                     len(idx), report.embedded)
            emit("batch", {"index": bi + 1, "total": len(batches), "images": len(idx),
                           "embedded": report.embedded, "elapsed": time.perf_counter() - t_embed})
    finally:
        decoder.close()
        report.embed_seconds = time.perf_counter() - t_embed
        report.memory = tracker.stop()
        report.oom_splits = encoder.splits
        report.final_batch_cap = encoder.cap or batch_size
        if report.embedded:
            table.optimize()
        report.seconds = time.perf_counter() - t0
    emit("done", report.to_dict())
    return report


def embed_pil_images(lm: LoadedModel, images: list, batch_size: int = 8,
                     max_batch_tokens: int | None = None) -> list[torch.Tensor]:
    """Embed in-memory images / paths; results in input order."""
    prepared = [decode_and_prepare(lm.processor, Path(im) if isinstance(im, (str, os.PathLike)) else im)
                for im in images]
    tokens = [int(p.image_grid_thw.prod()) for p in prepared]
    encoder = BatchEncoder(lm)
    out: list[torch.Tensor | None] = [None] * len(images)
    for b in make_batches(tokens, batch_size, max_batch_tokens):
        for i, e in zip(b, encoder([prepared[i] for i in b])):
            out[i] = e
    return out  # type: ignore[return-value]


_ = sys
