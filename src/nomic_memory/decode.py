"""Decoding inputs into model-ready tensors, ahead of the model, in worker processes.

A decode task names one input (a file, and a page for documents); the result is the processor's
output for it (:class:`~nomic_memory.collate.Prepared`) or the :class:`~nomic_memory.errors.InputError`
that says why it cannot be embedded.  Workers are processes, not threads: decoding and the
processor hold the GIL, and PDF rendering is not thread-safe.
"""

from __future__ import annotations

import logging
import multiprocessing as mp
import queue
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from PIL import Image

from .batching import target_size
from .collate import Prepared, prepare_image
from .errors import InputError
from .images import hash_bytes, hash_file, load_image, load_image_hashed, read_file_bounded
from .memory import trim_heap
from .threads import available_cpus, torch_threads

log = logging.getLogger("nomic_memory")

# Pre-resize in the decode worker when the source has this many times the target's pixels (or was
# draft-decoded): below that, the processor's own resize is cheap and keeps results bit-identical
# to the model card's loop.
PRERESIZE_FACTOR = 4.0


@dataclass(frozen=True)
class DecodeTask:
    """One input to decode: ``page`` 0 for an image file, 1..N for a page of a document;
    ``content_hash``, when given, is what the planner saw: decoding other bytes is an error.
    For a PDF page, ``width`` x ``height`` is the size to draw it at (the processor's target)."""

    path: Path
    page: int = 0
    content_hash: str | None = None
    width: int = 0  # the size the scan read from the header (0: unknown), saving a second read
    height: int = 0


@dataclass(frozen=True)
class ProcessorSource:
    """Where a worker process loads the processor from (it never loads the model)."""

    directory: str  # a local directory, or a hub id (then pinned to ``revision``)
    kind: str
    max_visual_tokens: int | None = None
    revision: str | None = None

    def load(self):
        from colpali_engine.models import BiQwen2_5_Processor, ColQwen2_5_Processor

        cls = ColQwen2_5_Processor if self.kind == "colqwen" else BiQwen2_5_Processor
        kw: dict = {"max_num_visual_tokens": self.max_visual_tokens} if self.max_visual_tokens else {}
        if self.revision:
            kw["revision"] = self.revision
        return cls.from_pretrained(self.directory, **kw)


def decode_image(task: DecodeTask, image_processor) -> Image.Image:
    """The RGB image of one input, at most a few times the processor's target size.

    Large JPEGs are draft-decoded at 1/2-1/8 scale (never below what the model will see) and
    anything much larger than the target is resized once, on 8-bit pixels, to exactly the target:
    the processor then has no resize to do.  Below ``PRERESIZE_FACTOR`` the processor's own resize
    runs, which keeps results bit-identical to the model card's loop."""
    if task.page:
        return _decode_page(task, image_processor)
    path = task.path
    src_pixels = 0
    try:  # ask for a draft no smaller than what the model will see
        w, h = task.width, task.height
        if not (w and h):
            with Image.open(path) as probe:
                w, h = probe.size
        src_pixels = w * h  # orientation only swaps the sides: the pixel count is the same
        th, tw = _safe_target(w, h, image_processor)
        target = th * tw
    except Exception:  # load_image names the precise reason
        target = None
    if task.content_hash:
        img, digest, _ = load_image_hashed(path, target_pixels=target)
        if digest != task.content_hash:
            # The stored hash must be the hash of the bytes embedded: this content was never
            # planned, so it is left to the next run (which sees its new hash).
            raise InputError(path, _CHANGED)
    else:
        img = load_image(path, target_pixels=target)
    drafted = img.width * img.height < src_pixels  # pixels differ from a full decode anyway
    return fit_to_target(img, image_processor, always=drafted)


