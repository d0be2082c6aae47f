"""Drawing untrusted pages in renderer processes, so that a runaway page costs that page only.

A PDF is a program for a renderer: a few kilobytes of nested form objects can make PDFium
allocate without bound or draw for hours, and a crash inside PDFium takes its process with it.
So PDF pages are never drawn in the process that embeds (or serves): they are drawn by small
renderer processes (``python -m nomic_memory.ingest.render_child``: Pillow and pypdfium2, no
torch), each with

* an **address-space limit** (``RLIMIT_AS``, :data:`DEFAULT_MEMORY_MB` MiB; environment
  ``NOMIC_MEMORY_RENDER_MEMORY_MB``, ``0`` for none), so a page that allocates without bound
  fails inside its renderer instead of growing until the kernel's OOM killer picks a victim;
* a **time limit per page** (:data:`DEFAULT_TIMEOUT_S` s; ``NOMIC_MEMORY_RENDER_TIMEOUT``,
  ``0`` for none), after which the renderer is killed.

A renderer that dies or is killed is replaced on the next request; the page that killed it is
reported as a :class:`RenderFailure` with the reason ("page rendering exceeded the memory limit
(2048 MiB)", "page rendering took longer than 60 s"), which the caller turns into the page's
error.  Renderers are persistent (one document stays open in each, so consecutive pages do not
re-parse it): the cost per page is one round trip over a pipe with the page's pixels.  Up to
:func:`max_renderers` draw at once (``NOMIC_MEMORY_RENDER_WORKERS``); a request prefers the
renderer that drew from the same file last.  Renderers exit with their parent (a closed pipe, or
a watchdog thread that sees the parent gone).

The messages are pickles over private pipes between this process and the renderers it started.
"""

from __future__ import annotations

import atexit
import os
import pickle
import select
import signal
import struct
import subprocess
import sys
import tempfile
import threading
import time

__all__ = [
    "DEFAULT_MEMORY_MB",
    "DEFAULT_TIMEOUT_S",
    "RenderFailure",
    "RendererPool",
    "limits",
    "max_renderers",
    "pool",
    "shutdown",
]

#: Address-space limit of a renderer process, MiB (its own interpreter, Pillow and PDFium use
#: about 150 MiB of it; the rest is for the page).
DEFAULT_MEMORY_MB = 2048
#: Seconds one page may take to draw.
DEFAULT_TIMEOUT_S = 60.0

_HEADER = struct.Struct("!Q")
# Ways a process dies when an allocation fails under RLIMIT_AS: PDFium's allocator aborts
# (SIGABRT), others trap or fault on the null pointer.
_OOM_SIGNALS = {signal.SIGABRT, signal.SIGSEGV, signal.SIGBUS, signal.SIGILL, signal.SIGTRAP, signal.SIGKILL}


class RenderFailure(Exception):
    """The renderer could not draw the request (``reason`` is for the user); internal to ingest."""

    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason


def _env_number(name: str, default: float) -> float:
    raw = os.environ.get(name, "").strip()
    if not raw:
        return default
    try:
        value = float(raw)
    except ValueError:
        return default
    return value if value >= 0 else default


def limits() -> tuple[int, float]:
    """(memory limit in MiB, seconds per page) from the environment; 0 means no limit."""
    return int(_env_number("NOMIC_MEMORY_RENDER_MEMORY_MB", DEFAULT_MEMORY_MB)), _env_number(
        "NOMIC_MEMORY_RENDER_TIMEOUT", DEFAULT_TIMEOUT_S
    )


def max_renderers() -> int:
    """Renderer processes drawing at once: ``NOMIC_MEMORY_RENDER_WORKERS``, else one per core (at most 4)."""
    try:
        cpus = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        cpus = os.cpu_count() or 1
    return max(1, int(_env_number("NOMIC_MEMORY_RENDER_WORKERS", min(4, cpus))))


