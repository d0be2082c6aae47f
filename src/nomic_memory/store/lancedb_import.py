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

``import_lancedb(pandas=False)``, for a process that never gives pyarrow a pandas object (a
command-line search), also leaves pandas out: importing ``pyarrow.dataset`` builds a scalar,
whose conversion asks pyarrow's pandas shim whether pandas is installed, and the shim's answer is
to import it (about a third of a second, under ``python -X importtime``).  While
``pyarrow.dataset`` is imported, ``import pandas`` is refused, so the shim records "no pandas",
which is what it records in any installation without pandas (``nomic-memory`` does not depend
on it; only the ``ray`` extra brings it).  No pandas object can exist in a process that never
imported pandas, so no conversion can differ; and the shim imports pandas again when a pandas
API is asked of it (``to_pandas``), so nothing is lost either.
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


class _RefusePandas:
    """A finder that refuses ``pandas`` (as if it were not installed)."""

    def find_spec(self, name: str, path=None, target=None):
        if name == "pandas" or name.startswith("pandas."):
            raise ImportError(f"{name} is left out of this process", name=name)
        return None


def _pyarrow_dataset_without_pandas() -> None:
    if "pyarrow.dataset" in sys.modules or "pandas" in sys.modules:
        return
    refuse = _RefusePandas()
    sys.meta_path.insert(0, refuse)
    try:
        importlib.import_module("pyarrow.dataset")
    finally:
        sys.meta_path.remove(refuse)


def import_lancedb(*, pandas: bool = True) -> types.ModuleType:
    """The ``lancedb`` module (imported now if it is not yet).  ``pandas=False``: pyarrow's
    pandas shim does not import pandas on the way (see the module's docstring)."""
    if "lancedb" in sys.modules:
        return sys.modules["lancedb"]
    with _lock:
        _lazy_package()
        if not pandas:
            _pyarrow_dataset_without_pandas()
        return importlib.import_module("lancedb")


__all__ = ["import_lancedb"]
