"""transformers' table of every model family's names, kept in a file between processes.

``import transformers`` reads the source of every module of every model family it ships (some
2,600 files) to build the table behind its lazy names (``transformers.AutoModel``, ...): the
``define_import_structure(models/, prefix="models")`` call in its ``__init__``, about 0.3 s of a
command-line search's 4 s here (cProfile: 0.59 of 0.95 s of ``import transformers``).  The
table is a function of those files only, and an installed distribution's files change only when
it is installed again (which rewrites its ``RECORD``).

:func:`install` puts a one-shot import hook on ``sys.meta_path``: when transformers loads its
``utils.import_utils`` module, that module's ``define_import_structure`` is wrapped so that the
call for the installed ``models`` folder reads the table from
``$XDG_CACHE_HOME/nomic-memory/transformers/<key>.json`` (the key: the folder, the distribution's
name and version, its ``RECORD``'s size and modification time, Python's version), and on a miss
computes it with transformers' own function and writes it there.  Every other call goes to
transformers' function.  Nothing is cached for a transformers that is not an installed
distribution in ``site-packages`` (an editable checkout: its files change in place), and any
error reading or writing the file means transformers computes the table as usual.
"""

from __future__ import annotations

import functools
import hashlib
import importlib.abc
import importlib.machinery
import json
import os
import sys
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from nomic_memory.locations import cache_dir

FORMAT = 1  # of the cache file; part of the key
_TARGET = "transformers.utils.import_utils"
Table = dict[frozenset[str], dict[str, set[str]]]


def table_key(models: Path) -> str | None:
    """The cache key of the table of ``models`` (transformers' ``models`` folder), or None where
    the folder is not part of an installed distribution (see the module's docstring)."""
    site = models.parent.parent
    if site.name not in ("site-packages", "dist-packages"):
        return None
    records = sorted(site.glob(f"{models.parent.name}-*.dist-info/RECORD"))
    if len(records) != 1:
        return None
    st = records[0].stat()
    words = (FORMAT, str(models), records[0].parent.name, st.st_size, st.st_mtime_ns, sys.version_info[:2])
    return hashlib.blake2b(repr(words).encode(), digest_size=16).hexdigest()


def _to_json(table: Table) -> list:
    return [
        [sorted(backends), {mod: sorted(names) for mod, names in entries.items()}]
        for backends, entries in table.items()
    ]


def _from_json(doc: list) -> Table:
    return {frozenset(backends): {mod: set(names) for mod, names in entries.items()} for backends, entries in doc}


def cached_table(compute: Callable[[], Table], key: str, folder: Path | None = None) -> Table:
    """The table stored under ``key`` in ``folder`` (the cache by default); else ``compute()``,
    stored there for the next process (written whole or not at all)."""
    path = (folder or cache_dir() / "transformers") / f"{key}.json"
    try:
        return _from_json(json.loads(path.read_text()))
    except (OSError, ValueError, TypeError, AttributeError):
        pass
    table = compute()
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".table-", suffix=".tmp")
        with os.fdopen(fd, "w") as f:
            json.dump(_to_json(table), f)
        os.replace(tmp, path)
    except OSError:
        pass
    return table


def _wrap(define: Callable[..., Table]) -> Callable[..., Table]:
    """transformers' ``define_import_structure``, with the ``models`` folder's table cached."""

    @functools.wraps(define)
    def define_import_structure(module_path: Any, prefix: str | None = None) -> Table:
        if prefix == "models":
            models = Path(module_path)
            key = table_key(models) if models.name == "models" else None
            if key is not None:
                return cached_table(lambda: define(module_path, prefix), key)
        return define(module_path, prefix)

    for name in ("cache_info", "cache_clear"):  # transformers' own is an lru_cache
        if hasattr(define, name):
            setattr(define_import_structure, name, getattr(define, name))
    return define_import_structure


class _Loader(importlib.machinery.SourceFileLoader):
    """Loads ``transformers.utils.import_utils`` as usual, then wraps its ``define_import_structure``
    (before transformers' ``__init__`` imports that name), and leaves a plain loader behind."""

    def exec_module(self, module: Any) -> None:
        super().exec_module(module)
        if callable(getattr(module, "define_import_structure", None)):
            module.define_import_structure = _wrap(module.define_import_structure)
        plain = importlib.machinery.SourceFileLoader(self.name, self.path)
        module.__loader__ = plain
        if module.__spec__ is not None:
            module.__spec__.loader = plain


class _Hook(importlib.abc.MetaPathFinder):
    def find_spec(self, name: str, path: Sequence[str] | None, target: Any = None) -> Any:
        if name != _TARGET:
            return None
        _remove(self)
        spec = importlib.machinery.PathFinder.find_spec(name, path)
        if spec is None or not isinstance(spec.loader, importlib.machinery.SourceFileLoader):
            return spec
        spec.loader = _Loader(name, spec.loader.path)
        return spec


def _remove(hook: _Hook) -> None:
    try:
        sys.meta_path.remove(hook)
    except ValueError:
        pass


def install() -> None:
    """Have the next ``import transformers`` read its model table from the cache (see the
    module's docstring); nothing where transformers' ``import_utils`` is imported already."""
    if _TARGET in sys.modules or any(isinstance(f, _Hook) for f in sys.meta_path):
        return
    sys.meta_path.insert(0, _Hook())


__all__ = ["cached_table", "install", "table_key"]
