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
import queue
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch
from PIL import Image

from .encode import (Prepared, collate_flat, forward_embeddings, is_oom, make_batches, padding_overhead,
                     prepare_image, target_size, trim_heap, visual_tokens)
from .images import ImageError, discover_images, load_image
from .loading import LoadedModel
from .memory import MemoryReport, MemoryTracker
from .store import Record, Store, TableInfo

log = logging.getLogger("nomic_memory")

# Pre-resize in the decode worker when the source has this many times the target's pixels (or was
# draft-decoded): below that, the processor's own resize is cheap and keeps results bit-identical
# to the model card's loop.
PRERESIZE_FACTOR = 4.0
# Batches are cut so that none pads more than this fraction of its tokens (encode.make_batches).
MAX_PADDING = 0.05


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
    decode_workers: int = 0
    model_threads: int = 0  # CPU: the intra-op thread count the run settled on
    # Ray runs: each model worker's own peak (``memory`` is then the largest of them).
    worker_memory: dict[str, MemoryReport] = field(default_factory=dict)

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
                "decode_workers": self.decode_workers, "model_threads": self.model_threads,
                "memory": self.memory.to_dict() if self.memory else None,
                **({"worker_memory": {w: m.to_dict() for w, m in self.worker_memory.items()}}
                   if self.worker_memory else {})}


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
    drafted = False
    if isinstance(path, Image.Image):
        from .images import pad_extreme_aspect, to_rgb

        img = pad_extreme_aspect(to_rgb(path))
    else:
        # Ask for a draft no smaller than what the model will see.
        src_pixels = 0
        try:
            with Image.open(path) as probe:
                w, h = probe.size
            src_pixels = w * h
            th, tw = _safe_target(w, h, ip)
            target = th * tw
        except Exception:  # load_image names the precise reason
            target = None
        img = load_image(path, target_pixels=target)
        drafted = img.width * img.height < src_pixels  # pixels differ from a full decode anyway
    th, tw = target_size(img.width, img.height, ip)
    if (img.width, img.height) != (tw, th) and (
            drafted or img.width * img.height > PRERESIZE_FACTOR * th * tw):
        # One resize, on 8-bit pixels, to exactly the processor's target: it then has none to do.
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
    trim_heap()
    return out


def _decode_worker_main(source: str, kind: str, max_visual_tokens: int | None, tasks, results) -> None:
    """A decode worker process: takes ``(batch, position, path)`` tasks until it gets ``None``."""
    _init_worker(source, kind, max_visual_tokens)
    while True:
        task = tasks.get()
        if task is None:
            break
        bi, pos, path = task
        results.put((bi, pos, _decode_batch(_WORKER_PROCESSOR, [path])[0]))


@contextmanager
def torch_threads(n: int | None):
    """Run a block with ``n`` intra-op threads (no-op for ``None``), restoring the setting after."""
    old = torch.get_num_threads()
    if n is None or n == old:
        yield
        return
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(old)


