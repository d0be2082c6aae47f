"""Decoding ahead of the model: the next batches are decoded and run through the processor in
threads or worker processes while the model embeds the current one.

Pixels come from :mod:`nomic_memory.ingest.decode`, model inputs from
:mod:`nomic_memory.model.collate`; this module only decides where and when that work runs.
"""

from __future__ import annotations

import logging
import multiprocessing as mp
import queue
import time

import torch

from nomic_memory.errors import InputError
from nomic_memory.ingest.decode import DecodeTask
from nomic_memory.memory import trim_heap
from nomic_memory.model.collate import Prepared, decode_task, decode_tasks
from nomic_memory.model.loading import ProcessorSource
from nomic_memory.threads import available_cpus, torch_threads

log = logging.getLogger("nomic_memory")


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

    def __init__(
        self,
        processor,
        source: ProcessorSource,
        workers: int,
        prefetch: int | None = None,
        start_after: float = 1.0,
        assist: bool = True,
        min_share: float = 0.25,
        threads: int = 0,
    ):
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
            p = ctx.Process(target=_decode_worker_main, daemon=True, args=(self.source, self._tasks, self._results))
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
            if (
                self.workers > 0
                and not self._started
                and self.inline_seconds >= self.start_after
                and self.inline_seconds >= self.min_share * self.consumer_seconds
                and len(tasks) - starts[k] >= 2 * self.workers
            ):
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
