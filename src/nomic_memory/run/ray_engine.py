"""Scale-out on Ray: the run driver's executor for a Ray cluster (``embed --engine ray``).

The driver (:func:`nomic_memory.run.driver.run_embedding`) lists, hashes, skips unchanged inputs and
plans the batches exactly as for a local run, and commits each batch to the store as it comes
back; this executor only maps the planned batches to embeddings on the cluster::
    Ray Data  from_items(planned batches) -> decode (CPU tasks) -> embed (actor pool, one model each)

* **Same batches, same embeddings.**  One dataset row is one planned batch (the model stage takes
  ``batch_size=1`` row), so a Ray run embeds the same inputs in the same batches with the same
  weights as a local run, and stores the same vectors.
* **Only the driver touches the store.**  Workers read the inputs (by absolute path: on a
  multi-node cluster the folder must be mounted at the same path everywhere) and load the model
  (a hub id is fetched into each node's Hugging Face cache, pinned to the commit the driver
  resolved; a local model directory must be on shared storage); they never open the store.
* **No model on the driver.**  The driver loads only the processor (for token counts).  Each
  actor reports the projection fingerprint of the model it loaded with its results; the driver
  refuses results from actors that disagree, and creates a new table from the first result.
* **Tensors between stages** travel as raw numpy buffers in Arrow ``binary`` columns, with their
  dtypes and shapes in a JSON column: nothing depends on Ray's tensor extension types or on
  pickling torch objects.
* **Failures.**  A bad input comes back from the decode stage as an error entry (reported and
  skipped, as locally); decode tasks are retried by Ray (``max_retries``) and a model actor whose
  process dies is restarted and its batch retried (``max_restarts`` / ``max_task_retries``).

``import ray`` happens at module level on purpose: without the ``ray`` extra, importing this module
raises ImportError, which the CLI turns into install instructions.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import socket
import time
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

# Under `uv run`, Ray (>= 2.44) by default re-creates the driver's environment on every worker with
# `uv run` inside a copy of the working directory -- without the project's `.venv` and without the
# extras the driver was synced with, so workers die with "No module named 'ray'" and the job hangs.
# Workers started by this engine run on the interpreter and packages of the machine they start on
# (the same venv on a local cluster; the cluster image on a remote one), so the hook is opted out
# unless the user asked for it explicitly (RAY_ENABLE_UV_RUN_RUNTIME_ENV=1).  Ray reads the flag
# once, when `ray` is first imported -- which may already have happened in this process (another
# library, a notebook cell), so the constant Ray consults at `ray.init` is set as well.
os.environ.setdefault("RAY_ENABLE_UV_RUN_RUNTIME_ENV", "0")

import ray  # noqa: E402
import ray.data  # noqa: E402
from ray._private import ray_constants as _ray_constants  # noqa: E402

from nomic_memory.errors import EngineError, InputError
from nomic_memory.ingest.decode import DecodeTask
from nomic_memory.logs import quiet_libraries
from nomic_memory.memory import MemoryReport, MemoryTracker, read_status_kb
from nomic_memory.model.backends import Backend, select_backend
from nomic_memory.model.collate import Prepared, decode_tasks
from nomic_memory.model.loading import LoadedModel, ModelSpec, ProcessorSource, ResolvedModel
from nomic_memory.run.driver import BatchResult, ModelStamp, RunPlan, RunReport

if os.environ["RAY_ENABLE_UV_RUN_RUNTIME_ENV"].strip().lower() in ("0", "false"):
    _ray_constants.RAY_ENABLE_UV_RUN_RUNTIME_ENV = False

log = logging.getLogger("nomic_memory")

# Starting a local cluster (at run time, after this import), Ray launches its daemons (GCS,
# raylet, dashboard, log monitor...) from this process with a pre-exec hook, so Python's at-fork
# handlers run in each child before it execs the daemon; LanceDB's handler (the store is open in the driver) then warns that "lancedb fork
# support is experimental", once per daemon.  Those children replace themselves with another
# program at once and never use LanceDB, so the warning does not apply to them: it is filtered here
# (warning filters are inherited across fork), by its exact message, and no other warning is.
warnings.filterwarnings("ignore", message="lancedb fork support is experimental", category=RuntimeWarning)

#: Retries of a decode task whose worker died (Ray task ``max_retries``).
DECODE_MAX_RETRIES = 3
#: Restarts of a model actor whose process died, and retries of the batch it was running.  Finite
#: (Ray Data's default is infinite) so that a model that kills its worker every time (say, the
#: host's OOM killer) fails the run instead of looping.
ACTOR_MAX_RESTARTS = 3
ACTOR_MAX_TASK_RETRIES = 3
#: Logical CPUs requested by one decode task when the model runs on CPU (the model actors take
#: the rest of the CPUs); on CUDA each decode task asks for one CPU.
CPU_DECODE_CPUS = 0.5


class RayEngineError(EngineError):
    """The Ray job cannot run as asked (e.g. CUDA workers on a cluster without GPUs)."""


class RayWorkersError(EngineError):
    """Ray workers cannot start, or cannot import nomic_memory, on the cluster."""


# ---------------------------------------------------------------- packing tensors into Arrow
def _pack(arrays: list[np.ndarray]) -> tuple[bytes, dict]:
    """Concatenate arrays along axis 0 into one little-endian buffer (plus how to split it)."""
    if not arrays:
        return b"", {"dtype": "float32", "rows": [], "tail": []}
    cat = np.ascontiguousarray(np.concatenate([np.asarray(a) for a in arrays], axis=0))
    dt = cat.dtype.newbyteorder("<")
    return cat.astype(dt, copy=False).tobytes(), {
        "dtype": dt.str,
        "rows": [int(a.shape[0]) for a in arrays],
        "tail": list(cat.shape[1:]),
    }


def _unpack(buf: bytes, spec: dict) -> list[np.ndarray]:
    """Inverse of :func:`_pack` (writable copies)."""
    tail = tuple(spec["tail"])
    flat = np.frombuffer(buf, dtype=np.dtype(spec["dtype"]))
    whole = flat.reshape((-1, *tail)) if flat.size else np.zeros((0, *tail), np.dtype(spec["dtype"]))
    out, start = [], 0
    for n in spec["rows"]:
        out.append(np.array(whole[start : start + n]))
        start += n
    return out


def _object_column(values: list) -> np.ndarray:
    col = np.empty(len(values), dtype=object)
    for i, v in enumerate(values):
        col[i] = v
    return col


@ray.remote(num_cpus=1, max_retries=0)
def _ping() -> str:
    # late on purpose: runs on a Ray worker, to prove this package imports there
    from nomic_memory.run import ray_engine

    return ray_engine.__name__


def _check_workers_start() -> None:
    """Start one worker task before the dataset: when workers cannot start (a broken Python
    environment on the nodes, the package not installed there), Ray fails a plain task with a
    system error after its retries, whereas the Ray Data actor pool would wait for ever."""
    try:
        ray.get(_ping.remote())
    except (ray.exceptions.RaySystemError, ray.exceptions.RayTaskError, ray.exceptions.WorkerCrashedError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise RayWorkersError(
            "Ray workers cannot start or cannot import nomic_memory on this cluster "
            f"({first}); install nomic-memory with its 'ray' extra in the workers' Python "
            "environment (see raylet.err in the Ray session logs)"
        ) from None


# ---------------------------------------------------------------- decode stage (CPU tasks)
_PROCESSORS: dict[ProcessorSource, Any] = {}


def _processor(source: ProcessorSource):
    """The processor, loaded once per worker process (Ray reuses task workers)."""
    if source not in _PROCESSORS:
        import torch

        quiet_libraries()
        torch.set_num_threads(1)
        _PROCESSORS[source] = source.load()
    return _PROCESSORS[source]


def _decode_stage(batch: dict, *, source: dict) -> dict:
    """Rows of planned batches (``batch``, ``tasks`` as JSON) -> the processor's outputs, packed.

    An input that cannot be decoded becomes an entry in the row's ``errors``, never an exception.
    """
    proc = _processor(ProcessorSource(**source))
    cols: dict[str, list] = {
        k: [] for k in ("batch", "meta", "input_ids", "mm_token_type_ids", "pixel_values", "image_grid_thw")
    }
    for bi, tasks_json in zip(batch["batch"], batch["tasks"]):
        tasks = [DecodeTask(Path(p), page, h, w, ht) for p, page, h, w, ht in json.loads(str(tasks_json))]
        decoded = decode_tasks(proc, tasks)
        ok = [i for i, d in enumerate(decoded) if not isinstance(d, InputError)]
        errors = [[i, d.reason] for i, d in enumerate(decoded) if isinstance(d, InputError)]
        good = [decoded[i] for i in ok]
        has_mm = bool(good) and good[0].mm_token_type_ids is not None
        ids, ids_spec = _pack([d.input_ids.numpy() for d in good])
        mm, mm_spec = _pack([d.mm_token_type_ids.numpy() for d in good] if has_mm else [])
        pv, pv_spec = _pack([d.pixel_values.numpy() for d in good])
        grid, grid_spec = _pack([d.image_grid_thw.numpy()[None] for d in good])
        meta = {
            "ok": ok,
            "errors": errors,
            "has_mm": has_mm,
            "input_ids": ids_spec,
            "mm_token_type_ids": mm_spec,
            "pixel_values": pv_spec,
            "image_grid_thw": grid_spec,
        }
        for k, v in (
            ("batch", int(bi)),
            ("meta", json.dumps(meta)),
            ("input_ids", ids),
            ("mm_token_type_ids", mm),
            ("pixel_values", pv),
            ("image_grid_thw", grid),
        ):
            cols[k].append(v)
    out = {k: _object_column(v) for k, v in cols.items() if k != "batch"}
    out["batch"] = np.asarray(cols["batch"], dtype=np.int64)
    return out


# ---------------------------------------------------------------- model stage (actor pool)
def _worker_name() -> str:
    name = f"{socket.gethostname()}:{os.getpid()}"
    try:
        gpus = ray.get_gpu_ids()
        if gpus:
            name += ":gpu" + ",".join(str(g) for g in gpus)
    except Exception:
        pass
    return name


class EmbedWorker:
    """One model copy (one Ray actor): collate + lean forward with OOM splitting, per batch."""

    def __init__(
        self, *, spec: dict, backend_name: str, dtype_name: str, threads: int | None, crash_marker: str | None = None
    ):
        import torch

        # late: transformers' model code, on the actor only (the driver loads no model)
        from nomic_memory.model.encode import BatchEncoder

        quiet_libraries()
        if backend_name == "cpu" and threads:
            torch.set_num_threads(max(1, min(threads, os.cpu_count() or threads)))
        be = select_backend(backend_name, dtype=dtype_name)
        t0 = time.perf_counter()
        self.lm: LoadedModel = ModelSpec(**spec).load(be)
        self.load_seconds = time.perf_counter() - t0
        self.encoder = BatchEncoder(self.lm)
        self.tracker = MemoryTracker(be.name, be.device).start()
        self.worker = _worker_name()
        self.crash_marker = crash_marker
        self.busy_seconds = 0.0

    def _memory(self) -> dict:
        d = dataclasses.asdict(self.tracker.report())
        if self.lm.backend.name == "cpu":
            # RSS counts the pages of Ray's shared-memory object store this process has read its
            # inputs from; say how much of it that is.
            shm = read_status_kb("RssShmem")
            if shm is not None:
                d["extra"]["current_rss_shmem"] = shm * 1024
        return d

    def __call__(self, batch: dict) -> dict:
        import torch

        if self.crash_marker and not os.path.exists(self.crash_marker):
            # Test hook: die like a lost node or an OOM-killed process would, once.
            Path(self.crash_marker).write_text(self.worker)
            os._exit(1)
        cols: dict[str, list] = {"batch": [], "meta": [], "embedding": []}
        for j in range(len(batch["batch"])):
            meta = json.loads(str(batch["meta"][j]))
            ids = _unpack(batch["input_ids"][j], meta["input_ids"])
            mm = _unpack(batch["mm_token_type_ids"][j], meta["mm_token_type_ids"]) if meta["has_mm"] else None
            pv = _unpack(batch["pixel_values"][j], meta["pixel_values"])
            grid = _unpack(batch["image_grid_thw"][j], meta["image_grid_thw"])
            items = [
                Prepared(
                    torch.from_numpy(ids[k]),
                    None if mm is None else torch.from_numpy(mm[k]),
                    torch.from_numpy(pv[k]),
                    torch.from_numpy(grid[k][0]),
                )
                for k in range(len(ids))
            ]
            t0 = time.perf_counter()
            embs = [e.float().numpy() for e in self.encoder(items)] if items else []
            self.busy_seconds += time.perf_counter() - t0
            self.tracker.sample()
            buf, spec = _pack([e.reshape(-1, self.lm.dim) for e in embs])
            cols["batch"].append(int(batch["batch"][j]))
            cols["embedding"].append(buf)
            cols["meta"].append(
                json.dumps(
                    {
                        "ok": meta["ok"],
                        "errors": meta["errors"],
                        "embedding": spec,
                        "worker": self.worker,
                        "stamp": dataclasses.asdict(ModelStamp.of(self.lm)),
                        "memory": self._memory(),
                        "load_seconds": self.load_seconds,
                        "busy_seconds": self.busy_seconds,
                        "oom_splits": self.encoder.splits,
                        "cap": self.encoder.cap,
                    }
                )
            )
        return {
            "batch": np.asarray(cols["batch"], dtype=np.int64),
            "meta": _object_column(cols["meta"]),
            "embedding": _object_column(cols["embedding"]),
        }


# ---------------------------------------------------------------- the driver
def _connect(ray_address: str | None) -> bool:
    """Connect to (or start) a Ray cluster; True when this call started it (and should stop it)."""
    if ray.is_initialized():
        return False
    kw: dict = {"logging_level": logging.WARNING, "log_to_driver": True}
    if ray_address:
        ray.init(address=ray_address, **kw)
    else:
        ray.init(include_dashboard=False, **kw)
    return True


def _resolve_backend(backend: Backend | None, cluster: dict) -> Backend:
    """``--backend auto`` means the best backend *of the cluster*: a driver without a GPU (a head
    node, a laptop on ``ray://``) still sends CUDA work to GPU workers."""
    if backend is None:
        backend = select_backend("auto")
    if backend.auto and backend.name == "cpu" and cluster.get("GPU", 0) > 0:
        import torch

        # fp32 is the CPU default, so it cannot be told from an explicit --dtype float32 here.
        dtype = backend.dtype if backend.dtype != torch.float32 else torch.bfloat16
        backend = Backend("cuda", torch.device("cuda"), dtype, "sdpa", auto=True)
    return backend


def _placement(backend: Backend, cluster: dict, workers: int | None, gpus_per_worker: float) -> dict:
    """Actor count and per-actor / per-decode-task resource requests."""
    cpus = float(cluster.get("CPU", 0))
    if backend.name == "cuda":
        gpus = float(cluster.get("GPU", 0))
        if gpus_per_worker <= 0:
            raise RayEngineError("--gpus-per-worker must be positive with the CUDA backend")
        fit = int(gpus // gpus_per_worker + 1e-9)
        if fit < 1:
            raise RayEngineError(
                f"the Ray cluster has {gpus:g} GPUs, fewer than --gpus-per-worker "
                f"{gpus_per_worker:g}; use --backend cpu or add GPU nodes"
            )
        n = workers or fit
        if n > fit:
            log.warning(
                "%d model workers asked for, but %g GPUs hold only %d at %g GPUs each: using %d",
                n,
                gpus,
                fit,
                gpus_per_worker,
                fit,
            )
            n = fit
        return {
            "workers": n,
            "actor": {"num_gpus": gpus_per_worker, "num_cpus": 1},
            "threads": None,
            "decode_cpus": 1.0,
            "decode_tasks": None,
        }
    if backend.name == "mps":
        raise RayEngineError("Ray workers cannot use Apple MPS; use --backend cpu (or --engine local)")
    n = workers or 1
    free = cpus - CPU_DECODE_CPUS
    if free <= 0:
        raise RayEngineError(f"the Ray cluster has {cpus:g} CPUs: not enough for a CPU model worker")
    if n > max(1, int(free)):
        log.warning("%d CPU model workers asked for, but the cluster has %g CPUs: using %d", n, cpus, max(1, int(free)))
        n = max(1, int(free))
    actor_cpus = min(max(1.0, cpus // n), free / n)
    # Whole CPUs only: torch's OpenMP threads spin-wait at every barrier, so one thread more than
    # the cores left free by decoding makes the forward much slower, not faster.
    threads = max(1, int(actor_cpus + 1e-9))
    # Cap concurrent decode tasks at the CPUs the actors leave: every extra task would only start
    # (and import torch in) another worker process that then waits for a CPU.
    spare = cpus - n * actor_cpus
    return {
        "workers": n,
        "actor": {"num_cpus": round(actor_cpus, 4)},
        "threads": threads,
        "decode_cpus": CPU_DECODE_CPUS,
        "decode_tasks": max(1, int(spare // CPU_DECODE_CPUS + 1e-9)),
    }


def _memory_report(d: dict) -> MemoryReport:
    return MemoryReport(
        d["backend"], int(d["peak_bytes"]), dict(d.get("extra") or {}), int(d.get("baseline_bytes") or 0)
    )


def _dataset(
    plan: RunPlan, spec: ModelSpec, source: ProcessorSource, be: Backend, place: dict, crash_marker: str | None, ctx
):
    ctx.enable_progress_bars = False  # the caller's progress display reports the batches
    ctx.print_on_execution_start = False
    logging.getLogger("ray.data").setLevel(logging.WARNING)
    logging.getLogger("ray.data._internal.progress").setLevel(logging.ERROR)  # "progress bars disabled"
    items = [
        {
            "batch": bi,
            "tasks": json.dumps(
                [[str(it.path), it.page, it.file.content_hash, it.width, it.height] for it in plan.batch_items(bi)]
            ),
        }
        for bi in range(len(plan.batches))
    ]
    src = {"source": dataclasses.asdict(source)}
    with warnings.catch_warnings():
        # max_retries / max_restarts / max_task_retries still go through **ray_remote_args in Ray 2.60.
        warnings.simplefilter("ignore", DeprecationWarning)
        warnings.filterwarnings("ignore", message=".*ray_remote_args.*")
        ds = ray.data.from_items(items, override_num_blocks=len(items))
        ds = ds.map_batches(
            _decode_stage,
            batch_size=1,
            batch_format="numpy",
            fn_kwargs=src,
            compute=ray.data.TaskPoolStrategy(size=place["decode_tasks"]),
            num_cpus=place["decode_cpus"],
            max_retries=DECODE_MAX_RETRIES,
        )
        ds = ds.map_batches(
            EmbedWorker,
            batch_size=1,
            batch_format="numpy",
            compute=ray.data.ActorPoolStrategy(size=place["workers"]),
            fn_constructor_kwargs={
                "spec": dataclasses.asdict(spec),
                "backend_name": be.name,
                "dtype_name": be.dtype_name,
                "threads": place["threads"],
                "crash_marker": crash_marker,
            },
            max_restarts=ACTOR_MAX_RESTARTS,
            max_task_retries=ACTOR_MAX_TASK_RETRIES,
            **place["actor"],
        )
    return ds


class RayExecutor:
    """Runs planned batches on a Ray cluster (see the module docstring).

    ``ray_address``: ``None`` uses the cluster this process is connected to, else the one in
    ``RAY_ADDRESS`` or started with ``ray start`` on this machine, else starts a local cluster for
    the run (every CPU/GPU of this machine, stopped after it); ``"auto"``, ``"host:6379"`` or
    ``"ray://host:10001"`` join a running cluster.  ``workers``: model actors (default: one per
    ``gpus_per_worker`` GPUs of the cluster with CUDA, 1 on CPU; never more than there are
    batches).  ``crash_marker`` (tests; also ``$NOMIC_MEMORY_RAY_CRASH_MARKER``): the first actor
    to find that file missing creates it and kills its own process."""

    def __init__(
        self,
        spec: ModelSpec,
        backend: Backend | None,
        resolved: ResolvedModel,
        *,
        workers: int | None = None,
        ray_address: str | None = None,
        gpus_per_worker: float = 1.0,
        crash_marker: str | None = None,
    ):
        if not resolved.local:  # every worker loads the commit the driver resolved
            spec = dataclasses.replace(spec, name=resolved.model_id, variant=None, revision=resolved.revision)
        else:
            spec = dataclasses.replace(spec, name=str(resolved.source), variant=None)
        self.spec, self.resolved = spec, resolved
        self.backend = backend
        self.workers, self.ray_address, self.gpus_per_worker = workers, ray_address, gpus_per_worker
        self.crash_marker = crash_marker or os.environ.get("NOMIC_MEMORY_RAY_CRASH_MARKER")
        self._processor = None
        self._started = False
        self._ctx_saved: dict | None = None
        self._workers: dict[str, dict] = {}

    def processor(self):
        if self._processor is None:
            self._processor = self.spec.load_processor(self.resolved)
        return self._processor

    def start(self) -> ModelStamp | None:
        """Connect to (or start) the cluster and check that workers can run; the model is loaded
        by the actors, whose results carry its stamp."""
        self._started = _connect(self.ray_address)
        ctx = ray.data.DataContext.get_current()
        self._ctx_saved = {k: getattr(ctx, k) for k in ("enable_progress_bars", "print_on_execution_start")}
        _check_workers_start()
        self.cluster = ray.cluster_resources()
        self.backend = _resolve_backend(self.backend, self.cluster)
        return None

    def run(self, plan: RunPlan) -> Iterator[BatchResult]:
        place = _placement(self.backend, self.cluster, self.workers, self.gpus_per_worker)
        # An actor without a batch to run would only cost a model load.
        place = _placement(
            self.backend, self.cluster, max(1, min(place["workers"], len(plan.batches))), self.gpus_per_worker
        )
        log.info(
            "Ray cluster: %s; %d model worker(s) on %s (%s each)",
            {k: v for k, v in self.cluster.items() if k in ("CPU", "GPU")},
            place["workers"],
            self.backend.name,
            place["actor"],
        )
        r = self.resolved
        source = (
            ProcessorSource(str(r.source), r.kind, self.spec.max_visual_tokens)
            if r.local
            else ProcessorSource(r.model_id, r.kind, self.spec.max_visual_tokens, r.revision)
        )
        ds = _dataset(
            plan, self.spec, source, self.backend, place, self.crash_marker, ray.data.DataContext.get_current()
        )
        it = iter(ds.iter_batches(batch_size=None, batch_format="numpy", prefetch_batches=1))
        try:
            for out in it:
                for j in range(len(out["batch"])):
                    m = json.loads(str(out["meta"][j]))
                    self._workers[m["worker"]] = m
                    yield self._result(plan, int(out["batch"][j]), m, out["embedding"][j])
        finally:
            close = getattr(it, "close", None)
            if close is not None:
                try:
                    close()
                except Exception:
                    pass

    @staticmethod
    def _result(plan: RunPlan, b: int, m: dict, emb_buf) -> BatchResult:
        stamp = ModelStamp(**m["stamp"])
        outputs: list = [None] * len(plan.batches[b])
        for k, reason in m["errors"]:
            outputs[k] = InputError(plan.batch_items(b)[k].path, reason)
        for k, e in zip(m["ok"], _unpack(emb_buf, m["embedding"])):
            outputs[k] = e if stamp.kind == "colqwen" else e.reshape(-1)
        return BatchResult(b, outputs, stamp)

    def finish(self, report: RunReport) -> None:
        ws = self._workers
        report.worker_memory = {w: _memory_report(m["memory"]) for w, m in sorted(ws.items())}
        if report.worker_memory:
            report.memory = max(report.worker_memory.values(), key=lambda r: r.peak_bytes)
        report.oom_splits = sum(int(m["oom_splits"]) for m in ws.values())
        caps = [int(m["cap"]) for m in ws.values() if m.get("cap")]
        report.final_batch_cap = min(caps) if caps else 0
        for w, m in sorted(ws.items()):
            log.info(
                "worker %s: model loaded in %.2f s, %.2f s in forward passes, peak %.1f MB",
                w,
                m["load_seconds"],
                m["busy_seconds"],
                m["memory"]["peak_bytes"] / 2**20,
            )

    def close(self) -> None:
        if self._ctx_saved is not None:
            ctx = ray.data.DataContext.get_current()
            for k, v in self._ctx_saved.items():
                setattr(ctx, k, v)
            self._ctx_saved = None
        if self._started:
            ray.shutdown()
            self._started = False


__all__ = ["RayExecutor", "EmbedWorker", "RayEngineError", "RayWorkersError"]
