"""Where stores are: the default store and how a store location is named (standard library only,
so the command line can use it before anything heavy is imported)."""

from __future__ import annotations

import os
from pathlib import Path


def is_uri(location: str | Path) -> bool:
    """An object-storage (or other non-local) location such as ``s3://bucket/prefix``."""
    return isinstance(location, str) and "://" in location and not location.startswith("file://")


def default_store_path() -> Path | str:
    """``$NOMIC_MEMORY_STORE``, else ``$XDG_DATA_HOME/nomic-memory/store`` (~/.local/share/...)."""
    env = os.environ.get("NOMIC_MEMORY_STORE")
    if env:
        return env if is_uri(env) else Path(env).expanduser()
    base = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(base) / "nomic-memory" / "store"


def cache_dir() -> Path:
    """``$XDG_CACHE_HOME/nomic-memory`` (~/.cache/nomic-memory): what can be made again if lost."""
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "nomic-memory"


def store_key(location: str | Path) -> str:
    """One name per store, however it is written: the URI of an object-storage store, the resolved
    absolute path of a local one (what :class:`~nomic_memory.store.Store` opens)."""
    location = str(location)
    if is_uri(location):
        return location
    if location.startswith("file://"):
        location = location[len("file://") :]
    return str(Path(location).expanduser().resolve())


__all__ = ["cache_dir", "default_store_path", "is_uri", "store_key"]
