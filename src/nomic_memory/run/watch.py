"""Keeping a store in sync with folders while they change (``nomic-memory watch``, ``serve --watch``).

File-system events (watchdog: inotify on Linux, FSEvents on macOS, ReadDirectoryChangesW on
Windows) mark paths as changed.  A changed path is handled once it has been quiet for
``debounce`` seconds *and* its size, mtime and inode have not moved since its last event: a file
still being written keeps changing, so it waits, and is embedded once, when it is complete.

Ready paths are embedded by the ordinary run driver restricted to them
(:meth:`~nomic_memory.api.Embedder.embed_directory` with ``paths``): the same listing, hashing,
batching, failure reporting, store locks and per-batch commits as ``embed``, so a burst of
10,000 new files is one run cut into batches, and a watcher shares a store with ``embed``,
``serve`` and other watchers as runs do.  A path that is gone (deleted, moved away, a deleted
folder) has its rows pruned; a moved file is embedded under its new path (its content is
unchanged, so nothing but its key differs).  While paths are still settling, ready ones wait at
most ``max_wait`` seconds, so a burst is embedded in few large runs rather than many small ones.

On start, each folder is caught up by a whole run with prune (the normal resumable run: files
changed or added while no watcher ran are embedded, rows of vanished files removed), and the
same happens when the operating system reports that events were lost (a queue overflow).  The
observer starts before the catch-up, so nothing that changes meanwhile is missed.

:meth:`Watcher.stop` (the CLI's Ctrl-C / SIGTERM) ends the run in flight after its current batch
is committed; what is left is caught up by the next start.
"""

from __future__ import annotations

import logging
import os
import stat
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from watchdog.events import (
    DirCreatedEvent,
    DirDeletedEvent,
    DirMovedEvent,
    EventsLostEvent,
    FileClosedEvent,
    FileCreatedEvent,
    FileDeletedEvent,
    FileModifiedEvent,
    FileMovedEvent,
    FileSystemEventHandler,
)
from watchdog.observers import Observer

from nomic_memory.errors import BackendUnavailable, ModelLoadError, NomicMemoryError, UsageError
from nomic_memory.ingest.documents import is_input_path
from nomic_memory.ingest.images import discover
from nomic_memory.logs import ProgressCallback
from nomic_memory.run.driver import RunReport
from nomic_memory.store.table import Store, default_store_path

log = logging.getLogger("nomic_memory.watch")


class WatchError(NomicMemoryError):
    """The folders cannot be watched (e.g. the system's limit on watched folders is reached)."""


class Stopped(NomicMemoryError):
    """Raised inside a run when the watcher is asked to stop (after a batch is committed)."""


@dataclass
class WatchOptions:
    """How a watcher runs.  ``batch_size``, ``max_batch_tokens``, ``workers`` and ``table_name``
    mean what they mean for :meth:`~nomic_memory.api.Embedder.embed_directory`."""

    batch_size: int = 8
    max_batch_tokens: int | None = None
    workers: int | None = None
    table_name: str | None = None
    debounce: float = 0.5  # seconds a path must stay quiet (no event, no change of size/mtime)
    max_wait: float = 2.0  # longest a ready path waits for other paths still settling
    retry_after: float = 10.0  # a run that failed as a whole (store unwritable...) is retried after this
    tick: float = 0.1  # how often pending paths are looked at
    preload: bool = True  # load the model after the catch-up (not on the first change: its latency)

    def __post_init__(self) -> None:
        if self.batch_size < 1:
            raise UsageError("batch_size must be at least 1")
        if self.debounce < 0 or self.max_wait < 0:
            raise UsageError("debounce and max_wait must not be negative")