def fit_to_target(img: Image.Image, image_processor, always: bool = False) -> Image.Image:
    """Resize once, on 8-bit pixels, to exactly the processor's target size when the image is
    more than ``PRERESIZE_FACTOR`` times larger (or ``always``): the processor then has no resize
    to do.  Smaller images are left to the processor's own resize, as the model card's loop does."""
    th, tw = target_size(img.width, img.height, image_processor)
    if (img.width, img.height) != (tw, th) and (always or img.width * img.height > PRERESIZE_FACTOR * th * tw):
        img = img.resize((tw, th), Image.Resampling.BICUBIC, reducing_gap=3.0)
    return img


_CHANGED = "the file changed while the run was in progress; the next run embeds its new content"
# Documents whose bytes this process has hashed: (path, planned hash) -> (size, mtime_ns) then.
_VERIFIED: dict[tuple[str, str], tuple[int, int]] = {}


def _verify_document(task: DecodeTask) -> None:
    """The stored hash must be the hash of the bytes drawn: a document's file is hashed once per
    process (its pages are drawn one by one, possibly in several batches) and re-hashed whenever
    its size or modification time moves."""
    import os

    if not task.content_hash:
        return
    key = (str(task.path), task.content_hash)
    try:
        st = os.stat(task.path)
    except OSError as e:
        raise InputError(task.path, f"cannot read file: {e.strerror or e}", task.page) from None
    if _VERIFIED.get(key) == (st.st_size, st.st_mtime_ns):
        return
    digest, _ = hash_file(task.path)
    if digest != task.content_hash:
        raise InputError(task.path, _CHANGED, task.page)
    _VERIFIED.clear()  # one document at a time, as the renderer keeps one open
    _VERIFIED[key] = (st.st_size, st.st_mtime_ns)


def _decode_page(task: DecodeTask, image_processor) -> Image.Image:
    """A page of a document: PDF pages are drawn straight at their planned size; TIFF frames are
    decoded like any image, then resized once to the processor's target."""
    from .documents import is_document_path, render_page

    if is_document_path(task.path):
        _verify_document(task)
        return render_page(task.path, task.page, (task.width, task.height))
    if task.content_hash:
        data = read_file_bounded(task.path)
        if hash_bytes(data) != task.content_hash:
            raise InputError(task.path, _CHANGED, task.page)
        img = load_image(task.path, page=task.page, data=data)
    else:
        img = load_image(task.path, page=task.page)
    return fit_to_target(img, image_processor)


def decode_and_prepare(processor, source: DecodeTask | Path | Image.Image) -> Prepared:
    """Decode one input (a task, a path, or an in-memory image) and run the processor on it."""
    if isinstance(source, Image.Image):
        from .images import pad_extreme_aspect, to_rgb

        return prepare_image(processor, fit_to_target(pad_extreme_aspect(to_rgb(source)), processor.image_processor))
    task = source if isinstance(source, DecodeTask) else DecodeTask(Path(source))
    return prepare_image(processor, decode_image(task, processor.image_processor))


def _safe_target(w: int, h: int, ip) -> tuple[int, int]:
    try:
        return target_size(w, h, ip)
    except ValueError:  # extreme aspect ratio: padded later, no draft
        return h, w


def decode_task(processor, task: DecodeTask, lock=None) -> Prepared | InputError:
    """Decode one input; a failure is returned as the input's :class:`InputError`, never raised.
    ``lock``: held around the processor only (decoding pixels releases the GIL and runs in
    parallel; a fast tokenizer shared by threads must not be entered twice at once)."""
    try:
        img = decode_image(task, processor.image_processor)
        if lock is None:
            return prepare_image(processor, img)
        with lock:
            return prepare_image(processor, img)
    except InputError as e:
        return e
    except Exception as e:  # a processor failure on one input must not stop the run
        return InputError(task.path, f"{type(e).__name__}: {e}", task.page or None)


def decode_tasks(processor, tasks: list[DecodeTask]) -> list[Prepared | InputError]:
    """Decode several inputs; a failure is returned as the input's :class:`InputError`, never raised."""
    out = [decode_task(processor, task) for task in tasks]
    trim_heap()
    return out