def send(fd: int, obj) -> None:
    data = pickle.dumps(obj, protocol=pickle.HIGHEST_PROTOCOL)
    view = memoryview(_HEADER.pack(len(data)) + data)
    while view:
        n = os.write(fd, view)
        view = view[n:]


def _read_exact(fd: int, n: int, deadline: float | None) -> bytes | None:
    """``n`` bytes from ``fd``; None at end of file; TimeoutError past ``deadline``."""
    chunks, got = [], 0
    while got < n:
        if deadline is not None:
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([fd], [], [], left)[0]:
                raise TimeoutError
        b = os.read(fd, min(n - got, 1 << 20))
        if not b:
            return None
        chunks.append(b)
        got += len(b)
    return b"".join(chunks)


def write_shared(fd: int, data: bytes) -> None:
    """Write ``data`` at the start of the shared file ``fd`` (the renderer's side)."""
    view, at = memoryview(data), 0
    while at < len(view):
        at += os.pwrite(fd, view[at:], at)


def read_shared(fd: int, n: int) -> bytes:
    """The first ``n`` bytes of the shared file ``fd``."""
    chunks, at = [], 0
    while at < n:
        b = os.pread(fd, n - at, at)
        if not b:
            raise OSError("the renderer's page data is shorter than announced")
        chunks.append(b)
        at += len(b)
    return chunks[0] if len(chunks) == 1 else b"".join(chunks)


def receive(fd: int, deadline: float | None = None):
    """One message from ``fd`` (None at end of file)."""
    head = _read_exact(fd, _HEADER.size, deadline)
    if head is None:
        return None
    body = _read_exact(fd, _HEADER.unpack(head)[0], deadline)
    return None if body is None else pickle.loads(body)


class _Renderer:
    """One renderer process and its two pipes."""

    def __init__(self, memory_mb: int):
        to_child_r, self.wfd = os.pipe()
        self.rfd, from_child_w = os.pipe()
        # The pixels travel through a shared file (one write, one read per page) rather than the
        # pipe, whose 64 kB buffer would cost dozens of context switches per page.
        self._spill = None
        if hasattr(os, "memfd_create"):
            self.shm = os.memfd_create("nomic-memory-page", os.MFD_CLOEXEC)
        else:
            self._spill = tempfile.TemporaryFile()
            self.shm = self._spill.fileno()
        try:
            self.proc = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "nomic_memory.ingest.render_child",
                    str(to_child_r),
                    str(from_child_w),
                    str(self.shm),
                    str(memory_mb),
                    str(os.getpid()),
                ],
                pass_fds=(to_child_r, from_child_w, self.shm),
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
                close_fds=True,
            )
        except BaseException:
            self._close_fds()
            raise
        finally:
            os.close(to_child_r)
            os.close(from_child_w)
        for fd in (self.wfd, self.rfd, self.shm):
            os.set_inheritable(fd, False)
        self.last_path: str | None = None

    def pixels(self, n: int) -> bytes:
        """The ``n`` bytes of pixels the renderer just wrote to the shared file."""
        data = read_shared(self.shm, n)
        if n > 16 * 1024 * 1024:  # a very large page: give its memory back
            os.ftruncate(self.shm, 0)
        return data

    def _close_fds(self) -> None:
        for fd in (self.wfd, self.rfd) + ((self.shm,) if self._spill is None else ()):
            try:
                os.close(fd)
            except OSError:
                pass
        if self._spill is not None:
            self._spill.close()

    def kill(self) -> int | None:
        """Stop the process (if still running) and reap it; its exit status."""
        self._close_fds()
        try:
            self.proc.kill()
        except OSError:
            pass
        try:
            return self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            return None


def _death_reason(status: int | None, memory_mb: int) -> str:
    if status is not None and status < 0:
        sig = -status
        if memory_mb and sig in _OOM_SIGNALS:
            return f"page rendering exceeded the memory limit ({memory_mb} MiB)"
        name = signal.Signals(sig).name if sig in signal.valid_signals() else str(sig)
        return f"the page crashed its renderer (signal {name})"
    return f"the page's renderer exited unexpectedly (status {status})"


