"""The local executor: decode ahead of the model in worker processes, run the lean forward here.

* **decode** (worker processes, prefetching ahead of the model; the main thread helps whenever
  the model would wait): JPEG draft decoding, one resize to the processor's target size, the
  processor itself; the GIL never serialises them.
* **encode**: the lean forward; an out-of-memory batch is split and retried, and the lower size
  is remembered.  On the CPU a tuner measures which intra-op thread count is fastest.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator

import torch

from nomic_memory.errors import InputError
from nomic_memory.ingest.decode import DecodeTask
from nomic_memory.memory import MemoryTracker
from nomic_memory.model.backends import Backend
from nomic_memory.model.loading import LoadedModel, ModelSpec, ProcessorSource, ResolvedModel
from nomic_memory.run.driver import BatchResult, ModelStamp, RunPlan, RunReport
from nomic_memory.run.prefetch import Decoder, default_workers
from nomic_memory.threads import ThreadTuner, available_cpus

log = logging.getLogger("nomic_memory")


class LocalExecutor:
    """Runs planned batches on this machine with one model (loaded on :meth:`start`, or given).

    ``model``: a loaded model, or a ``(spec, backend)`` pair loaded only if there is work.
    ``workers``: decode worker processes (None: by backend and run size; 0: decode inline)."""

    def __init__(
        self,
        model: LoadedModel | None = None,
        *,
        spec: ModelSpec | None = None,
        backend: Backend | None = None,
        resolved: ResolvedModel | None = None,
        workers: int | None = None,
    ):
        if model is None and (spec is None or backend is None):
            raise ValueError("LocalExecutor needs a loaded model, or a spec and a backend")
        self.lm = model
        self.spec, self.backend, self.resolved = spec, backend, resolved
        self.workers = workers
        self._processor = model.processor if model is not None else None
        self._state: dict = {}

    def processor(self):
        if self._processor is None:
            self._processor = self.spec.load_processor(self.resolved)
        return self._processor

    def start(self) -> ModelStamp:
        if self.lm is None:
            self.lm = self.spec.load(self.backend, self.resolved)
        self._processor = self.lm.processor
        return ModelStamp.of(self.lm)

    @property
    def fingerprints(self) -> frozenset[str]:
        return self.lm.fingerprints if self.lm is not None else frozenset()

    @property
    def notes(self) -> list[str]:
        """What loading the model had to say (a head initialised from the seed, merged adapters...)."""
        return list(self.lm.notes) if self.lm is not None else []

    def _source(self) -> ProcessorSource:
        lm = self.lm
        mvt = self.spec.max_visual_tokens if self.spec is not None else None
        return ProcessorSource(str(lm.source), lm.kind, mvt)

    def run(self, plan: RunPlan) -> Iterator[BatchResult]:
        lm = self.lm
        stamp = ModelStamp.of(lm)
        cpus = available_cpus()
        # On the CPU backend, decoding runs in threads of this process unless worker processes
        # are asked for: they would compete with the model for the same cores, and each would
        # first spend seconds importing torch.
        threads = cpus if lm.backend.name == "cpu" and self.workers is None else 0
        if threads:
            n_workers = 0
        else:
            n_workers = default_workers(len(plan.todo), lm.backend.name) if self.workers is None else self.workers
        if n_workers > cpus:
            # More decode processes than cores only compete with each other and the model
            # (64 workers on 2 cores measured 25x slower): one per core at most.
            log.warning(
                "--workers %d is more than the %d CPU cores available: using %d decode workers", n_workers, cpus, cpus
            )
            n_workers = cpus
        threads0 = torch.get_num_threads()
        tuner = None
        if lm.backend.name == "cpu":
            cpus = available_cpus()
            tuner = ThreadTuner([threads0, max(1, cpus - n_workers), max(1, cpus // 2), 1])
            lm.thread_tuner = tuner  # encode asks it before each call
        from nomic_memory.model.encode import BatchEncoder  # transformers' model code: only once there is work

        decoder = Decoder(lm.processor, self._source(), n_workers, threads=threads)
        encoder = BatchEncoder(lm)
        tracker = MemoryTracker(lm.backend.name, lm.backend.device).start()
        self._state = {
            "decoder": decoder,
            "encoder": encoder,
            "tracker": tracker,
            "tuner": tuner,
            "threads0": threads0,
            "workers": n_workers,
        }
        tasks = [
            [DecodeTask(it.path, it.page, it.file.content_hash, it.width, it.height) for it in plan.batch_items(b)]
            for b in range(len(plan.batches))
        ]
        try:
            for b, decoded in enumerate(decoder.map(tasks)):
                good = [i for i, d in enumerate(decoded) if not isinstance(d, InputError)]
                outputs: list = list(decoded)
                if good:
                    embs = encoder([decoded[i] for i in good])
                    tracker.sample()
                    for i, e in zip(good, embs):
                        outputs[i] = e.float().numpy()
                    del embs
                decoded = None  # release this batch's inputs before the next is decoded
                yield BatchResult(b, outputs, stamp)
        finally:
            self._close()

    def _close(self) -> None:
        st = self._state
        if not st or st.get("closed"):
            return
        st["closed"] = True
        st["decoder"].close()
        self.lm.thread_tuner = None
        torch.set_num_threads(st["threads0"])
        st["memory"] = st["tracker"].stop()

    def finish(self, report: RunReport) -> None:
        st = self._state
        if not st:
            return
        self._close()
        report.model_threads = st["tuner"].best if st["tuner"] else 0
        report.decode_workers = st["workers"] if st["decoder"]._started else 0  # started lazily, if needed
        report.decode_threads = st["decoder"].threads
        report.memory = st["memory"]
        report.oom_splits = st["encoder"].splits
        report.final_batch_cap = st["encoder"].cap or 0


__all__ = ["LocalExecutor"]
