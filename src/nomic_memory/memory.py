"""Peak-memory tracking for every backend.

* CUDA: the caching allocator's own peak counters (allocated = tensors, reserved = what the
  allocator holds from the driver, which is what an OOM is decided against).
* MPS: the Metal allocator exposes no peak counter, so a thread polls the current and driver
  allocations every few milliseconds.
* CPU: the process's peak resident set size.  On Linux the kernel's high-water mark (VmHWM) can be
  reset through ``/proc/self/clear_refs``, so a phase (say, embedding after loading) can be
  measured on its own; elsewhere ``ru_maxrss`` gives the whole process's peak.
"""

from __future__ import annotations

import resource
import sys
import threading
from dataclasses import dataclass, field

import torch

MB = 1024 * 1024


def read_status_kb(key: str) -> int | None:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(key + ":"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


def current_rss_bytes() -> int:
    kb = read_status_kb("VmRSS")
    if kb is not None:
        return kb * 1024
    import psutil

    return psutil.Process().memory_info().rss


def peak_rss_bytes() -> int:
    kb = read_status_kb("VmHWM")
    if kb is not None:
        return kb * 1024
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak if sys.platform == "darwin" else peak * 1024


def reset_peak_rss() -> bool:
    """Reset the kernel's peak-RSS counter to the current RSS (Linux only)."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


@dataclass
class MemoryReport:
    backend: str
    peak_bytes: int  # the headline figure (CUDA: allocated; MPS: driver; CPU: RSS)
    extra: dict[str, int] = field(default_factory=dict)
    baseline_bytes: int = 0  # memory in use when tracking started (the loaded model, typically)

    @property
    def peak_mb(self) -> float:
        return self.peak_bytes / MB

    @property
    def peak_gb(self) -> float:
        return self.peak_bytes / MB / 1024

    def lines(self) -> list[str]:
        """The original script's report lines, e.g. ``Peak CUDA memory used: 14.32 GB (14663.45 MB)``."""

        def fmt(b: int) -> str:
            return f"{b / MB / 1024:.2f} GB ({b / MB:.2f} MB)"

        if self.backend == "cuda":
            out = [f"Peak CUDA memory used: {fmt(self.peak_bytes)}"]
            if "reserved" in self.extra:
                out.append(f"Peak CUDA memory reserved: {fmt(self.extra['reserved'])}")
        elif self.backend == "mps":
            out = [f"Peak MPS memory used: {fmt(self.peak_bytes)}"]
            if "current_allocated" in self.extra:
                out.append(f"Peak MPS tensor memory: {fmt(self.extra['current_allocated'])}")
        else:
            out = [f"Peak CPU memory used (RSS): {fmt(self.peak_bytes)}"]
        if self.baseline_bytes:
            out.append(f"Memory above loaded model: {fmt(max(0, self.peak_bytes - self.baseline_bytes))}")
        return out

    def to_dict(self) -> dict:
        return {
            "backend": self.backend,
            "peak_bytes": self.peak_bytes,
            "peak_mb": round(self.peak_mb, 2),
            "baseline_bytes": self.baseline_bytes,
            **{k: v for k, v in self.extra.items()},
        }


class MemoryTracker:
    """Track peak memory of a phase: ``with MemoryTracker("cpu") as mt: ...; mt.report()``."""

    def __init__(self, backend: str, device: torch.device | None = None, poll_interval: float = 0.005):
        self.backend = backend
        self.device = device
        self.poll_interval = poll_interval
        self._mps_peak = {"driver": 0, "current_allocated": 0}
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.baseline = 0

    def start(self) -> MemoryTracker:
        if self.backend == "cuda":
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            self.baseline = torch.cuda.memory_allocated(self.device)
        elif self.backend == "mps":
            self.baseline = torch.mps.driver_allocated_memory()
            self._stop.clear()
            self._thread = threading.Thread(target=self._poll_mps, daemon=True)
            self._thread.start()
        else:
            reset_peak_rss()
            self.baseline = current_rss_bytes()
        return self

    def _poll_mps(self) -> None:
        while not self._stop.is_set():
            self.sample()
            self._stop.wait(self.poll_interval)

    def sample(self) -> None:
        """Take an MPS sample now (also called at batch boundaries so short peaks are seen)."""
        if self.backend == "mps":
            self._mps_peak["driver"] = max(self._mps_peak["driver"], torch.mps.driver_allocated_memory())
            self._mps_peak["current_allocated"] = max(
                self._mps_peak["current_allocated"], torch.mps.current_allocated_memory()
            )

    def stop(self) -> MemoryReport:
        if self._thread is not None:
            self._stop.set()
            self._thread.join()
            self._thread = None
        return self.report()

    def report(self) -> MemoryReport:
        if self.backend == "cuda":
            return MemoryReport(
                "cuda",
                torch.cuda.max_memory_allocated(self.device),
                {"reserved": torch.cuda.max_memory_reserved(self.device)},
                self.baseline,
            )
        if self.backend == "mps":
            self.sample()
            return MemoryReport(
                "mps",
                self._mps_peak["driver"],
                {"current_allocated": self._mps_peak["current_allocated"]},
                self.baseline,
            )
        return MemoryReport("cpu", peak_rss_bytes(), {"current_rss": current_rss_bytes()}, self.baseline)

    def __enter__(self) -> MemoryTracker:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


_MALLOC_TRIM = None


def trim_heap() -> None:
    """Hand memory that was freed back to the operating system (glibc's ``malloc_trim``).

    Decoding a 30 MB page and resizing it, or a forward's temporaries, leave freed blocks in
    malloc's arenas (glibc raises its mmap threshold after each large free, so later buffers of
    up to 32 MB come from the heap); the process's resident size would keep counting them.
    Called on the CPU backend once per batch (after decoding it, after its forward) and once per
    item while collating (each item's pixel copy, the largest freed blocks): each call costs the
    page faults of re-touching what it gave back, which measured 10 % of the medium model's
    forward time when it also ran after every row group of the language model and every decoded
    image, for no lower peak (freed heap blocks are reused within the batch anyway).  A no-op where glibc is
    not the allocator."""
    global _MALLOC_TRIM
    if _MALLOC_TRIM is None:
        _MALLOC_TRIM = False
        if sys.platform.startswith("linux"):
            try:
                import ctypes

                _MALLOC_TRIM = ctypes.CDLL("libc.so.6").malloc_trim
            except (OSError, AttributeError):
                pass
    if _MALLOC_TRIM:
        _MALLOC_TRIM(0)


__all__ = [
    "MemoryReport",
    "MemoryTracker",
    "peak_rss_bytes",
    "current_rss_bytes",
    "reset_peak_rss",
    "read_status_kb",
    "trim_heap",
    "MB",
]