# ------------------------------------------------------------------ changed paths
def signature(path: Path) -> tuple | None:
    """What must stay still for a path to count as written: size, mtime, ctime, inode, whether it
    is a folder; None when it does not exist."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    return st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino, stat.S_ISDIR(st.st_mode)


@dataclass
class _Change:
    root: Path
    since: float  # monotonic time of its last event, or of the last movement seen
    sig: tuple | None


@dataclass
class ChangeSet:
    """Changed paths waiting to settle; thread-safe (events arrive on the observer's thread)."""

    debounce: float = 0.5
    max_wait: float = 2.0
    _changes: dict[tuple[Path, Path], _Change] = field(default_factory=dict)  # (root, path): roots may nest
    _rescans: dict[Path, float] = field(default_factory=dict)  # root -> when to run it whole
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def touch(self, root: Path, path: Path, since: float | None = None, keep: bool = False) -> None:
        """``path`` (under ``root``) changed; ``keep``: unless it is already waiting."""
        ch = _Change(root, time.monotonic() if since is None else since, signature(path))
        with self._lock:
            if not (keep and (root, path) in self._changes):
                self._changes[root, path] = ch

    def rescan(self, root: Path, delay: float = 0.0) -> None:
        """Run ``root`` whole (events were lost, or a run of it failed)."""
        with self._lock:
            self._rescans[root] = time.monotonic() + delay

    def __len__(self) -> int:
        with self._lock:
            return len(self._changes)

    def take_rescans(self) -> list[Path]:
        now = time.monotonic()
        with self._lock:
            due = [r for r, t in self._rescans.items() if t <= now]
            for r in due:
                del self._rescans[r]
        return due

    def take_ready(self, now: float | None = None) -> dict[Path, list[Path]]:
        """``root -> paths`` that have settled, removed from the set.  Held back while other
        paths are still settling, for at most ``max_wait`` (a burst makes few large runs).  A
        settled folder that exists is replaced by its files, each of which must settle too."""
        now = time.monotonic() if now is None else now
        with self._lock:
            items = list(self._changes.items())
        ready, busy, oldest = [], False, now
        for key, ch in items:
            path = key[1]
            if now - ch.since < self.debounce:
                busy = True
                continue
            sig = signature(path)
            if sig != ch.sig:  # still being written: wait for it to be quiet again
                with self._lock:
                    if self._changes.get(key) is ch:
                        self._changes[key] = _Change(ch.root, now, sig)
                busy = True
                continue
            ready.append((key, ch))
            oldest = min(oldest, ch.since + self.debounce)
        if not ready or (busy and now - oldest < self.max_wait):
            return {}
        out: dict[Path, list[Path]] = {}
        folders = []
        with self._lock:
            for key, ch in ready:
                if self._changes.get(key) is not ch:  # a new event came meanwhile
                    continue
                del self._changes[key]
                path = key[1]
                if ch.sig is not None and ch.sig[4]:
                    folders.append((ch.root, path))
                else:
                    out.setdefault(ch.root, []).append(path)
        for root, folder in folders:
            for f in _inputs_under(folder):
                self.touch(root, f, keep=True)
        return out


def _inputs_under(folder: Path) -> list[Path]:
    try:
        return discover(folder, match=is_input_path)[0]
    except OSError:  # gone again meanwhile: its own event says so
        return []


# ------------------------------------------------------------------ events
_EVENTS = ("created", "modified", "moved", "deleted", "closed")
# Never opened / closed-without-writing / attribute events: reading a file (which every run does,
# to hash it) must not mark it changed.
EVENT_FILTER = [
    FileCreatedEvent,
    FileModifiedEvent,
    FileMovedEvent,
    FileDeletedEvent,
    FileClosedEvent,
    DirCreatedEvent,
    DirMovedEvent,
    DirDeletedEvent,
    EventsLostEvent,
]


class _Handler(FileSystemEventHandler):
    """Marks the inputs (and folders) an event names as changed; lost events ask for a rescan."""

    def __init__(self, root: Path, changes: ChangeSet):
        self.root = root
        self.changes = changes

    def on_any_event(self, event) -> None:
        if event.event_type == "events_lost":
            log.warning("file-system events under %s were lost: catching up with a whole run", self.root)
            self.changes.rescan(self.root)
            return
        if event.event_type not in _EVENTS or (event.is_directory and event.event_type == "modified"):
            return
        for p in (event.src_path, getattr(event, "dest_path", "")):
            if p and (event.is_directory or is_input_path(os.fsdecode(p))):
                self.changes.touch(self.root, Path(os.fsdecode(p)))


# ------------------------------------------------------------------ the watcher
class WatchListener:
    """What a watcher reports (default: log lines).  Subclass to show progress."""

    def run_started(self, root: Path, trigger: str, paths: list[Path] | None) -> ProgressCallback | None:
        """A run begins (``trigger``: ``catch-up``, ``changes`` or ``events lost``; ``paths``: the
        changed paths, None for a whole run); returns the run's progress callback, if any."""
        return None

    def run_finished(self, report: RunReport, trigger: str, paths: list[Path] | None) -> None:
        log.info(
            "%s: %d embedded, %d pruned, %d failed",
            report.directory,
            report.embedded,
            report.pruned,
            len(report.failed),
        )

    def error(self, root: Path, message: str) -> None:
        log.error("%s: %s", root, message)

    def ready(self, roots: list[Path]) -> None:
        """Caught up and the model loaded: changes are embedded from now on."""


class Watcher:
    """Keeps ``store`` in sync with ``roots`` while :meth:`run` runs (see the module docstring).

    ``embedder``: an :class:`~nomic_memory.api.Embedder` (lazy or loaded): its model is loaded
    on the first change that needs it and kept.  :meth:`stop` may be called from any thread or a
    signal handler."""

    def __init__(
        self,
        embedder,
        roots: Iterable[str | Path],
        store: str | Path | Store | None = None,
        options: WatchOptions | None = None,
        listener: WatchListener | None = None,
    ):
        self.embedder = embedder
        self.roots = [Path(r).expanduser().resolve() for r in roots]
        if not self.roots:
            raise UsageError("no folder to watch")
        for r in self.roots:
            if not r.is_dir():
                raise UsageError(f"no such directory: {r}" if not r.exists() else f"not a directory: {r}")
        self.store = store if isinstance(store, Store) else Store(store if store is not None else default_store_path())
        self.options = options or WatchOptions()
        self.listener = listener or WatchListener()
        self.changes = ChangeSet(self.options.debounce, self.options.max_wait)
        self.runs = 0
        self._stop = threading.Event()
        self._observer = None

    @property
    def stopping(self) -> bool:
        return self._stop.is_set()

    def stop(self) -> None:
        """Finish the batch in flight, commit it, and return from :meth:`run`."""
        self._stop.set()

    def start_observing(self) -> None:
        """Start receiving events (done by :meth:`run`; callable earlier so that nothing is missed)."""
        if self._observer is not None:
            return
        obs = Observer()
        try:
            for root in self.roots:
                obs.schedule(_Handler(root, self.changes), str(root), recursive=True, event_filter=EVENT_FILTER)
            obs.start()
        except OSError as e:
            hint = (
                " (raise the limit: sysctl fs.inotify.max_user_watches / max_user_instances)"
                if e.errno in (24, 28)
                else ""
            )
            raise WatchError(f"cannot watch {', '.join(map(str, self.roots))}: {e.strerror or e}{hint}") from None
        self._observer = obs

    def run(self) -> None:
        """Observe, catch every folder up, then embed changes as they settle, until :meth:`stop`."""
        self.start_observing()
        try:
            for root in self.roots:
                if self.stopping:
                    break
                self.run_once(root, None, "catch-up")
            if self.options.preload and not self.stopping:
                self.embedder.loaded  # noqa: B018 - loads the model once, kept for every run
            if not self.stopping:
                self.listener.ready(self.roots)
            while not self._stop.wait(self.options.tick):
                self.step()
        finally:
            obs, self._observer = self._observer, None
            obs.stop()
            obs.join(timeout=10)

    def step(self) -> None:
        """Handle what is due now: whole runs of folders whose events were lost, settled paths."""
        for root in self.changes.take_rescans():
            self.run_once(root, None, "events lost")
        for root, paths in self.changes.take_ready().items():
            if self.stopping:
                return
            self.run_once(root, paths, "changes")

    def run_once(self, root: Path, paths: list[Path] | None, trigger: str) -> RunReport | None:
        """One run of the driver over ``paths`` of ``root`` (None: all of it, with prune)."""
        if self.stopping:
            return None
        progress = self.listener.run_started(root, trigger, paths)
        stop = self._stop

        def emit(kind: str, data: dict) -> None:
            if progress is not None:
                progress(kind, data)
            if kind in ("plan", "batch") and stop.is_set():  # nothing in flight: every batch so far committed
                raise Stopped("stopped")

        o = self.options
        try:
            report = self.embedder.embed_directory(
                root,
                self.store,
                paths=paths,
                prune=True,
                batch_size=o.batch_size,
                max_batch_tokens=o.max_batch_tokens,
                workers=o.workers,
                table_name=o.table_name,
                on_event=emit,
            )
        except Stopped:
            return None
        except (ModelLoadError, BackendUnavailable, UsageError):
            raise  # no retry would fix these
        except Exception as e:  # a run that failed as a whole: said, and tried again later
            msg = str(e) if isinstance(e, NomicMemoryError) else f"{type(e).__name__}: {e}"
            self.listener.error(root, f"{msg} (retrying in {o.retry_after:g} s)")
            if paths is None:
                self.changes.rescan(root, o.retry_after)
            else:
                for p in paths:
                    self.changes.touch(root, p, since=time.monotonic() + o.retry_after, keep=True)
            return None
        self.runs += 1
        self.listener.run_finished(report, trigger, paths)
        return report


__all__ = ["Watcher", "WatchOptions", "WatchListener", "WatchError", "ChangeSet", "Stopped", "signature"]
