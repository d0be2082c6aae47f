"""``nomic-memory embed`` (and ``main.py``): embed every image and document under a folder."""

from __future__ import annotations

import json
import sys
from contextlib import contextmanager
from enum import Enum
from pathlib import Path
from typing import Optional

import typer

from nomic_memory.cli.common import (
    EXIT_OK,
    EXIT_PARTIAL,
    MODEL_OPTIONS,
    PROGRESS,
    REVISION,
    SEED,
    VERBOSE,
    EngineChoice,
    ModelOptions,
    fail,
    fail_on,
    index_event_line,
    json_report_option,
    number_option,
    plural,
    say,
    setup_logging,
    store_option,
    takes_model_options,
    value_option,
    workers_option,
)
from nomic_memory.errors import NomicMemoryError, out_of_memory_detail, out_of_memory_kind
from nomic_memory.ingest.documents import is_input_path
from nomic_memory.ingest.images import IMAGE_EXTENSIONS, discover_images
from nomic_memory.model.variants import VARIANTS

RULE = "=" * 50


class ReportStyle(str, Enum):
    """``default``: ``nomic-memory embed``'s terse report.  ``legacy``: the line-by-line report
    ``main.py`` has always printed (model variant, image-only mode, one line per batch, a closing
    block), which scripts may parse."""

    default = "default"
    legacy = "legacy"