def _decode_worker_main(source: ProcessorSource, tasks, results) -> None:
    """A decode worker process: takes ``(batch, position, task)`` until it gets ``None``."""
    torch.set_num_threads(1)
    processor = source.load()
    while True:
        item = tasks.get()
        if item is None:
            break
        bi, pos, task = item
        results.put((bi, pos, decode_tasks(processor, [task])[0]))


class Decoder:
    """Decodes batches ahead of the model: in worker processes, in threads, or inline.

    With ``threads`` > 1 and no worker processes, a pool of threads decodes the next ``prefetch``
    batches while the model runs: JPEG/PNG decoding, PDF drawing and resizing release the GIL, so
    on a CPU-only machine this uses every core without starting a process (which would import
    torch, seconds of CPU that a short run never earns back).

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

    def __init__(self, processor, source: ProcessorSource, workers: int, prefetch: int | None = None,
                 start_after: float = 1.0, assist: bool = True, min_share: float = 0.25, threads: int = 0):
        self.processor = processor
        self.threads = threads
        self.source = source
        self.min_share = min_share
        self.consumer_seconds = 0.0
        self.assist = assist  # the main thread decodes when the model would otherwise wait
        self.workers = workers
        # Batches in flight, at most.  Threads decode the next batch while the model runs this
        # one (one ahead is enough to overlap, and each decoded page holds ~14 MB of float32
        # patches at 768 tokens); worker processes keep more queued ahead.
        self.prefetch = prefetch or (1 if workers == 0 and threads > 1 else max(2, 2 * workers))
        self.start_after = start_after
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
                            args=(self.source, self._tasks, self._results))
            p.start()
            self._procs.append(p)

    def _inline(self, tasks: list[DecodeTask]) -> list[Prepared | InputError]:
        t = time.perf_counter()
        with torch_threads(1):
            out = decode_tasks(self.processor, tasks)
        self.inline_seconds += time.perf_counter() - t
        self.inline_images += len(tasks)
        return out

    def map(self, batches: list[list[DecodeTask]]):
        """Yield decoded batches in order, keeping up to ``prefetch`` batches in flight."""
        if self.workers == 0 and self.threads > 1:
            yield from self._map_threads(batches)
            return
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
                    self._stop()
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

    def _map_threads(self, batches: list[list[DecodeTask]]):
        import threading
        from concurrent.futures import ThreadPoolExecutor

        lock = threading.Lock()
        ex = ThreadPoolExecutor(self.threads, thread_name_prefix="nomic-memory-decode")
        pending: dict[int, list] = {}

        def submit(b: int) -> None:
            pending[b] = [ex.submit(decode_task, self.processor, task, lock) for task in batches[b]]

        try:
            for b in range(min(self.prefetch, len(batches))):
                submit(b)
            for k in range(len(batches)):
                t = time.perf_counter()
                out = [f.result() for f in pending.pop(k)]
                self.inline_seconds += time.perf_counter() - t  # time the consumer waited
                if k + self.prefetch < len(batches):
                    submit(k + self.prefetch)
                self.inline_images += len(out)
                trim_heap()
                yield out
        finally:
            ex.shutdown(wait=True, cancel_futures=True)

    def _drain(self, record, block: bool) -> None:
        try:
            item = self._results.get(timeout=0.05) if block else self._results.get_nowait()
            while True:
                record(*item)
                self.worker_images += 1
                item = self._results.get_nowait()
        except queue.Empty:
            pass

    def _stop(self) -> None:
        # A worker holds no state worth a clean exit (its results are either consumed or no
        # longer wanted), and a worker still importing torch would keep a polite shutdown
        # waiting for seconds: terminate them all at once, then reap them.
        procs, self._procs = self._procs, []
        for p in procs:
            if p.is_alive():
                p.terminate()
        for p in procs:
            p.join(timeout=1.0)
            if p.is_alive():
                p.kill()
                p.join(timeout=1.0)
        for q in (self._tasks, self._results):
            if q is not None:
                q.cancel_join_thread()
                q.close()
        self._tasks = self._results = None

    def close(self) -> None:
        self._stop()


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
