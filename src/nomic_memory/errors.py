"""The exceptions nomic-memory raises: one root, one class per kind of failure.

Every error a user can cause or meet (a bad option, a model that cannot load, a store that
cannot be opened, a search that would give meaningless scores) is a :class:`NomicMemoryError`
whose message is written for the user: the CLI prints it as one line, a server returns it as a
JSON error, a script can ``except NomicMemoryError``.  Per-file problems (a corrupt image, an
encrypted PDF) are :class:`InputError`: a run reports them (file and reason) and goes on.

This module imports nothing heavy, so any module (and the CLI before torch is imported) can use
it.  Programming errors stay ordinary Python exceptions.
"""

from __future__ import annotations

import os


class NomicMemoryError(Exception):
    """Root of every error nomic-memory raises on purpose; ``str(e)`` is meant for the user."""


class UsageError(NomicMemoryError, ValueError):
    """An option or argument that cannot work (the CLI exits with status 2)."""


class WrongTypeError(UsageError, TypeError):
    """An argument of the wrong type (also a ``TypeError``, as Python's own would be)."""


class BackendUnavailable(NomicMemoryError):
    """The requested backend (device/dtype) does not exist on this machine."""


class ModelLoadError(NomicMemoryError):
    """The model could not be resolved or loaded."""


class ModelKindError(ModelLoadError, ValueError):
    """The kind of a model (ColQwen or BiQwen) could not be determined from its files."""


class BenchSetupError(NomicMemoryError):
    """A benchmark configuration whose backend or model cannot be set up: every other batch size
    would fail the same way, so the sweep stops (an out-of-memory at one batch size does not)."""


class FolderNotFoundError(NomicMemoryError, FileNotFoundError):
    """The folder to embed does not exist (or is not a folder)."""


class StoreError(NomicMemoryError):
    """The store cannot be opened, read or written as asked."""


class SearchError(NomicMemoryError):
    """A search that cannot give a correct answer."""


class ModelMismatchError(SearchError):
    """The query model is not the model the table was embedded with."""


class EngineError(NomicMemoryError):
    """A distributed run cannot start or go on (e.g. Ray workers cannot start)."""


class MissingExtra(NomicMemoryError, ImportError):
    """An optional feature whose library is not installed (the message names the extra to install)."""


class OutOfMemory(NomicMemoryError):
    """The machine (or the accelerator) ran out of memory for something that cannot be made
    smaller: the run stops, with what it committed kept."""


def out_of_memory_kind(e: BaseException) -> str | None:
    """What ran out when ``e`` is an out-of-memory failure ("GPU memory", "CPU memory",
    "memory"), else None.  Knows Python's ``MemoryError``, torch's (CUDA, MPS, the CPU allocator)
    and oneDNN's way of saying it; imports nothing (torch's error is recognised by name)."""
    if isinstance(e, MemoryError):
        return "memory"
    if isinstance(e, (OSError, ImportError)):  # a library that cannot be mapped under an address-space limit
        text = str(e).lower()
        return "memory" if "failed to map segment" in text or "cannot allocate memory" in text else None
    if not isinstance(e, RuntimeError):
        return None
    text = str(e)
    low = text.lower()
    if type(e).__name__ == "OutOfMemoryError" or ("out of memory" in low and ("cuda" in low or "mps" in low)):
        return "GPU memory"
    if "defaultcpuallocator" in low or "could not create a primitive" in low or "cannot allocate memory" in low:
        return "CPU memory"
    if "out of memory" in low:
        return "memory"
    return None


def out_of_memory_detail(e: BaseException) -> str:
    """The library's own words about an out-of-memory failure, on one short line."""
    text = " ".join(str(e).split()) or type(e).__name__
    for marker in (
        "DefaultCPUAllocator: ",
        "Tried to allocate",
        "could not create a primitive",
        "Original error was: ",
    ):
        at = text.find(marker)
        if at >= 0:
            text = text[at:]
            break
    return (text[:160] + "...") if len(text) > 160 else text


class InputError(NomicMemoryError):
    """One input (an image file, a document or one of its pages) cannot be embedded.

    A run records ``path`` and ``reason`` (and ``page`` for a page of a document) and goes on
    with the rest; it is never fatal."""

    def __init__(self, path: str | os.PathLike[str], reason: str, page: int | None = None) -> None:
        reason = " ".join(str(reason).split())  # one line, whatever a library's message held
        where = f"{path}" if page is None else f"{path} (page {page})"
        super().__init__(f"{where}: {reason}")
        self.path = path
        self.reason = reason
        self.page = page

    def __reduce__(self):
        # Default Exception pickling would call cls(message) and fail; errors come back from
        # decode worker processes pickled.
        return (type(self), (self.path, self.reason, self.page))


__all__ = [
    "NomicMemoryError",
    "UsageError",
    "WrongTypeError",
    "FolderNotFoundError",
    "BackendUnavailable",
    "ModelLoadError",
    "ModelKindError",
    "StoreError",
    "SearchError",
    "ModelMismatchError",
    "EngineError",
    "InputError",
    "OutOfMemory",
    "out_of_memory_kind",
    "out_of_memory_detail",
    "MissingExtra",
]
