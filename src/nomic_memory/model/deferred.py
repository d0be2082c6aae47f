"""Packages whose ``__init__`` runs when a name it defines is first used, not when the package is.

A command-line search imports transformers' Qwen2.5-VL classes and their image processor, and with
them three packages whose package ``__init__`` is most of their cost and none of which embedding a
query uses (``python -X importtime`` of ``nomic-memory search --no-server``):

* ``torch._dynamo``, torch.compile's front end (about a second with the sympy, triton and torch.fx
  symbolic-shape modules it brings, and ``torch.distributed.tensor``): transformers' masking code
  imports one of its submodules, and decorators applied when transformers and torchvision define
  their functions (``torch.compiler.disable``, ``allow_in_graph``, ``assume_constant_result``)
  look it up;
* ``torchvision``, whose ``__init__`` imports its model zoo, datasets, video and image i/o and
  operators, for the image processor's ``transforms.v2``;
* ``torchvision.ops``, whose ``__init__`` imports ``roi_align`` and through it
  ``torch._dynamo.utils``, for the box helpers the v2 geometry transforms import.

:func:`defer` puts such a package in ``sys.modules`` as a :class:`DeferredPackage`: the real
package object (its spec, its search path), whose submodules import through it as usual, and
whose ``__init__`` runs in that same object the first time anything asks it for a name that is
not a submodule.  Code that needs the package's own names gets exactly what a normal import gives,
only later; code that needs only submodules never pays for the ``__init__``.

For ``torch._dynamo`` the three decorators above stand in until then (:func:`defer_dynamo`), each
doing what the real one does for a process that has not started torch.compile: nothing can be
compiling before ``torch._dynamo`` has run (``torch.compile`` looks it up first), so a function
disabled for compilation is called as it is until then and through Dynamo's own ``disable``
after; functions allowed in the graph are registered with Dynamo when it runs; a constant result
is marked as Dynamo marks it.
"""

from __future__ import annotations

import functools
import importlib
import importlib.machinery
import importlib.util
import sys
import threading
import types
import weakref
from collections.abc import Callable
from typing import Any

_lock = threading.RLock()


class DeferredPackage(types.ModuleType):
    """A package imported without running its ``__init__`` yet (see the module's docstring)."""

    def __getattr__(self, attr: str) -> Any:
        # Only called for a name the module does not have yet: a submodule is imported (as the
        # import system does for ``from pkg import sub``), anything else runs the real __init__.
        if _is_submodule(self, attr):
            return importlib.import_module(f"{self.__name__}.{attr}")
        run_init(self)
        if isinstance(self, DeferredPackage):  # asked by its own __init__, which runs in this thread
            raise AttributeError(
                f"partially initialized module {self.__name__!r} has no attribute {attr!r} "
                "(most likely due to a circular import)"  # Python's own words for this
            )
        return getattr(self, attr)


def _is_submodule(pkg: types.ModuleType, attr: str) -> bool:
    if attr.startswith("__"):
        return False
    return importlib.machinery.PathFinder.find_spec(f"{pkg.__name__}.{attr}", list(pkg.__path__)) is not None


_before_init: dict[str, Callable[[types.ModuleType], None]] = {}  # by package name
_after_init: dict[str, Callable[[types.ModuleType], None]] = {}
_running: set[str] = set()  # packages whose __init__ runs now


def run_init(pkg: types.ModuleType) -> None:
    """Run a deferred package's real ``__init__`` once, in the package object itself (nothing for
    a package that is not deferred).  Other threads wait until it has run, as they would for an
    import; the package stays a :class:`DeferredPackage` while it runs, so that names its own
    ``__init__`` asks for before defining them fail as in any partially initialised module."""
    with _lock:
        name = pkg.__name__
        if not isinstance(pkg, DeferredPackage) or name in _running:
            return
        _running.add(name)
        try:
            before, after = _before_init.pop(name, None), _after_init.pop(name, None)
            if before:
                before(pkg)
            pkg.__spec__.loader.exec_module(pkg)  # type: ignore[union-attr]
            if after:
                after(pkg)
        finally:
            _running.discard(name)
            pkg.__class__ = types.ModuleType  # type: ignore[assignment]  # a normal package from here on


