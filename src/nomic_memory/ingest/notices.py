"""What the image libraries say about a file, in one line per file and in nomic-memory's words.

Pillow, libheif and friends report odd-but-readable files through Python warnings (two lines
each, with a site-packages path) and their errors sometimes end with a newline.  While a file is
read, :func:`decode_warnings` collects the warnings raised *in this thread* and logs them as one
warning line naming the file; :func:`one_line` flattens a library's message.

Collecting goes through one process-wide ``warnings.showwarning`` hook that looks at a
thread-local list (``warnings.catch_warnings`` swaps process-wide state and, entered by several
decode threads at once, can leave one thread's recorder installed for good).  Warnings raised
outside :func:`decode_warnings`, or in other threads, go where they went before.
"""

from __future__ import annotations

import logging
import os
import re
import threading
import warnings
from contextlib import contextmanager

log = logging.getLogger("nomic_memory")

__all__ = ["decode_warnings", "one_line", "product_words"]

_local = threading.local()
_hook_lock = threading.Lock()


def one_line(text: object) -> str:
    """``text`` on one line: whitespace runs (newlines included) become one space."""
    return " ".join(str(text).split())


_BOMB = re.compile(r"Image size \((\d+) pixels\) exceeds limit of (\d+) pixels")


def product_words(category: type, message: str) -> str:
    """A library warning as the user should read it (no class names, no paths)."""
    message = one_line(message)
    m = _BOMB.search(message)
    if m:
        return f"very large image ({int(m.group(1)):,} pixels): decoding it needs a lot of memory"
    if "Palette images with Transparency" in message:
        return "palette image with transparency (converted to RGBA)"
    if "Truncated File Read" in message:
        return "truncated image data (the missing part is read as blank)"
    low = message.lower()
    if "exif" in low or "metadata" in low or "tag" in low:
        return "damaged metadata (EXIF or TIFF tags) ignored"
    return message


def _hook(message, category, filename, lineno, file=None, line=None):
    sink = getattr(_local, "sink", None)
    if sink is not None:
        sink.append(product_words(category, str(message)))
    else:
        _hook.previous(message, category, filename, lineno, file, line)


# The image libraries' warnings are reported for every file, not once per process (Python's
# default): each file's line must say what happened to that file.
_MODULES = (r"PIL(\.|$)", r"pillow_heif(\.|$)")


def _install() -> None:
    """(Re)install the hook and the filters when something replaced them (a test harness's
    ``catch_warnings`` restores the state it saved)."""
    with _hook_lock:
        if warnings.showwarning is not _hook:
            _hook.previous = warnings.showwarning
            warnings.showwarning = _hook
        present = {f[3].pattern for f in warnings.filters if f[0] == "always" and f[3] is not None}
        for module in _MODULES:
            if module not in present:
                warnings.filterwarnings("always", module=module)


@contextmanager
def decode_warnings(path: str | os.PathLike[str], page: int | None = None, *, report: bool = True):
    """Collect the warnings this thread raises while reading ``path``; log them as one line when
    the block succeeds (``report``).  A block that raises reports its error instead; a nested
    block leaves the reporting to the outer one."""
    if getattr(_local, "sink", None) is not None:
        yield
        return
    _install()
    _local.sink = sink = []
    try:
        yield
    except BaseException:
        sink.clear()
        raise
    finally:
        _local.sink = None
        if sink and report:
            where = f"{path}" if not page else f"{path} (page {page})"
            log.warning("%s: %s", where, "; ".join(dict.fromkeys(sink)))
