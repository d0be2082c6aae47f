"""CPU thread counts: per-block overrides and a tuner that measures which count is fastest."""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any


class CountedSetting:
    """A process-wide setting changed while any thread is inside :meth:`held` and restored when
    the last one leaves, whatever order they leave in (a thread count that concurrent searches
    each want lowered: one that restored its own saved value would undo another's, or restore
    the lowered one for good).

    ``apply()`` changes the setting and returns what ``restore(saved)`` needs to undo it."""

    def __init__(self, apply: Callable[[], Any], restore: Callable[[Any], None]):
        self._apply, self._restore = apply, restore
        self._lock = threading.Lock()
        self._users = 0
        self._saved: Any = None

    @contextmanager
    def held(self) -> Iterator[None]:
        with self._lock:
            if self._users == 0:
                self._saved = self._apply()
            self._users += 1
        try:
            yield
        finally:
            with self._lock:
                self._users -= 1
                if self._users == 0:
                    self._restore(self._saved)

    def saved_or(self, current: Callable[[], Any]) -> Any:
        """What the setting was before the first user changed it, or ``current()`` when none is inside."""
        with self._lock:
            return self._saved if self._users else current()


@contextmanager
def torch_threads(n: int | None):
    """Run a block with ``n`` intra-op threads (no-op for ``None``), restoring the setting after."""
    import torch  # late: the first stage's counted BLAS setting needs this module, not torch

    old = torch.get_num_threads()
    if n is None or n == old:
        yield
        return
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(old)


def available_cpus() -> int:
    try:
        return len(os.sched_getaffinity(0)) or 1
    except (AttributeError, OSError):
        return os.cpu_count() or 1


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
        return self._kinds.setdefault(
            kind, {"n": 0, "best": self.candidates[0], "probe": [], "samples": {c: [] for c in self.candidates}}
        )

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
        import torch

        if threads != torch.get_num_threads():
            torch.set_num_threads(threads)
        t = time.perf_counter()
        yield threads
        self.record(threads, time.perf_counter() - t, work, kind)