class RendererPool:
    """Up to ``size`` renderer processes, started on demand and replaced when one dies."""

    def __init__(self, size: int | None = None, memory_mb: int | None = None, timeout_s: float | None = None):
        env_mb, env_t = limits()
        self.size = size or max_renderers()
        self.memory_mb = env_mb if memory_mb is None else memory_mb
        self.timeout_s = env_t if timeout_s is None else timeout_s
        self._idle: list[_Renderer] = []
        self._count = 0  # started and not dead (idle + busy)
        self._cond = threading.Condition()
        self._closed = False
        self.restarts = 0  # renderers replaced after a crash or a time-out (statistics)

    def _acquire(self, path: str) -> _Renderer:
        with self._cond:
            while True:
                if self._closed:
                    raise RuntimeError("renderer pool is closed")
                if self._idle:
                    same = [r for r in self._idle if r.last_path == path]
                    r = same[0] if same else self._idle[-1]
                    self._idle.remove(r)
                    return r
                if self._count < self.size:
                    self._count += 1
                    break
                self._cond.wait()
        try:
            return _Renderer(self.memory_mb)
        except BaseException:
            with self._cond:
                self._count -= 1
                self._cond.notify()
            raise

    def _release(self, r: _Renderer | None) -> None:
        with self._cond:
            if r is None:
                self._count -= 1
            elif self._closed:
                self._count -= 1
                r.kill()
            else:
                self._idle.append(r)
            self._cond.notify()

    def call(self, path: str, request: tuple):
        """Send ``request`` to a renderer and return its reply; :class:`RenderFailure` when the
        renderer dies or runs out of time on it (the renderer is then replaced)."""
        r = self._acquire(path)
        deadline = time.monotonic() + self.timeout_s if self.timeout_s else None
        try:
            send(r.wfd, request)
            reply = receive(r.rfd, deadline)
        except TimeoutError:
            r.kill()
            self.restarts += 1
            self._release(None)
            raise RenderFailure(f"page rendering took longer than {self.timeout_s:g} s") from None
        except BaseException:  # a broken pipe, or an interrupt while waiting
            status = r.kill()
            self._release(None)
            if isinstance(sys.exc_info()[1], OSError):
                self.restarts += 1
                raise RenderFailure(_death_reason(status, self.memory_mb)) from None
            raise
        if reply is None:  # the renderer died on this request
            status = r.kill()
            self.restarts += 1
            self._release(None)
            raise RenderFailure(_death_reason(status, self.memory_mb))
        if reply[0] == "ok":  # ("ok", mode, size, n_bytes, notes): the pixels are in the shared file
            try:
                reply = (*reply[:3], r.pixels(reply[3]), reply[4])
            except OSError as e:
                status = r.kill()
                self._release(None)
                raise RenderFailure(f"the page's renderer returned no pixels ({e})") from None
        r.last_path = path
        self._release(r)
        return reply

    def close(self) -> None:
        with self._cond:
            self._closed = True
            idle, self._idle = self._idle, []
            self._count -= len(idle)
        for r in idle:
            r.kill()


_POOL: RendererPool | None = None
_POOL_LOCK = threading.Lock()
_POOL_PID = 0
_ATEXIT: list[bool] = []


def pool() -> RendererPool:
    """This process's renderer pool (limits read from the environment when it is made)."""
    global _POOL, _POOL_PID
    with _POOL_LOCK:
        if _POOL is None or _POOL_PID != os.getpid():  # a forked child starts its own
            if not _ATEXIT:
                atexit.register(shutdown)
                _ATEXIT.append(True)
            _POOL, _POOL_PID = RendererPool(), os.getpid()
        return _POOL


def shutdown() -> None:
    """Stop this process's renderers (the next request starts new ones, with the limits then set)."""
    global _POOL
    with _POOL_LOCK:
        p, _POOL = _POOL, None
    if p is not None and _POOL_PID == os.getpid():
        p.close()