class Decoder:
    """Decodes batches ahead of the model: in worker processes, or inline when workers=0.

    Workers and the main thread share one queue of per-image tasks: the workers prefetch the
    next batches while the model runs, and whenever the model would otherwise wait for its next
    batch the main thread takes the oldest queued tasks itself.  Workers are started only once
    decoding has proven worth offloading: the main thread has spent ``start_after`` seconds on it
    and at least ``min_share`` of the time the consumer (the model) spent between batches.  A
    process that imports torch costs seconds of CPU, which a short run, or a run whose model
    dwarfs decoding on the same cores, would only lose to; and nothing ever waits for the
    workers to come up.  Inline decoding runs with one intra-op thread: the processor's small tensor operations
    only lose from threading.  If a worker dies, the rest of the run decodes inline.
    """

    def __init__(self, lm: LoadedModel, workers: int, prefetch: int | None = None,
                 max_visual_tokens: int | None = None, start_after: float = 1.0, assist: bool = True,
                 min_share: float = 0.25):
        self.lm = lm
        self.min_share = min_share
        self.consumer_seconds = 0.0
        self.assist = assist  # the main thread decodes when the model would otherwise wait
        self.workers = workers
        self.prefetch = prefetch or max(2, 2 * workers)  # batches in flight, at most
        self.start_after = start_after
        self.max_visual_tokens = max_visual_tokens
        self.inline_images = 0  # decoded by the main thread (statistics)
        self.worker_images = 0
        self.inline_seconds = 0.0
        self._procs: list = []
        self._started = False
        self._tasks = self._results = None

    def _start(self) -> None:
        self._started = True
        ctx = mp.get_context("spawn")  # fork after torch/OpenMP threads can deadlock
        self._tasks, self._results = ctx.Queue(), ctx.Queue()
        for _ in range(self.workers):
            p = ctx.Process(target=_decode_worker_main, daemon=True,
                            args=(str(self.lm.source), self.lm.kind, self.max_visual_tokens,
                                  self._tasks, self._results))
            p.start()
            self._procs.append(p)

    def _inline(self, paths: list[Path]) -> list[Prepared | ImageError]:
        t = time.perf_counter()
        with torch_threads(1):
            out = _decode_batch(self.lm.processor, paths)
        self.inline_seconds += time.perf_counter() - t
        self.inline_images += len(paths)
        return out

    def map(self, batches: list[list[Path]]):
        """Yield decoded batches in order, keeping up to ``prefetch`` batches in flight."""
        tasks = [(bi, pos, p) for bi, b in enumerate(batches) for pos, p in enumerate(b)]
        done: list[list] = [[None] * len(b) for b in batches]
        missing = [len(b) for b in batches]
        starts, acc = [], 0
        for b in batches:
            starts.append(acc)
            acc += len(b)
        starts.append(acc)
        queued = 0  # tasks[:queued] are done or were handed to the queue

        def record(bi: int, pos: int, r) -> None:
            if pos < len(done[bi]) and done[bi][pos] is None:
                done[bi][pos] = r
                missing[bi] -= 1

        for k in range(len(batches)):
            if (self.workers > 0 and not self._started and self.inline_seconds >= self.start_after
                    and self.inline_seconds >= self.min_share * self.consumer_seconds
                    and len(tasks) - starts[k] >= 2 * self.workers):
                self._start()
                queued = starts[k]
            while missing[k]:
                if self._procs and not all(p.is_alive() for p in self._procs):
                    log.warning("a decode worker exited unexpectedly: decoding the rest inline")
                    self._stop(terminate=True)
                if not self._procs:  # inline
                    for pos, path in enumerate(batches[k]):
                        if done[k][pos] is None:
                            record(k, pos, self._inline([path])[0])
                    break
                limit = starts[min(len(batches), k + self.prefetch)]
                while queued < limit:
                    self._tasks.put(tasks[queued])
                    queued += 1
                self._drain(record, block=False)
                if not missing[k]:
                    break
                try:  # help: the oldest queued task is the most urgent
                    if not self.assist:
                        raise queue.Empty
                    bi, pos, path = self._tasks.get_nowait()
                except queue.Empty:
                    self._drain(record, block=True)
                else:
                    record(bi, pos, self._inline([path])[0])
            out, done[k] = done[k], []
            t = time.perf_counter()
            yield out
            self.consumer_seconds += time.perf_counter() - t

    def _drain(self, record, block: bool) -> None:
        try:
            item = self._results.get(timeout=0.05) if block else self._results.get_nowait()
            while True:
                record(*item)
                self.worker_images += 1
                item = self._results.get_nowait()
        except queue.Empty:
            pass

    def _stop(self, terminate: bool = False) -> None:
        procs, self._procs = self._procs, []
        if procs and not terminate:
            for _ in procs:
                self._tasks.put(None)
        deadline = time.monotonic() + 2.0
        for p in procs:
            if not terminate:
                p.join(timeout=max(0.0, deadline - time.monotonic()))
            if p.is_alive():  # still importing torch, or stuck: no reason to wait
                p.terminate()
                p.join(timeout=1.0)
        for q in (self._tasks, self._results):
            if q is not None:
                q.cancel_join_thread()
                q.close()
        self._tasks = self._results = None

    def close(self) -> None:
        self._stop()


