"""``nomic-memory watch``: keep the store in sync with folders while they change."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import typer

from nomic_memory.cli.common import (
    EXIT_OK,
    MODEL_OPTIONS,
    PROGRESS,
    REVISION,
    SEED,
    VERBOSE,
    ModelOptions,
    fail,
    fail_on,
    json_option,
    number_option,
    plural,
    say,
    setup_logging,
    store_option,
    takes_model_options,
)
from nomic_memory.cli.embed import ConsoleProgress, summary
from nomic_memory.errors import NomicMemoryError

EXIT_INTERRUPTED = 130


class ConsoleListener:
    """A watcher's runs reported as ``embed`` reports a run: the plan line, skipped files on
    stderr, a progress bar (catch-up runs on a terminal, or every run with ``--progress``), the
    summary line; with ``--json`` one JSON report per run on stdout (``trigger`` and ``paths``
    added: what started it and how many changed paths it covered)."""

    def __init__(self, progress: bool | None, json_out: bool, batch_size: int, model: str = "", err: bool = False):
        self.progress = progress
        self.json_out = json_out
        self.err = err or json_out  # human lines on stderr
        self.batch_size = batch_size
        self.model = model
        self.ui: ConsoleProgress | None = None

    def run_started(self, root: Path, trigger: str, paths) -> ConsoleProgress:
        if trigger == "catch-up":
            say(f"Catching up with {root}", self.err)
        elif trigger == "changes":
            say(f"Changes under {root}: {plural(len(paths), 'path')}", self.err)
        else:
            say(f"File-system events under {root} were lost: catching up with the whole folder", self.err)
        bar = self.progress if self.progress is not None else (None if trigger == "catch-up" else False)
        self.ui = ConsoleProgress(bar, json_out=self.err, directory=root, batch_size=self.batch_size, model=self.model)
        return self.ui

    def run_finished(self, report, trigger: str, paths) -> None:
        if self.ui is not None:
            self.ui.close()
        say(summary(report), self.err)
        if self.json_out:
            typer.echo(
                json.dumps({**report.to_dict(), "trigger": trigger, "paths": None if paths is None else len(paths)})
            )

    def ready(self, roots: list[Path]) -> None:
        say(f"Watching {', '.join(map(str, roots))} for changes (Ctrl-C to stop)", self.err)

    def error(self, root: Path, message: str) -> None:
        if self.ui is not None:
            self.ui.close()
        typer.echo(f"Error: {root}: {message}", err=True)


@takes_model_options
def watch(
    directories: list[Path] = typer.Argument(
        ..., metavar="DIRECTORY", help="Folders to keep in sync (watched recursively)."
    ),
    model: ModelOptions = MODEL_OPTIONS,
    store: Optional[str] = store_option(),
    seed: int = SEED,
    revision: Optional[str] = REVISION,
    debounce: float = number_option(
        0.5,
        "--debounce",
        "How long a changed file must stay unchanged before it is embedded.",
        metavar="SECONDS",
        min=0.0,
    ),
    json_out: bool = json_option("One JSON report per run on stdout (every other line goes to stderr)."),
    progress: Optional[bool] = PROGRESS,
    verbose: bool = VERBOSE,
) -> None:
    """Keep the store in sync with DIRECTORY... while this runs: catch up first, then embed new and
    changed files once they are written, remove the rows of deleted and moved ones (Ctrl-C stops)."""
    setup_logging(verbose)
    model.check_revision(revision)
    for d in directories:
        if not d.exists():
            raise fail(f"no such directory: {d}")
        if not d.is_dir():
            raise fail(f"not a directory: {d}")
    from nomic_memory.run.watch import Watcher, WatchOptions  # late: pyarrow and watchdog; the CLI starts without them

    try:
        emb, store_obj = model.open(store, seed, revision, json_out)
        listener = ConsoleListener(progress, json_out, model.batch_size, emb.resolved.model_id)
        options = WatchOptions(batch_size=model.batch_size, max_batch_tokens=model.max_batch_tokens, debounce=debounce)
        watcher = Watcher(emb, directories, store_obj, options, listener)
        watcher.start_observing()
        _stop_on_signals(watcher)
        say(f"Store: {store_obj.path}", json_out)
        watcher.run()
    except NomicMemoryError as e:
        raise fail_on(e)
    except KeyboardInterrupt:  # a second Ctrl-C: stopped at once (committed batches stay)
        raise typer.Exit(EXIT_INTERRUPTED)
    say("Stopped: every batch embedded so far is committed", json_out)
    raise typer.Exit(EXIT_OK)


def _stop_on_signals(watcher) -> None:
    """Ctrl-C and SIGTERM stop after the batch in flight is committed; a second Ctrl-C at once."""
    import signal

    def stop(signum, frame) -> None:
        if watcher.stopping and signum == signal.SIGINT:
            raise KeyboardInterrupt
        typer.echo("Stopping after the batch in flight is committed (Ctrl-C again to stop at once)", err=True)
        watcher.stop()

    signal.signal(signal.SIGINT, stop)
    signal.signal(signal.SIGTERM, stop)
