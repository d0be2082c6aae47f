"""Where a running ``nomic-memory serve`` leaves its address, so that ``nomic-memory search`` on
the same store can ask it instead of loading the model itself.

A server writes one small JSON file (address, token, table, model, pid) into a directory only its
user can enter (``$XDG_RUNTIME_DIR/nomic-memory``, else ``~/.cache/nomic-memory/run``), readable
only by that user (mode 0600), named after the store and the server's pid, and removes it when it
stops.  A reader trusts a file only if it belongs to the reader's own user, nobody else can read
or write it, and its process is still alive; anything else is ignored (a server killed with
SIGKILL leaves a file behind: the next reader that finds its process gone removes it).

Standard library only: the command line reads this before importing anything heavy.
"""

from __future__ import annotations

import hashlib
import json
import os
import stat
from pathlib import Path

from nomic_memory.locations import cache_dir, store_key


def registry_dir() -> Path:
    """The per-user directory of server files (created 0700 when written)."""
    run = os.environ.get("XDG_RUNTIME_DIR")
    if run and os.path.isdir(run):
        return Path(run) / "nomic-memory"
    return cache_dir() / "run"


def _prefix(store) -> str:
    return hashlib.sha256(store_key(store).encode()).hexdigest()[:16]


def register(store, entry: dict) -> Path:
    """Write ``entry`` (with the store's key and this pid) for ``store``; returns the file."""
    d = registry_dir()
    d.mkdir(mode=0o700, parents=True, exist_ok=True)
    if d.stat().st_uid != os.getuid() or d.stat().st_mode & 0o077:
        os.chmod(d, 0o700)  # ours but too open (an older or hand-made directory): close it
    path = d / f"{_prefix(store)}-{os.getpid()}.json"
    tmp = path.with_suffix(".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | getattr(os, "O_NOFOLLOW", 0), 0o600)
    with os.fdopen(fd, "w") as f:
        json.dump({**entry, "store": store_key(store), "pid": os.getpid()}, f)
    os.replace(tmp, path)
    return path


def unregister(path: Path | None) -> None:
    if path is not None:
        try:
            os.unlink(path)
        except OSError:
            pass


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process: not a server this user started
        return False
    return True


def _read(path: Path) -> dict | None:
    """The entry in ``path`` if this user alone owns it and can read it; None otherwise."""
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0))
    except OSError:
        return None
    with os.fdopen(fd) as f:
        st = os.fstat(f.fileno())
        if not stat.S_ISREG(st.st_mode) or st.st_uid != os.getuid() or st.st_mode & 0o077:
            return None
        try:
            entry = json.load(f)
        except ValueError:
            return None
    return entry if isinstance(entry, dict) else None


def find(store) -> list[dict]:
    """The live servers of ``store`` (newest first); files of dead servers are removed."""
    key = store_key(store)
    d = registry_dir()
    try:
        names = sorted(os.listdir(d))
    except OSError:
        return []
    out = []
    for name in names:
        if not (name.startswith(_prefix(store) + "-") and name.endswith(".json")):
            continue
        entry = _read(d / name)
        if entry is None or entry.get("store") != key or not isinstance(entry.get("pid"), int):
            continue
        if not _alive(entry["pid"]):
            unregister(d / name)
            continue
        out.append(entry)
    return sorted(out, key=lambda e: e.get("started", 0), reverse=True)


__all__ = ["registry_dir", "register", "unregister", "find"]
