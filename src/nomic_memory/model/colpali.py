"""colpali-engine's Qwen2.5 classes, without importing the rest of colpali-engine.

``colpali_engine/__init__.py`` imports every model family it ships (Gemma 3, Idefics 3, PaliGemma,
ModernVBert, Qwen 2, 3, 3.5, Omni, ...), each pulling its transformers modules: about a quarter of
the start-up of a command that needs only ColQwen2.5/BiQwen2.5 (``python -X importtime``: 1.9 s
for ``colpali_engine.models`` against 1.5 s for ``colpali_engine.models.qwen2_5`` alone, after
torch and transformers).  :func:`qwen2_5` imports the ``qwen2_5`` sub-package directly: for the
duration of that import, the two parent packages are stand-in package objects (the same search
path, no ``__init__`` run), removed afterwards, so a later ``import colpali_engine`` runs its
real ``__init__`` as usual and reuses the very same classes.

:func:`query_only_process` (a command-line search calls it) has the model's code imported as if
scipy and boto3 were not installed.  transformers imports ``scipy.optimize`` only for the
Hungarian matching of its object-detection losses (``transformers.loss``, imported by
``modeling_utils``), and only where it finds scipy installed: its own installations without scipy
take the same path.  accelerate (imported by transformers' model loading) imports boto3, where
installed, for its SageMaker configuration commands; boto3 is no dependency of nomic-memory (only
of its development tools).  Together about 0.4 s of the command's imports (``python -X
importtime``).  Nothing that embeds a query uses either: the query embedding and the hits are
the same (``tests/test_startup.py`` and the instant-search tests compare them with a normal
process's).  In such a process the model's code is also imported with ``torch._dynamo``,
``torchvision`` and ``torchvision.ops`` deferred (:mod:`nomic_memory.model.deferred`: each
package's ``__init__`` runs when a name it defines is first used, which embedding a query never
does), and with transformers taking its path for a torch built without ``torch.distributed``
(which spares ``torch.distributed.tensor``; a search is one process on one device).  Together
about 2 s of the command's 5-8 s here.
"""

from __future__ import annotations

import contextlib
import importlib
import importlib.util
import os
import sys
import threading
import types
from collections.abc import Iterator

from nomic_memory.model import model_table
from nomic_memory.model.deferred import defer, defer_dynamo

_lock = threading.Lock()
_PARENTS = ("colpali_engine", "colpali_engine.models")
_OPTIONAL = ("scipy", "boto3")  # what query_only_process hides (see the module's docstring)
_LEFT_OUT: dict[str, None] = {}  # optional packages hidden until the model's code is imported (query_only_process)
_QUERY_ONLY: dict[str, bool] = {}  # "declared": query_only_process was called; "done": _query_only_imports ran


def query_only_process() -> None:
    """Declare that this process only embeds queries and searches (a command-line search): until
    the model's code is imported (:func:`qwen2_5`), scipy and boto3 are hidden (``import scipy``
    fails, ``importlib.util.find_spec("scipy")`` is None), so transformers and accelerate, which
    look once per process, take their paths for an installation without them (see the module's
    docstring).  A process that imported transformers already is left as it is."""
    if "transformers" in sys.modules:
        return
    _QUERY_ONLY["declared"] = True
    for name in _OPTIONAL:
        if name not in sys.modules:
            sys.modules[name] = None  # type: ignore[assignment]
            _LEFT_OUT[name] = None


def _show_left_out() -> None:
    """Make what :func:`query_only_process` hid importable again."""
    for name in list(_LEFT_OUT):
        if name in sys.modules and sys.modules[name] is None:
            del sys.modules[name]
        _LEFT_OUT.pop(name, None)


def _stand_ins() -> list[str]:
    """Put stand-in parent packages in ``sys.modules`` where the real ones are not imported yet;
    the names of those put there."""
    spec = importlib.util.find_spec("colpali_engine")  # locates the package without running it
    if spec is None or not spec.submodule_search_locations:
        return []
    root = list(spec.submodule_search_locations)[0]
    added = []
    for name, path in zip(_PARENTS, (root, os.path.join(root, "models"))):
        if name in sys.modules:
            continue
        sys.modules[name] = _stand_in(name, path)
        added.append(name)
    return added


def _stand_in(name: str, path: str) -> types.ModuleType:
    """A package object for ``name`` with the search path ``path`` whose ``__init__`` is not run:
    its sub-modules import through it as usual."""
    mod = types.ModuleType(name)
    mod.__path__ = [path]
    mod.__spec__ = importlib.util.spec_from_file_location(
        name, os.path.join(path, "__init__.py"), submodule_search_locations=[path]
    )
    return mod


_load_lock = threading.Lock()


@contextlib.contextmanager
def lean_transformers() -> Iterator[None]:
    """For the duration: ``transformers.models`` as a stand-in package (its search path, its
    ``__init__`` not run), removed afterwards.

    That ``__init__`` reads the source of every model family transformers ships (several hundred
    folders) to build its lazy table of names: the largest single step of importing the Qwen2.5
    model (``python -X importtime``), and loading a model and processor by their class (as
    :func:`nomic_memory.model.loading.load_model` does) never consults that table.  A later
    ``import transformers.models`` runs the real ``__init__`` and reuses the modules loaded here."""
    name = "transformers.models"
    with _load_lock:
        if name in sys.modules or importlib.util.find_spec("transformers") is None:
            yield
            return
        with _query_only_imports():
            model_table.install()  # transformers' table of every model's names from the cache
            transformers = importlib.import_module("transformers")  # the real top-level package first
            mod = sys.modules[name] = _stand_in(name, os.path.join(list(transformers.__path__)[0], "models"))
            try:
                yield
            finally:
                if sys.modules.get(name) is mod:
                    del sys.modules[name]


@contextlib.contextmanager
def _query_only_imports() -> Iterator[None]:
    """In a query-only process, the first time the model is loaded, what its code leaves out (see
    the module's docstring): ``torch._dynamo``, ``torchvision`` and ``torchvision.ops`` deferred
    for good; for the duration, ``torch.distributed.is_available()`` says no, so transformers and
    peft, which each ask once and keep the answer, take their paths for a torch without it."""
    if not _QUERY_ONLY.get("declared") or _QUERY_ONLY.get("done"):
        yield
        return
    _QUERY_ONLY["done"] = True
    import torch

    defer_dynamo()
    defer("torchvision")
    defer("torchvision.ops")
    available = torch.distributed.is_available
    torch.distributed.is_available = lambda: False
    try:
        yield
    finally:
        torch.distributed.is_available = available


def qwen2_5():
    """The ``colpali_engine.models.qwen2_5`` module (``ColQwen2_5``, ``ColQwen2_5_Processor``,
    ``BiQwen2_5``, ``BiQwen2_5_Processor``)."""
    name = "colpali_engine.models.qwen2_5"
    if name in sys.modules or "colpali_engine.models" in sys.modules:
        _show_left_out()
        return importlib.import_module(name)
    with _lock:
        added = _stand_ins()
        try:
            if _LEFT_OUT:
                try:
                    return importlib.import_module(name)
                except ImportError:  # something needs a hidden package after all: once more with it
                    _show_left_out()
            return importlib.import_module(name)
        finally:
            _show_left_out()
            for parent in added:
                if sys.modules.get(parent) is not None and not hasattr(sys.modules[parent], "__file__"):
                    del sys.modules[parent]


__all__ = ["lean_transformers", "query_only_process", "qwen2_5"]
