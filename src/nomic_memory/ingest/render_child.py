"""A renderer process (see :mod:`nomic_memory.ingest.renderer`): draws PDF pages on request.

Started as ``python -m nomic_memory.ingest.render_child READ_FD WRITE_FD SHARED_FD MEMORY_MB PARENT_PID``.  It limits
its own address space first, then answers ``("draw", path, page, (w, h), max_pixels)`` requests
with ``("ok", mode, (w, h), n, notes)`` (the ``n`` bytes of pixels written at the
start of the shared file ``SHARED_FD``) or ``("error", reason)`` until its input closes.
"""

from __future__ import annotations

import os
import resource
import sys
import threading
import time

from nomic_memory.ingest import renderer
from nomic_memory.ingest.documents import DocumentError, close_cached_document, draw_page_here


def _limit_memory(memory_mb: int) -> None:
    if memory_mb > 0:
        limit = memory_mb * 1024 * 1024
        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))


def _die_with_parent(parent: int) -> None:
    """Exit when the parent is gone, even in the middle of a page (a closed pipe only wakes a
    renderer that is reading).  A thread polls, rather than Linux's parent-death signal, which
    fires when the parent *thread* that started the renderer ends (a decode thread does)."""

    def watch() -> None:
        while True:
            time.sleep(1.0)
            if os.getppid() != parent:
                os._exit(0)

    threading.Thread(target=watch, name="nomic-memory-render-watchdog", daemon=True).start()


def _answer(request, shm: int, memory_mb: int) -> tuple:
    op, path, page, size, max_pixels = request
    if op != "draw":
        return ("error", f"unknown request {op!r}")
    try:
        img, notes = draw_page_here(path, page, size, max_pixels=max_pixels)
        mode, got, pixels = img.mode, img.size, img.tobytes()
        del img
        renderer.write_shared(shm, pixels)
    except DocumentError as e:
        return ("error", e.reason)
    except MemoryError:  # Python's own allocations failed under the limit (PDFium's abort instead)
        close_cached_document()
        return ("error", f"page rendering exceeded the memory limit ({memory_mb} MiB)")
    return ("ok", mode, got, len(pixels), notes)


def main(argv: list[str]) -> int:
    rfd, wfd, shm, memory_mb, parent = (int(a) for a in argv[:5])
    if os.getppid() != parent:  # the parent is already gone
        return 0
    _die_with_parent(parent)
    _limit_memory(memory_mb)
    while True:
        request = renderer.receive(rfd)
        if request is None:
            return 0
        try:
            renderer.send(wfd, _answer(request, shm, memory_mb))
        except BrokenPipeError:
            return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