class ConsoleProgress:
    """Turns a run's progress events into the lines of the report (and a progress bar).

    Events (``kind``, ``data``): ``discovered``, ``todo``, ``plan``, ``model_loading`` /
    ``model_loaded`` (only when the model is loaded: a run with nothing to do never loads it; it
    loads after the plan, or before it when the table holds another model's rows), ``batch``,
    ``failed``, ``pruned``, ``done``.  Human lines go to stdout, or to stderr under ``--json``
    (stdout then carries the JSON report alone); skipped files always go to stderr.

    The bar (a terminal only) starts once the plan is printed and the model is loaded, so no line
    is ever glued onto it, and lines printed while it runs go through its console.  The legacy
    report keeps ``main.py``'s order (model lines, then ``Found N images``): its discovery lines
    wait for the model lines, or for the plan when there is nothing to embed."""

    def __init__(
        self,
        enabled: bool | None = None,
        *,
        style: ReportStyle = ReportStyle.default,
        json_out: bool = False,
        directory: str | Path | None = None,
        batch_size: int | None = None,
        model: str = "",
    ):
        stream = sys.stderr if json_out else sys.stdout
        if enabled is None:  # the legacy report prints its per-batch lines unless asked for a bar
            enabled = stream.isatty() and style is ReportStyle.default
        self.tty = enabled
        self.style = style
        self.json_out = json_out
        self.directory = directory
        self.batch_size = batch_size
        self.model = model
        self.todo = 0
        self.files = 0
        self.planned = self.loaded = False
        self.held: list[str] | None = [] if style is ReportStyle.legacy else None
        self.bar = None
        self.task = None

    def line(self, msg: str, err: bool = False, style: str | None = None) -> None:
        if self.bar is not None:
            self.bar.console.print(msg, style=style, markup=False, highlight=False)
        else:
            typer.echo(msg, err=err or self.json_out)

    def _report(self, msg: str) -> None:
        """A legacy discovery line: held until the model lines are out (see the class docstring)."""
        if self.held is not None:
            self.held.append(msg)
        else:
            self.line(msg)

    def _release(self) -> None:
        held, self.held = self.held or [], None
        for msg in held:
            self.line(msg)

    # Long: one branch per run event, each printing its line in the two report styles (main.py and embed).
    def __call__(self, kind: str, data: dict) -> None:
        legacy = self.style is ReportStyle.legacy
        if kind == "failed":
            what = "Still failing" if data.get("known") else "Skipped"  # known: remembered, not retried
            self.line(f"{what} {data['path']}: {data['reason']}", err=True, style="yellow")
        elif kind == "model_loading":
            self.line(f"Loading model: {data.get('model_id') or self.model}")
        elif kind == "model_loaded":
            self.loaded = True
            if legacy:
                self.line("Model loaded successfully")
            if data.get("model_id"):
                self.line(
                    f"Model: {data['model_id']} ({data.get('kind')}, {data.get('dim')}-d, "
                    f"revision {data.get('revision')})"
                )
            for note in data.get("notes") or ():
                self.line(note)
            self._release()
            if self.planned:
                self._start_bar()
        elif kind == "discovered":  # images: image files and pages of documents
            self.files = data["count"]
            if legacy:
                inputs = data.get("inputs", data["count"])
                self._report(f"Found {plural(inputs, 'image')} in {self.directory or data.get('directory')}")
        elif kind == "pruned":
            self._report(f"Removed {plural(data['count'], 'row')} of files that no longer exist")
        elif kind == "todo":
            self.todo = data["count"]
            if legacy:
                if data["skipped"]:
                    self._report(f"Skipping {plural(data['skipped'], 'unchanged image')} (already in the store)")
                self._report(f"Processing {plural(data['count'], 'image')} with batch size {self.batch_size}")
            else:
                self.line(todo_line(data, self.files))
        elif kind == "plan":
            self.planned = True
            if not legacy and data["batches"]:
                self.line(
                    f"{plural(data['batches'], 'batch', 'batches')}, padding overhead "
                    f"{100 * data['padding_overhead']:.1f}% of tokens"
                )
            if not data["batches"]:
                self._release()  # nothing to embed: the model will not load
            if self.loaded:
                self._start_bar()
        elif kind == "batch":
            self._release()
            self._start_bar()
            rate = data["embedded"] / data["elapsed"] if data["elapsed"] > 0 else 0.0
            if self.bar is not None:
                self.bar.update(self.task, advance=data["images"], rate=f"{rate:.2f} img/s")
            elif legacy:
                self.line(f"Processing batch {data['index']}/{data['total']} ({plural(data['images'], 'image')})")
            else:
                self.line(
                    f"Processed batch {data['index']}/{data['total']} ({plural(data['images'], 'image')}, "
                    f"{rate:.2f} images/s)"
                )
        elif kind == "done":
            self._release()
            self.close()
        elif (msg := index_event_line(kind, data)) is not None:
            self.line(msg)

    def _start_bar(self) -> None:
        if not self.tty or self.bar is not None or not self.todo:
            return
        from rich.console import Console
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            TextColumn,
            TimeElapsedColumn,
            TimeRemainingColumn,
        )

        self.bar = Progress(
            TextColumn("Embedding"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("{task.fields[rate]}"),
            TimeElapsedColumn(),
            TextColumn("ETA"),
            TimeRemainingColumn(),
            console=Console(stderr=self.json_out),
        )
        self.bar.start()
        self.task = self.bar.add_task("embed", total=self.todo, rate="")

    def close(self) -> None:
        if self.bar is not None:
            self.bar.stop()
            self.bar = None


def todo_line(data: dict, files: int) -> str:
    """``Found 41 images (24 files) to consider: 39 to embed, 0 unchanged (skipped), 1 unreadable,
    1 still failing (remembered)``: the parts add up to the images found."""
    failed, known = data.get("failed", 0), data.get("remembered", 0)
    total = data.get("inputs", data["count"] + data["skipped"] + failed + known)
    line = (
        f"Found {plural(total, 'image')} ({plural(files, 'file')}) to consider: {data['count']} to embed, "
        f"{data['skipped']} unchanged (skipped)"
    )
    if failed:
        line += f", {failed} unreadable"
    if known:
        line += f", {known} still failing (remembered)"
    return line


def legacy_header(model_variant: str, model_name: str | None) -> list[str]:
    """What ``main.py`` prints before choosing the backend."""

    if model_name:
        return [f"Using model: {model_name}"]
    return [f"Using model variant: {model_variant} ({VARIANTS[model_variant].repo_id})"]


def precheck(directory: Path, model: ModelOptions, revision: str | None, prune: bool) -> None:
    """Checked before torch is imported (seconds): a mistyped directory or option fails at once.
    With --prune, a folder that is now empty or gone is fine: its rows are what gets removed."""

    model.check_revision(revision)
    if not directory.exists() and not prune:
        raise fail(f"no such directory: {directory}")
    if directory.exists() and not directory.is_dir():
        raise fail(f"not a directory: {directory}")
    try:
        n_inputs = len(discover_images(directory, match=is_input_path)) if directory.exists() else 0
    except OSError as e:
        raise fail(str(e))
    if n_inputs == 0 and not prune:
        raise fail(f"no images or documents found under {directory} (looked for {' '.join(IMAGE_EXTENSIONS)} .pdf)")


@takes_model_options
def embed(
    directory: Path = typer.Argument(
        ..., metavar="DIRECTORY", help="Directory of images and documents (searched recursively)."
    ),
    model: ModelOptions = MODEL_OPTIONS,
    store: Optional[str] = store_option(),
    prune: bool = typer.Option(False, "--prune", help="Remove rows of files that no longer exist."),
    workers: Optional[int] = workers_option("Decode worker processes (0: inline). With --engine ray: model actors."),
    seed: int = SEED,
    revision: Optional[str] = REVISION,
    engine: EngineChoice = typer.Option("local", "--engine", help="local, or ray for a Ray cluster."),
    ray_address: Optional[str] = value_option(
        "--ray-address",
        "ADDRESS",
        "Ray cluster (auto, HOST:6379, ray://HOST:10001); default: a running one, else a local one started for the run.",
    ),
    gpus_per_worker: float = number_option(
        1.0, "--gpus-per-worker", "GPUs per Ray model actor (CUDA only).", metavar="G"
    ),
    json_out: bool = json_report_option("the final report"),
    progress: Optional[bool] = PROGRESS,
    verbose: bool = VERBOSE,
    report_style: ReportStyle = typer.Option(
        "default", "--report-style", hidden=True, help="legacy: main.py's report."
    ),
) -> None:
    """Embed every image under DIRECTORY into the store (resumable; unchanged files are skipped)."""
    setup_logging(verbose)
    legacy = report_style is ReportStyle.legacy
    precheck(directory, model, revision, prune)
    if legacy:
        for line in legacy_header(model.model_variant.value, model.model_name):
            say(line, json_out)
    ui = ConsoleProgress(
        progress, style=report_style, json_out=json_out, directory=directory, batch_size=model.batch_size
    )
    with out_of_memory_exits(lambda: ui.loaded):
        try:
            emb, store_obj = model.open(store, seed, revision, json_out, legacy)
            if engine == EngineChoice.ray:
                try:
                    import nomic_memory.run.ray_engine  # noqa: F401  (late: ray, an optional extra; sets its environment before ray starts)
                except ImportError as e:
                    raise fail(
                        f"--engine ray needs Ray: install it with `uv sync --extra ray` "
                        f"(or `pip install 'nomic-memory[ray]'`) ({e})"
                    )
            ui.model = emb.resolved.model_id
            report = emb.embed_directory(
                directory,
                store_obj,
                batch_size=model.batch_size,
                max_batch_tokens=model.max_batch_tokens,
                workers=workers,
                prune=prune,
                engine=engine.value,
                ray_address=ray_address,
                gpus_per_worker=gpus_per_worker,
                on_event=ui,
            )
        except NomicMemoryError as e:
            raise fail_on(e)
        finally:
            ui.close()
    saved = emb.loaded.image_only_saved_bytes if emb.is_loaded else 0
    _final_report(report, json_out, saved, style=report_style, backend=emb.backend.name)
    # 3 only for failures this run found: files that failed before and have not changed since are
    # listed ("Still failing (remembered)") but do not fail every rerun.
    raise typer.Exit(EXIT_PARTIAL if report.new_failures else EXIT_OK)


@contextmanager
def out_of_memory_exits(model_loaded):
    """Out of memory outside the encoder's split-and-retry (importing torch under an address-space
    limit, loading the model, decoding, storing) as one line and exit 1, never a traceback."""
    try:
        yield
    except (MemoryError, RuntimeError, OSError, ImportError) as e:
        kind = out_of_memory_kind(e)
        if kind is None:
            raise
        if model_loaded():
            advice = "try a smaller --batch-size or --max-batch-tokens; the batches embedded so far are stored"
            raise fail(f"out of {kind} while embedding ({out_of_memory_detail(e)}): {advice}") from None
        raise fail(
            f"out of {kind} loading the model ({out_of_memory_detail(e)}): free memory, or raise the "
            "memory limit (ulimit -v)"
        ) from None


def summary(report) -> str:
    """``Embedded 97 images in 41.20 s (2.43 images/s); 3 unchanged, 0 skipped with errors``."""
    return (
        f"Embedded {plural(report.embedded, 'image')} in {report.embed_seconds:.2f} s "
        f"({report.images_per_second:.2f} images/s); {report.skipped_unchanged} unchanged, "
        f"{len(report.new_failures)} skipped with errors"
        + (f", {len(report.remembered)} still failing (remembered)" if report.remembered else "")
        + (f", {report.pruned} pruned" if report.pruned else "")
    )


def _final_report(
    report,
    json_out: bool,
    image_only_saved: int = 0,
    *,
    style: ReportStyle = ReportStyle.default,
    backend: str | None = None,
) -> None:
    """The closing lines (stderr under ``--json``), then the JSON document alone on stdout."""

    def out(msg: str) -> None:
        say(msg, json_out)

    rate = f"{report.images_per_second:.2f} images/s"
    if style is ReportStyle.legacy:
        out(RULE)
        out("Processing complete!")
        out(f"Backend: {backend or (report.memory.backend if report.memory else 'unknown')}")
        out(f"Total images processed: {report.embedded}")
        out(f"Total batches: {report.batches}")
        if report.skipped_unchanged:
            out(f"Unchanged images skipped: {report.skipped_unchanged}")
        if report.new_failures:
            out(f"Images skipped with errors: {len(report.new_failures)}")
        if report.remembered:
            out(f"Images still failing (remembered): {len(report.remembered)}")
        if report.pruned:
            out(f"Rows removed (files gone): {report.pruned}")
        out(f"Embedding time: {report.embed_seconds:.2f} s ({rate})")
    else:
        out(summary(report))
    if report.memory is not None:
        for line in report.memory.lines():
            out(line)
    if image_only_saved:
        out(f"Image-only mode saved {image_only_saved / 2**20:.2f} MB of text-embedding weights")
    out(f"Store: {report.store} (table {report.table})")
    if style is ReportStyle.legacy:
        out(RULE)
    if json_out:
        typer.echo(json.dumps(report.to_dict()))
