"""Scale-out embedding on Ray: ``nomic-memory embed DIR --engine ray`` (issue 5).

The same run as :func:`nomic_memory.pipeline.embed_directory`, with decoding and the model spread
over a Ray cluster (one machine with several GPUs, or many machines)::

    driver    discover -> scan/hash -> skip unchanged (the store's index) -> plan batches
    Ray Data  from_items(planned batches) -> decode (CPU tasks) -> embed (actor pool, one model each)
    driver    iter_batches -> one store commit per batch, as results stream back

* **Same batches, same embeddings.**  Planning runs on the driver exactly as in a local run (the
  same token counts, the same :func:`~nomic_memory.encode.make_batches`), and one dataset row is one
  planned batch (the model stage takes ``batch_size=1`` row), so a Ray run embeds the same images
  in the same batches with the same weights as a local run, and stores the same vectors.
* **Only the driver touches the store.**  Workers read the images (by absolute path: on a
  multi-node cluster the folder must be mounted at the same path everywhere) and load the model
  (a hub id is fetched into each node's Hugging Face cache, pinned to the commit the driver
  resolved; a local model directory must be on shared storage); they never open the store.
* **Resumable.**  Each result batch is committed as it arrives (one atomic LanceDB commit), so an
  interrupted job keeps everything written so far, and a rerun embeds only what is missing.
* **Tensors between stages** travel as raw numpy buffers in Arrow ``binary`` columns, with their
  dtypes and shapes in a JSON column: nothing depends on Ray's tensor extension types or on
  pickling torch objects.
* **Pinning what the store records.**  Before planning, one short CPU task loads the model once
  (image-only, in the run's dtype) to learn its revision, projection fingerprint, table name and
  the processor's geometry (for token counts).  Every model actor checks that it loaded the same
  projection; a mismatch stops the run before anything inconsistent is stored.
* **Failures.**  A bad image comes back from the decode stage as an error entry (reported and
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
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np

# Under `uv run`, Ray (>= 2.44) by default re-creates the driver's environment on every worker with
# `uv run` inside a copy of the working directory -- without the project's `.venv` and without the
# extras the driver was synced with, so workers die with "No module named 'ray'" and the job hangs.
# Workers started by this engine run on the interpreter and packages of the machine they start on
# (the same venv on a local cluster; the cluster image on a remote one), so the hook is opted out
# unless the user asked for it explicitly (RAY_ENABLE_UV_RUN_RUNTIME_ENV=1).  Ray reads the flag
# once, at import time, hence before `import ray`.
os.environ.setdefault("RAY_ENABLE_UV_RUN_RUNTIME_ENV", "0")

import ray  # noqa: E402
import ray.data  # noqa: E402

from .backends import DTYPES, Backend, select_backend
from .images import ImageError, discover_images
from .errors import EngineError, ModelLoadError
from .loading import LoadedModel
from .logs import quiet_libraries
from . import pipeline
from .memory import MemoryReport, _read_status_kb
from .pipeline import FileInfo, ProgressCallback, RunReport, scan_file, table_info
from .store import Record, Store

log = logging.getLogger("nomic_memory")

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


# ---------------------------------------------------------------- packing tensors into Arrow
def _pack(arrays: list[np.ndarray]) -> tuple[bytes, dict]:
    """Concatenate arrays along axis 0 into one little-endian buffer (plus how to split it)."""
    if not arrays:
        return b"", {"dtype": "float32", "rows": [], "tail": []}
    cat = np.ascontiguousarray(np.concatenate([np.asarray(a) for a in arrays], axis=0))
    dt = cat.dtype.newbyteorder("<")
    return cat.astype(dt, copy=False).tobytes(), {"dtype": dt.str, "rows": [int(a.shape[0]) for a in arrays],
                                                  "tail": list(cat.shape[1:])}


def _unpack(buf: bytes, spec: dict) -> list[np.ndarray]:
    """Inverse of :func:`_pack` (writable copies)."""
    tail = tuple(spec["tail"])
    flat = np.frombuffer(buf, dtype=np.dtype(spec["dtype"]))
    whole = flat.reshape((-1, *tail)) if flat.size else np.zeros((0, *tail), np.dtype(spec["dtype"]))
    out, start = [], 0
    for n in spec["rows"]:
        out.append(np.array(whole[start:start + n]))
        start += n
    return out


def _object_column(values: list) -> np.ndarray:
    col = np.empty(len(values), dtype=object)
    for i, v in enumerate(values):
        col[i] = v
    return col


# ---------------------------------------------------------------- probe: what the store records
def _probe(model_name: str | None, variant: str | None, kind: str | None, revision: str | None,
           dtype_name: str, seed: int, max_visual_tokens: int | None, in_worker: bool = True) -> dict:
    """Load the model once on the CPU (image-only, in the run's dtype: the fingerprint is of the
    weights as the actors will hold them) and return what the driver needs."""
    import torch

    from .loading import load_model

    if in_worker:
        quiet_libraries()
        torch.set_num_threads(max(1, min(4, os.cpu_count() or 1)))
    be = Backend("cpu", torch.device("cpu"), DTYPES[dtype_name], "sdpa")
    lm = load_model(model_name, variant, backend=be, kind=kind, image_only=True, seed=seed,
                    revision=revision, max_visual_tokens=max_visual_tokens)
    return {"model_id": lm.model_id, "revision": lm.revision, "kind": lm.kind, "dim": lm.dim,
            "fingerprint": lm.fingerprint, "source": str(lm.source),
            "local": Path(lm.model_id).is_dir() and Path(lm.model_id) == lm.source,
            "notes": [n for n in lm.notes if not n.startswith("image-only")],
            "image_processor": lm.processor.image_processor}


class RayWorkersError(EngineError):
    """Ray workers cannot start, or cannot import nomic_memory, on the cluster."""


@ray.remote(num_cpus=1, max_retries=0)
def _ping() -> str:
    import nomic_memory  # the package must be importable where workers run

    return nomic_memory.__name__


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
            "environment (see raylet.err in the Ray session logs)") from None


# max_calls=1: the worker process exits afterwards and gives its memory back.
_probe_remote = ray.remote(num_cpus=1, max_calls=1, max_retries=DECODE_MAX_RETRIES)(_probe)


# ---------------------------------------------------------------- decode stage (CPU tasks)
_PROCESSORS: dict[tuple, Any] = {}


def _processor(model_id: str, revision: str, local: bool, kind: str, max_visual_tokens: int | None):
    """The processor, loaded once per worker process (Ray reuses task workers)."""
    key = (model_id, revision, local, kind, max_visual_tokens)
    if key not in _PROCESSORS:
        import torch
        from colpali_engine.models import BiQwen2_5_Processor, ColQwen2_5_Processor

        quiet_libraries()
        torch.set_num_threads(1)
        cls = ColQwen2_5_Processor if kind == "colqwen" else BiQwen2_5_Processor
        kw: dict = {"max_num_visual_tokens": max_visual_tokens} if max_visual_tokens else {}
        if not local:
            kw["revision"] = revision
        _PROCESSORS[key] = cls.from_pretrained(model_id, **kw)
    return _PROCESSORS[key]


def _decode_stage(batch: dict, *, model_id: str, revision: str, local: bool, kind: str,
                  max_visual_tokens: int | None) -> dict:
    """Rows of planned batches (``batch``, ``paths`` as JSON) -> the processor's outputs, packed.

    A file that cannot be decoded becomes an entry in the row's ``errors``, never an exception.
    """
    from .pipeline import _decode_batch

    proc = _processor(model_id, revision, local, kind, max_visual_tokens)
    cols: dict[str, list] = {k: [] for k in ("batch", "meta", "input_ids", "mm_token_type_ids",
                                              "pixel_values", "image_grid_thw")}
    for bi, paths_json in zip(batch["batch"], batch["paths"]):
        paths = [Path(p) for p in json.loads(str(paths_json))]
        decoded = _decode_batch(proc, paths)
        ok = [i for i, d in enumerate(decoded) if not isinstance(d, ImageError)]
        errors = [[i, d.reason] for i, d in enumerate(decoded) if isinstance(d, ImageError)]
        good = [decoded[i] for i in ok]
        has_mm = bool(good) and good[0].mm_token_type_ids is not None
        ids, ids_spec = _pack([d.input_ids.numpy() for d in good])
        mm, mm_spec = _pack([d.mm_token_type_ids.numpy() for d in good] if has_mm else [])
        pv, pv_spec = _pack([d.pixel_values.numpy() for d in good])
        grid, grid_spec = _pack([d.image_grid_thw.numpy()[None] for d in good])
        meta = {"ok": ok, "errors": errors, "has_mm": has_mm, "input_ids": ids_spec,
                "mm_token_type_ids": mm_spec, "pixel_values": pv_spec, "image_grid_thw": grid_spec}
        for k, v in (("batch", int(bi)), ("meta", json.dumps(meta)), ("input_ids", ids),
                     ("mm_token_type_ids", mm), ("pixel_values", pv), ("image_grid_thw", grid)):
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

    def __init__(self, *, model_id: str, revision: str, local: bool, kind: str, backend_name: str,
                 dtype_name: str, image_only: bool, seed: int, threads: int | None,
                 max_visual_tokens: int | None, crash_marker: str | None = None):
        import torch

        from .loading import load_model
        from .memory import MemoryTracker
        from .pipeline import BatchEncoder

        quiet_libraries()
        if backend_name == "cpu" and threads:
            torch.set_num_threads(max(1, min(threads, os.cpu_count() or threads)))
        be = select_backend(backend_name, dtype=dtype_name)
        t0 = time.perf_counter()
        self.lm: LoadedModel = load_model(model_id, None, backend=be, kind=kind, image_only=image_only,
                                          seed=seed, revision=None if local else revision,
                                          max_visual_tokens=max_visual_tokens)
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
            shm = _read_status_kb("RssShmem")
            if shm is not None:
                d["extra"]["current_rss_shmem"] = shm * 1024
        return d

    def __call__(self, batch: dict) -> dict:
        import torch

        from .encode import Prepared

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
            items = [Prepared(torch.from_numpy(ids[k]), None if mm is None else torch.from_numpy(mm[k]),
                              torch.from_numpy(pv[k]), torch.from_numpy(grid[k][0]))
                     for k in range(len(ids))]
            t0 = time.perf_counter()
            embs = [e.float().numpy() for e in self.encoder(items)] if items else []
            self.busy_seconds += time.perf_counter() - t0
            self.tracker.sample()
            buf, spec = _pack([e.reshape(-1, self.lm.dim) for e in embs])
            cols["batch"].append(int(batch["batch"][j]))
            cols["embedding"].append(buf)
            cols["meta"].append(json.dumps({
                "ok": meta["ok"], "errors": meta["errors"], "embedding": spec,
                "worker": self.worker, "fingerprint": self.lm.fingerprint,
                "memory": self._memory(), "load_seconds": self.load_seconds,
                "busy_seconds": self.busy_seconds, "oom_splits": self.encoder.splits, "cap": self.encoder.cap}))
        return {"batch": np.asarray(cols["batch"], dtype=np.int64), "meta": _object_column(cols["meta"]),
                "embedding": _object_column(cols["embedding"])}


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


def _single_node() -> bool:
    try:
        return sum(1 for n in ray.nodes() if n.get("Alive")) <= 1
    except Exception:
        return False


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
            raise RayEngineError(f"the Ray cluster has {gpus:g} GPUs, fewer than --gpus-per-worker "
                                 f"{gpus_per_worker:g}; use --backend cpu or add GPU nodes")
        n = workers or fit
        if n > fit:
            log.warning("%d model workers asked for, but %g GPUs hold only %d at %g GPUs each: using %d",
                        n, gpus, fit, gpus_per_worker, fit)
            n = fit
        return {"workers": n, "actor": {"num_gpus": gpus_per_worker, "num_cpus": 1}, "threads": None,
                "decode_cpus": 1.0, "decode_tasks": None}
    if backend.name == "mps":
        raise RayEngineError("Ray workers cannot use Apple MPS; use --backend cpu (or --engine local)")
    n = workers or 1
    free = cpus - CPU_DECODE_CPUS
    if free <= 0:
        raise RayEngineError(f"the Ray cluster has {cpus:g} CPUs: not enough for a CPU model worker")
    actor_cpus = min(max(1.0, cpus // n), free / n)
    # Whole CPUs only: torch's OpenMP threads spin-wait at every barrier, so one thread more than
    # the cores left free by decoding makes the forward much slower, not faster.
    threads = max(1, int(actor_cpus + 1e-9))
    # Cap concurrent decode tasks at the CPUs the actors leave: every extra task would only start
    # (and import torch in) another worker process that then waits for a CPU.
    spare = cpus - n * actor_cpus
    return {"workers": n, "actor": {"num_cpus": round(actor_cpus, 4)}, "threads": threads,
            "decode_cpus": CPU_DECODE_CPUS, "decode_tasks": max(1, int(spare // CPU_DECODE_CPUS + 1e-9))}


def _memory_report(d: dict) -> MemoryReport:
    return MemoryReport(d["backend"], int(d["peak_bytes"]), dict(d.get("extra") or {}),
                        int(d.get("baseline_bytes") or 0))


def embed_directory_ray(directory: str | Path, store_path: str | Path | Store, *, model_name: str | None = None,
                        variant: str | None = None, kind: str | None = None, backend: Backend | None = None,
                        batch_size: int = 8, image_only: bool = False, seed: int = 0, workers: int | None = None,
                        ray_address: str | None = None, gpus_per_worker: float = 1.0, prune: bool = False,
                        max_batch_tokens: int | None = None, on_event: ProgressCallback | None = None,
                        revision: str | None = None, table_name: str | None = None,
                        max_visual_tokens: int | None = None, sort_by_tokens: bool = True,
                        probe: str = "auto", _crash_marker: str | None = None) -> RunReport:
    """Embed every image under ``directory`` into ``store_path`` on a Ray cluster.

    ``ray_address``: ``None`` uses the cluster this process is connected to, else the one in
    ``RAY_ADDRESS`` or started with ``ray start`` on this machine, else starts a local cluster for
    the run (every CPU/GPU of this machine); ``"auto"``, ``"host:6379"`` or ``"ray://host:10001"``
    join a running cluster.  ``workers``: model actors (default: one per ``gpus_per_worker`` GPUs
    of the cluster with CUDA, 1 on CPU; never more than there are batches).  Everything else means
    what it means for a local run.  The report is a local run's, plus each model worker's peak
    memory in ``worker_memory`` (``memory`` is the largest).

    ``probe``: where the model is loaded once to pin revision and fingerprint before planning:
    ``"driver"`` (this process) or ``"remote"`` (a one-off CPU task on the cluster); ``"auto"``
    picks the driver on a one-node cluster (the same machine either way, minus a process start)
    and a remote task on a multi-node one (whose driver may be a small head node or a laptop).
    ``_crash_marker``: test hook; the first actor to find that file missing creates it and kills
    its own process.
    """
    t0 = time.perf_counter()
    emit = on_event or (lambda kind_, data: None)
    root = Path(directory).expanduser().resolve()
    paths = discover_images(root)
    if variant is None and model_name is None:
        from .variants import DEFAULT_VARIANT

        variant = DEFAULT_VARIANT
    started = _connect(ray_address)
    ctx = ray.data.DataContext.get_current()
    saved_ctx = {k: getattr(ctx, k) for k in ("enable_progress_bars", "print_on_execution_start")}
    try:
        return _run(root, paths, store_path, t0, emit, ctx, model_name=model_name, variant=variant, kind=kind,
                    backend=backend, batch_size=batch_size, image_only=image_only, seed=seed, workers=workers,
                    gpus_per_worker=gpus_per_worker, prune=prune, max_batch_tokens=max_batch_tokens,
                    revision=revision, table_name=table_name, max_visual_tokens=max_visual_tokens,
                    sort_by_tokens=sort_by_tokens, crash_marker=_crash_marker,
                    probe=probe if probe != "auto" else ("driver" if _single_node() else "remote"))
    finally:
        for k, v in saved_ctx.items():
            setattr(ctx, k, v)
        if started:
            ray.shutdown()


def _run(root: Path, paths: list[Path], store_path, t0: float, emit, ctx, *, model_name, variant, kind, backend,
         batch_size, image_only, seed, workers, gpus_per_worker, prune, max_batch_tokens, revision, table_name,
         max_visual_tokens, sort_by_tokens, crash_marker, probe) -> RunReport:
    _check_workers_start()
    cluster = ray.cluster_resources()
    be = _resolve_backend(backend, cluster)
    place = _placement(be, cluster, workers, gpus_per_worker)

    # 1. What the store will record (revision, fingerprint, table): one CPU load of the model,
    #    overlapped with hashing the folder.
    probe_args = (model_name, variant, kind, revision, be.dtype_name, seed, max_visual_tokens)
    emit("discovered", {"count": len(paths)})
    with ThreadPoolExecutor(max_workers=8) as ex:
        if probe == "remote":
            probe_ref = _probe_remote.remote(*probe_args)
        else:
            probe_fut = ex.submit(_probe, *probe_args, in_worker=False)
        scanned = list(ex.map(lambda p: scan_file(p, root), paths))
        try:
            meta = ray.get(probe_ref) if probe == "remote" else probe_fut.result()
        except ray.exceptions.RayTaskError as e:
            cause = getattr(e, "cause", None)
            if isinstance(cause, ModelLoadError):
                raise ModelLoadError(str(cause)) from None
            raise
    for note in meta["notes"]:
        log.info("%s", note)
    lm_meta = LoadedModel(model=None, processor=None, kind=meta["kind"], model_id=meta["model_id"],  # type: ignore[arg-type]
                          revision=meta["revision"], fingerprint=meta["fingerprint"], backend=be, dim=meta["dim"],
                          source=Path(meta["source"]))
    info = table_info(lm_meta, seed)
    store = store_path if isinstance(store_path, Store) else Store(store_path)
    table = store.create_or_open(table_name or lm_meta.table_name, info)
    pipeline.warn_if_other_weights(table, info)
    report = RunReport(str(root), str(store.path), table.name, discovered=len(paths))

    # 2. Listing, exactly as a local run: prune, skip unchanged, plan batches.
    existing, todo, tokens, batches = pipeline.plan_run(
        table, info, root, paths, scanned, meta["image_processor"], report, emit, prune=prune,
        batch_size=batch_size, max_batch_tokens=max_batch_tokens, sort_by_tokens=sort_by_tokens)
    # An actor without a batch to run would only cost a model load.
    place = _placement(be, cluster, max(1, min(place["workers"], len(batches))), gpus_per_worker)
    log.info("Ray cluster: %s; %d model worker(s) on %s (%s each)", {k: v for k, v in cluster.items()
             if k in ("CPU", "GPU")}, place["workers"], be.name, place["actor"])

    t_embed = time.perf_counter()
    worker_state: dict[str, dict] = {}
    it = None
    try:
        if batches:
            ds = _dataset(todo, batches, meta, be, place, image_only, seed, max_visual_tokens, crash_marker, ctx)
            it = iter(ds.iter_batches(batch_size=None, batch_format="numpy", prefetch_batches=1))
            done: set[int] = set()
            for out in it:
                for j in range(len(out["batch"])):
                    bi = int(out["batch"][j])
                    m = json.loads(str(out["meta"][j]))
                    if m["fingerprint"] != info.fingerprint:
                        raise RayEngineError(
                            f"model worker {m['worker']} loaded a different projection ({m['fingerprint']}) "
                            f"than the driver pinned ({info.fingerprint}): are all nodes on the same model "
                            "files and library versions?")
                    worker_state[m["worker"]] = m
                    if bi in done:  # a retried batch delivered twice: already stored
                        continue
                    done.add(bi)
                    _store_batch(table, root, todo, batches[bi], m, out["embedding"][j], existing, be, report, emit)
                    log.info("Processed batch %d/%d (%d images, %d embedded so far)", len(done), len(batches),
                             len(batches[bi]), report.embedded)
                    emit("batch", {"index": len(done), "total": len(batches), "images": len(batches[bi]),
                                   "embedded": report.embedded, "elapsed": time.perf_counter() - t_embed})
            missing = [bi for bi in range(len(batches)) if bi not in done]
            for bi in missing:  # not expected: Ray Data raises when a batch cannot be computed
                for i in batches[bi]:
                    report.failed.append((todo[i].rel, "not returned by the Ray job"))
                    emit("failed", {"path": todo[i].rel, "reason": "not returned by the Ray job"})
    finally:
        close = getattr(it, "close", None)
        if close is not None:
            try:
                close()
            except Exception:
                pass
        report.embed_seconds = time.perf_counter() - t_embed
        report.worker_memory = {w: _memory_report(m["memory"]) for w, m in sorted(worker_state.items())}
        if report.worker_memory:
            report.memory = max(report.worker_memory.values(), key=lambda r: r.peak_bytes)
        report.oom_splits = sum(int(m["oom_splits"]) for m in worker_state.values())
        caps = [int(m["cap"]) for m in worker_state.values() if m.get("cap")]
        report.final_batch_cap = min(caps) if caps else batch_size
        if report.embedded:
            table.optimize()
        report.seconds = time.perf_counter() - t0
    for w, m in sorted(worker_state.items()):
        log.info("worker %s: model loaded in %.2f s, %.2f s in forward passes, peak %.1f MB", w,
                 m["load_seconds"], m["busy_seconds"], m["memory"]["peak_bytes"] / 2**20)
    emit("done", report.to_dict())
    return report


def _dataset(todo: list[FileInfo], batches: list[list[int]], meta: dict, be: Backend, place: dict,
             image_only: bool, seed: int, max_visual_tokens: int | None, crash_marker: str | None, ctx):
    ctx.enable_progress_bars = False  # the caller's progress display reports the batches
    ctx.print_on_execution_start = False
    logging.getLogger("ray.data").setLevel(logging.WARNING)
    logging.getLogger("ray.data._internal.progress").setLevel(logging.ERROR)  # "progress bars disabled"
    items = [{"batch": bi, "paths": json.dumps([str(todo[i].path) for i in b])} for bi, b in enumerate(batches)]
    src = {"model_id": meta["model_id"], "revision": meta["revision"], "local": meta["local"],
           "kind": meta["kind"], "max_visual_tokens": max_visual_tokens}
    with warnings.catch_warnings():
        # max_retries / max_restarts / max_task_retries still go through **ray_remote_args in Ray 2.60.
        warnings.simplefilter("ignore", DeprecationWarning)
        warnings.filterwarnings("ignore", message=".*ray_remote_args.*")
        ds = ray.data.from_items(items, override_num_blocks=len(items))
        ds = ds.map_batches(_decode_stage, batch_size=1, batch_format="numpy", fn_kwargs=src,
                            compute=ray.data.TaskPoolStrategy(size=place["decode_tasks"]),
                            num_cpus=place["decode_cpus"], max_retries=DECODE_MAX_RETRIES)
        ds = ds.map_batches(
            EmbedWorker, batch_size=1, batch_format="numpy",
            compute=ray.data.ActorPoolStrategy(size=place["workers"]),
            fn_constructor_kwargs={**src, "backend_name": be.name, "dtype_name": be.dtype_name,
                                   "image_only": image_only, "seed": seed, "threads": place["threads"],
                                   "crash_marker": crash_marker},
            max_restarts=ACTOR_MAX_RESTARTS, max_task_retries=ACTOR_MAX_TASK_RETRIES, **place["actor"])
    return ds


def _store_batch(table, root: Path, todo: list[FileInfo], idx: list[int], m: dict, emb_buf, existing: dict,
                 be: Backend, report: RunReport, emit) -> None:
    for k, reason in m["errors"]:
        fi = todo[idx[k]]
        report.failed.append((fi.rel, reason))
        emit("failed", {"path": fi.rel, "reason": reason})
    if not m["ok"]:
        return
    embs = _unpack(emb_buf, m["embedding"])
    good = [todo[idx[k]] for k in m["ok"]]
    records = [Record(str(root), fi.rel, fi.content_hash, fi.size, fi.mtime, fi.width, fi.height,
                      e if table.info.kind == "colqwen" else e.reshape(-1), be.dtype_name)
               for fi, e in zip(good, embs)]
    table.upsert(records, known_new={fi.rel for fi in good if fi.rel not in existing})
    report.embedded += len(records)


__all__ = ["embed_directory_ray", "EmbedWorker", "RayEngineError"]