def defer(name: str) -> DeferredPackage | None:
    """Import the package ``name`` with its ``__init__`` deferred (its parent is imported as usual).

    Nothing is done (None) for a package already imported or not installed."""
    with _lock:
        if name in sys.modules:
            return None
        parent, _, child = name.rpartition(".")
        if parent:
            importlib.import_module(parent)
            if name in sys.modules:  # the parent's __init__ imported it
                return None
        spec = importlib.util.find_spec(name)
        if spec is None or spec.loader is None or not spec.submodule_search_locations or not spec.has_location:
            return None
        pkg = DeferredPackage(name)
        pkg.__spec__ = spec
        pkg.__loader__ = spec.loader
        pkg.__file__ = spec.origin
        pkg.__path__ = list(spec.submodule_search_locations)
        pkg.__package__ = name
        sys.modules[name] = pkg
        if parent:
            setattr(sys.modules[parent], child, pkg)
        return pkg


# torch._dynamo: the decorators that transformers and torchvision apply while they are imported.
_DYNAMO = "torch._dynamo"
_allowed: list[weakref.ref] = []  # functions given to allow_in_graph before Dynamo ran


def defer_dynamo() -> DeferredPackage | None:
    """:func:`defer` ``torch._dynamo``, with stand-ins for ``disable``, ``allow_in_graph`` and
    ``assume_constant_result`` until its ``__init__`` runs (see the module's docstring)."""
    pkg = defer(_DYNAMO)
    if pkg is None:
        return None
    for name, stand_in in _stand_ins().items():
        setattr(pkg, name, stand_in)
    _before_init[_DYNAMO], _after_init[_DYNAMO] = _drop_stand_ins, _register_allowed
    return pkg


def _dynamo_ran() -> bool:
    return not isinstance(sys.modules.get(_DYNAMO), DeferredPackage)


def _stand_ins() -> dict[str, Callable]:
    """Dynamo's names that stand in until it runs, and what stands in for each."""
    return {"disable": _disable, "allow_in_graph": _allow_in_graph, "assume_constant_result": _assume_constant_result}


def _drop_stand_ins(pkg: types.ModuleType) -> None:
    for name in _stand_ins():
        pkg.__dict__.pop(name, None)


def _register_allowed(pkg: types.ModuleType) -> None:
    for ref in _allowed:
        fn = ref()
        if fn is not None:
            pkg.allow_in_graph(fn)
    _allowed.clear()


def _real_dynamo() -> Any:
    pkg = sys.modules[_DYNAMO]
    run_init(pkg)
    return pkg


def _disable(fn: Any = None, recursive: bool = True, *, reason: str | None = None, wrapping: bool = True) -> Any:
    """``torch._dynamo.disable`` before Dynamo ran: a plain function is called as it is until
    then (nothing can be compiling), through Dynamo's own ``disable`` after."""
    if fn is None:
        return functools.partial(_disable, recursive=recursive, reason=reason, wrapping=wrapping)
    if _dynamo_ran() or not isinstance(fn, types.FunctionType):
        return _real_dynamo().disable(fn, recursive, reason=reason, wrapping=wrapping)
    disabled: list[Callable] = []

    @functools.wraps(fn)
    def call(*args: Any, **kwargs: Any) -> Any:
        if not disabled:
            if not _dynamo_ran():
                return fn(*args, **kwargs)
            disabled.append(_real_dynamo().disable(fn, recursive, reason=reason, wrapping=wrapping))
        return disabled[0](*args, **kwargs)

    return call


def _allow_in_graph(fn: Any) -> Any:
    """``torch._dynamo.allow_in_graph`` before Dynamo ran: remembered, registered when it runs."""
    if _dynamo_ran():
        return _real_dynamo().allow_in_graph(fn)
    if isinstance(fn, (list, tuple)):
        return [_allow_in_graph(x) for x in fn]
    if not callable(fn):
        raise AssertionError("allow_in_graph expects a callable")  # as Dynamo's own
    _allowed.append(weakref.ref(fn))
    return fn


def _assume_constant_result(fn: Any) -> Any:
    """``torch._dynamo.assume_constant_result``: what Dynamo's own does (marks the function)."""
    fn._dynamo_marked_constant = True
    return fn


__all__ = ["DeferredPackage", "defer", "defer_dynamo", "run_init"]