def available_cpus() -> int:
    try:
        return len(os.sched_getaffinity(0)) or 1
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def default_workers(n_images: int, backend: str | None = None) -> int:
    """Decode worker processes for a run of ``n_images``.  On the CPU backend the model needs the
    cores itself (and decoding to the model's size is a small part of the work), so it gets
    one worker per four cores; with an accelerator, up to one per spare core."""
    cpus = available_cpus()
    if n_images < 16 or cpus < 2:
        return 0
    if backend == "cpu":
        return max(1, min(8, cpus // 4))
    return max(1, min(8, cpus - 1))


class ThreadTuner:
    """Picks the CPU forward's intra-op thread count by measuring it, call by call.

    The best count depends on more than the core count: decode workers and other processes
    compete for the cores, and a thread that is descheduled stalls every parallel region at its
    barrier.  On the shared 2-core development machine, with other jobs running, the tiny
    model's forward took 0.04-0.08 s with one thread and 1-2 s with two (the medium model's about
    2x longer with two); on the idle machine two threads were ~1.6x faster than one.  So the
    forward asks the tuner before each of its calls (one vision-tower chunk, one group of rows
    through the language model: a page or so of work on the CPU) and reports the time per unit
    of work (patches, tokens) back, per kind of call.  Each kind starts with ``candidates[0]``
    (its first call also warms up and is not counted), tries every candidate once, then keeps
    the fastest, and every ``reprobe`` calls tries the others once more (the machine's load
    changes).  A wrong guess costs one call, not a batch."""

    def __init__(self, candidates: list[int], reprobe: int = 32):
        seen: list[int] = []
        for c in candidates:
            if c >= 1 and c not in seen:
                seen.append(c)
        self.candidates = seen or [1]
        self.reprobe = reprobe
        self._kinds: dict[str, dict] = {}

    def _state(self, kind: str) -> dict:
        return self._kinds.setdefault(kind, {"n": 0, "best": self.candidates[0], "probe": [],
                                             "samples": {c: [] for c in self.candidates}})

    def next(self, kind: str = "forward") -> int:
        st = self._state(kind)
        n = st["n"]
        st["n"] += 1
        if len(self.candidates) == 1 or n == 0:
            return st["best"]
        if n <= len(self.candidates):
            return self.candidates[n - 1]
        if self.reprobe and n % self.reprobe == 0:
            st["probe"] = [c for c in self.candidates if c != st["best"]]
        return st["probe"].pop() if st["probe"] else st["best"]

    def record(self, threads: int, seconds: float, work: int, kind: str = "forward") -> None:
        st = self._state(kind)
        if st["n"] <= 1 or work <= 0:  # the warm-up call
            return
        s = st["samples"].setdefault(threads, [])
        s.append(seconds / work)
        del s[:-3]  # recent samples only
        measured = {c: sorted(v)[len(v) // 2] for c, v in st["samples"].items() if v}
        st["best"] = min(measured, key=measured.get)

    @property
    def best(self) -> int:
        """The count the language model (most of the work) settled on."""
        st = self._kinds.get("text") or next(iter(self._kinds.values()), None)
        return st["best"] if st else self.candidates[0]

    @contextmanager
    def __call__(self, kind: str, work: int):
        """``with tuner("vision", patches): ...`` runs the block with the chosen thread count."""
        threads = self.next(kind)
        if threads != torch.get_num_threads():
            torch.set_num_threads(threads)
        t = time.perf_counter()
        yield threads
        self.record(threads, time.perf_counter() - t, work, kind)


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
            out = forward_embeddings(self.lm, collate_flat(items, self.lm.processor.tokenizer.pad_token_id, self.pin,
                                                           share=True))
            if self.lm.backend.name == "cpu":
                trim_heap()
            return out
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


def warn_if_other_weights(table, info: TableInfo) -> None:
    """A table made with another revision/projection: its rows are re-embedded as they come up."""
    if table.info.fingerprint != info.fingerprint or table.info.revision != info.revision:
        log.warning("store table %s was made with revision %s / projection %s; this model is %s / %s: "
                    "changed rows will be re-embedded", table.name, table.info.revision,
                    table.info.fingerprint, info.revision, info.fingerprint)


def plan_run(table, info: TableInfo, root: Path, paths: list[Path], scanned: list[FileInfo], image_processor,
             report: RunReport, emit, *, prune: bool, batch_size: int, max_batch_tokens: int | None,
             sort_by_tokens: bool) -> tuple[dict[str, dict], list[FileInfo], list[int], list[list[int]]]:
    """The listing every engine shares (local and Ray runs must store the same batches): prune rows
    of vanished files, report unreadable ones, skip unchanged ones (same content hash, revision and
    projection), count each image's visual tokens from its size, and cut batches by tokens.
    Returns ``(existing rows, todo, token counts, batches)``; ``report`` and ``emit`` are updated."""
    existing = table.index(str(root))
    if prune:
        present = {p.relative_to(root).as_posix() for p in paths}
        gone = [p for p in existing if p not in present]
        if gone:
            report.pruned = table.delete_paths(str(root), gone)
            emit("pruned", {"count": report.pruned})
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

    for fi in todo:
        try:
            fi.tokens = visual_tokens(fi.width, fi.height, image_processor) if fi.width and fi.height else 0
        except ValueError:
            fi.tokens = image_processor.size["longest_edge"] // (28 * 28)  # extreme aspect: padded on decode
    tokens = [fi.tokens for fi in todo]
    batches = make_batches(tokens, batch_size, max_batch_tokens or None, sort=sort_by_tokens,
                           max_padding=MAX_PADDING if sort_by_tokens else None)
    if sort_by_tokens:
        # Largest first: an out-of-memory batch shows up at once, and the cap it teaches holds for
        # the rest of the run.
        batches.reverse()
    report.batches = len(batches)
    report.padding_overhead = padding_overhead(tokens, batches) if todo else 0.0
    emit("plan", {"batches": len(batches), "padding_overhead": report.padding_overhead})
    return existing, todo, tokens, batches


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
    warn_if_other_weights(table, info)
    report = RunReport(str(root), str(store.path), table.name, discovered=len(paths))
    emit("discovered", {"count": len(paths)})

    with ThreadPoolExecutor(max_workers=8) as ex:
        scanned = list(ex.map(lambda p: scan_file(p, root), paths))
    existing, todo, tokens, batches = plan_run(
        table, info, root, paths, scanned, lm.processor.image_processor, report, emit, prune=prune,
        batch_size=batch_size, max_batch_tokens=max_batch_tokens, sort_by_tokens=sort_by_tokens)

    n_workers = default_workers(len(todo), lm.backend.name) if workers is None else workers
    tuner = None
    threads0 = torch.get_num_threads()
    if lm.backend.name == "cpu":
        cpus = available_cpus()
        tuner = ThreadTuner([threads0, max(1, cpus - n_workers), max(1, cpus // 2), 1])
        lm.thread_tuner = tuner  # encode.forward_embeddings asks it before each call
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
                del embs, records
            good = decoded = None  # release this batch's inputs before the next is decoded
            log.info("Processed batch %d/%d (%d images, %d embedded so far)", bi + 1, len(batches),
                     len(idx), report.embedded)
            emit("batch", {"index": bi + 1, "total": len(batches), "images": len(idx),
                           "embedded": report.embedded, "elapsed": time.perf_counter() - t_embed})
    finally:
        decoder.close()
        lm.thread_tuner = None
        torch.set_num_threads(threads0)
        report.model_threads = tuner.best if tuner else 0
        report.decode_workers = n_workers if decoder._started else 0  # started lazily, if needed
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


