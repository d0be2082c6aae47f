"""``lancedb``, imported without the REST API classes of lance-namespace's generated client.

``lancedb.db`` imports ``lance_namespace``, which re-exports the request and response models of
``lance_namespace_urllib3_client``; that package's ``__init__`` also imports its nine API classes
(every method wrapped in pydantic's ``validate_call``, schemas built at import): about a third of
``import lancedb`` (``python -X importtime``), for a REST namespace client that a store on disk or
in object storage never uses.  :func:`import_lancedb` puts that package in ``sys.modules`` as a
lazy module (its search path, its ``__init__`` not run yet), so importing ``lancedb`` loads only
the models it names; the first attribute asked of the package itself that is not one of its
sub-modules (``TableApi``, ``ApiClient``, ``__version__``: a REST namespace at work) runs the real
``__init__`` in that same module, which from then on is the package as usual.
"""

from __future__ import annotations

import importlib
import importlib.util
import os
import sys
import threading
import types

_lock = threading.RLock()
_CLIENT = "lance_namespace_urllib3_client"


def _is_submodule(root: str, name: str) -> bool:
    return os.path.isdir(os.path.join(root, name)) or os.path.isfile(os.path.join(root, name + ".py"))


def _lazy_package() -> types.ModuleType | None:
    """The client's package as a lazy module in ``sys.modules`` (None if it is imported already
    or not installed)."""
    if _CLIENT in sys.modules:
        return None
    spec = importlib.util.find_spec(_CLIENT)  # locates the package without running it
    if spec is None or spec.loader is None or not spec.submodule_search_locations:
        return None
    root = list(spec.submodule_search_locations)[0]
    mod = importlib.util.module_from_spec(spec)  # __path__, __spec__, __file__; nothing run
    done = threading.Event()

    def __getattr__(name: str):  # noqa: N807  (the module-level hook, PEP 562)
        if done.is_set() or _is_submodule(root, name):  # a submodule: let the import system load it
            raise AttributeError(f"module {_CLIENT!r} has no attribute {name!r}")
        with _lock:
            if not done.is_set():
                done.set()
                del mod.__dict__["__getattr__"]
                spec.loader.exec_module(mod)  # type: ignore[union-attr]
        return getattr(mod, name)

    mod.__dict__["__getattr__"] = __getattr__
    sys.modules[_CLIENT] = mod
    return mod


def import_lancedb() -> types.ModuleType:
    """The ``lancedb`` module (imported now if it is not yet)."""
    if "lancedb" in sys.modules:
        return sys.modules["lancedb"]
    with _lock:
        _lazy_package()
        return importlib.import_module("lancedb")


__all__ = ["import_lancedb"]
