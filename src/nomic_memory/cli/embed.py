"""``nomic-memory embed`` (and ``main.py``): embed every image and document under a folder."""

from __future__ import annotations

import json
import sys
from enum import Enum
from pathlib import Path
from typing import Optional

import typer

from .common import (EXIT_OK, EXIT_PARTIAL, EXIT_USAGE, BackendChoice, DtypeChoice, EngineChoice, KindChoice,
                     VariantChoice, error_message, fail, fail_on, plural, say, setup_logging, store_option)

RULE = "=" * 50


class ReportStyle(str, Enum):
    """``default``: ``nomic-memory embed``'s terse report.  ``legacy``: the line-by-line report
    ``main.py`` has always printed (model variant, image-only mode, one line per batch, a closing
    block), which scripts may parse."""

    default = "default"
    legacy = "legacy"


class ConsoleProgress:
    """Turns a run's progress events into the lines of the report (and a progress bar).

    Events (``kind``, ``data``): ``model_loading`` / ``model_loaded`` (only when the model is
    loaded: a run with nothing to do may not load it), ``discovered``, ``todo``, ``plan``,
    ``batch``, ``failed``, ``pruned``, ``done``.  Human lines go to stdout, or to stderr under
    ``--json`` (stdout then carries the JSON report alone); skipped files always go to stderr.
    The bar (a terminal only) starts after the plan line, so no line is ever glued onto it, and
    lines printed while it runs go through its console."""

    def __init__(self, enabled: bool | None = None, *, style: ReportStyle = ReportStyle.default,
                 json_out: bool = False, directory: str | Path | None = None, batch_size: int | None = None,
                 model: str | None = None):
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
        self.bar = None
        self.task = None

    def line(self, msg: str, err: bool = False, style: str | None = None) -> None:
        if self.bar is not None:
            self.bar.console.print(msg, style=style, markup=False, highlight=False)
        else:
            typer.echo(msg, err=err or self.json_out)

    def __call__(self, kind: str, data: dict) -> None:
        legacy = self.style is ReportStyle.legacy
        if kind == "failed":
            self.line(f"Skipped {data['path']}: {data['reason']}", err=True, style="yellow")
        elif kind == "model_loading":
            self.line(f"Loading model: {data.get('model_id') or data.get('model') or self.model}")
        elif kind == "model_loaded":
            if legacy:
                self.line("Model loaded successfully")
            if data.get("model_id"):
                self.line(f"Model: {data['model_id']} ({data.get('kind')}, {data.get('dim')}-d, "
                          f"revision {data.get('revision')})")
            for note in data.get("notes") or ():
                self.line(note)
        elif kind == "discovered":
            if legacy:
                self.line(f"Found {plural(data['count'], 'image')} in {data.get('directory') or self.directory}")
        elif kind == "pruned":
            self.line(f"Removed {plural(data['count'], 'row')} of files that no longer exist")
        elif kind == "todo":
            self.todo = data["count"]
            if legacy:
                if data["skipped"]:
                    self.line(f"Skipping {plural(data['skipped'], 'unchanged image')} (already in the store)")
                self.line(f"Processing {plural(data['count'], 'image')} with batch size {self.batch_size}")
            else:
                total = data["count"] + data["skipped"]
                self.line(f"Found {plural(total, 'image')} to consider: {data['count']} to embed, "
                          f"{data['skipped']} unchanged (skipped)")
        elif kind == "plan":
            if not legacy and data["batches"]:
                self.line(f"{plural(data['batches'], 'batch', 'batches')}, padding overhead "
                          f"{100 * data['padding_overhead']:.1f}% of tokens")
            self._start_bar()
        elif kind == "batch":
            self._start_bar()
            rate = data["embedded"] / data["elapsed"] if data["elapsed"] > 0 else 0.0
            if self.bar is not None:
                self.bar.update(self.task, advance=data["images"], rate=f"{rate:.2f} img/s")
            elif legacy:
                self.line(f"Processing batch {data['index']}/{data['total']} ({plural(data['images'], 'image')})")
            else:
                self.line(f"Processed batch {data['index']}/{data['total']} ({plural(data['images'], 'image')}, "
                          f"{rate:.2f} images/s)")
        elif kind == "done":
            self.close()

    def _start_bar(self) -> None:
        if not self.tty or self.bar is not None or not self.todo:
            return
        from rich.console import Console
        from rich.progress import (BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn,
                                   TimeRemainingColumn)

        self.bar = Progress(TextColumn("Embedding"), BarColumn(), MofNCompleteColumn(),
                            TextColumn("{task.fields[rate]}"), TimeElapsedColumn(),
                            TextColumn("ETA"), TimeRemainingColumn(), console=Console(stderr=self.json_out))
        self.bar.start()
        self.task = self.bar.add_task("embed", total=self.todo, rate="")

    def close(self) -> None:
        if self.bar is not None:
            self.bar.stop()
            self.bar = None


def check_max_batch_tokens(value: int | None, image_processor) -> None:
    """Refuse a ``--max-batch-tokens`` below the visual tokens of one full-size image.

    A batch holds at least one image, so such a cap could not be honoured: every image at the
    processor's pixel budget would make a batch over it (what the user sized the cap for, memory,
    would not be respected).  The largest image the processor produces has
    ``longest_edge / (patch_size * merge_size)**2`` visual tokens (768 for Nomic's models)."""
    if value is None:
        return
    from ..errors import UsageError

    unit = (image_processor.patch_size * image_processor.merge_size) ** 2
    size = image_processor.size
    max_pixels = size.get("longest_edge") if hasattr(size, "get") else size["longest_edge"]
    most = max_pixels // unit
    if value < most:
        raise UsageError(f"--max-batch-tokens {value} is below the {most} visual tokens of one full-size image "
                         f"for this model (images are resized to at most {max_pixels} pixels); a batch holds at "
                         f"least one image: use --max-batch-tokens {most} or more")


def legacy_header(model_variant: str, model_name: str | None) -> list[str]:
    """What ``main.py`` prints before choosing the backend."""
    from ..variants import VARIANTS

    if model_name:
        return [f"Using model: {model_name}"]
    return [f"Using model variant: {model_variant} ({VARIANTS[model_variant].repo_id})"]


def precheck(directory: Path, model_name: str | None, revision: str | None) -> None:
    """Checked before torch is imported (seconds): a mistyped directory or option fails at once."""
    from ..images import discover_images

    if revision is not None and model_name is not None and Path(model_name).expanduser().is_dir():
        raise fail(f"--revision {revision} names a hub revision, but --model-name {model_name} is a local "
                   "directory (it has no revisions): drop --revision, or pass a hub id", EXIT_USAGE)
    if not directory.exists():
        raise fail(f"no such directory: {directory}")
    if not directory.is_dir():
        raise fail(f"not a directory: {directory}")
    try:
        n_images = len(discover_images(directory))
    except OSError as e:
        raise fail(str(e))
    if n_images == 0:
        raise fail(f"no images found under {directory} (looked for .jpg .jpeg .png .bmp .gif .tif .tiff .webp)")


def embed(
    directory: Path = typer.Argument(..., metavar="DIRECTORY", help="Directory of images (searched recursively)."),
    model_variant: VariantChoice = typer.Option("colnomic-7b", "--model-variant", help="Which Nomic model."),
    model_name: Optional[str] = typer.Option(None, "--model-name", metavar="NAME",
                                             help="Hub id or local directory; overrides --model-variant."),
    model_kind: Optional[KindChoice] = typer.Option(None, "--model-kind",
                                                    help="Force the model kind of a custom model."),
    batch_size: int = typer.Option(8, "--batch-size", min=1, metavar="N", help="Images per batch (at most)."),
    max_batch_tokens: Optional[int] = typer.Option(None, "--max-batch-tokens", min=1, metavar="N",
                                                   help="Cap on padded visual tokens per batch."),
    backend: BackendChoice = typer.Option("auto", "--backend", help="auto picks CUDA, then MPS, then CPU."),
    image_only: bool = typer.Option(False, "--image-only",
                                    help="Keep only what image embedding needs (saves memory)."),
    dtype: DtypeChoice = typer.Option("auto", "--dtype",
                                      help="auto: bf16 on CUDA, fp16 on MPS, fp32 on CPU."),
    store: Optional[str] = store_option(),
    prune: bool = typer.Option(False, "--prune", help="Remove rows of files that no longer exist."),
    workers: Optional[int] = typer.Option(None, "--workers", min=0, metavar="N",
                                          help="Decode worker processes (0: inline). With --engine ray: "
                                               "model actors."),
    seed: int = typer.Option(0, "--seed", metavar="N",
                             help="RNG seed set before loading (fixes any randomly initialised head)."),
    revision: Optional[str] = typer.Option(None, "--revision", metavar="REV",
                                           help="Hub revision (branch, tag or commit) of a hub model."),
    engine: EngineChoice = typer.Option("local", "--engine", help="local, or ray for a Ray cluster."),
    ray_address: Optional[str] = typer.Option(None, "--ray-address", metavar="ADDRESS",
                                              help="Ray cluster (auto, HOST:6379, ray://HOST:10001); default: "
                                                   "a running one, else a local one started for the run."),
    gpus_per_worker: float = typer.Option(1.0, "--gpus-per-worker", metavar="G",
                                          help="GPUs per Ray model actor (CUDA only)."),
    json_out: bool = typer.Option(False, "--json", help="Print the final report as one JSON document on "
                                                        "stdout (every other line goes to stderr)."),
    progress: Optional[bool] = typer.Option(None, "--progress/--no-progress",
                                            help="Progress bar (default: on a terminal)."),
    verbose: bool = typer.Option(False, "--verbose", "-v", help="Log what happens (INFO) on stderr."),
    report_style: ReportStyle = typer.Option("default", "--report-style", hidden=True,
                                             help="legacy: main.py's report."),
) -> None:
    """Embed every image under DIRECTORY into the store (resumable; unchanged files are skipped)."""
    setup_logging(verbose)
    legacy = report_style is ReportStyle.legacy
    precheck(directory, model_name, revision)
    if legacy:
        for line in legacy_header(model_variant.value, model_name):
            say(line, json_out)
    from ..backends import BackendUnavailable, describe, select_backend
    from ..errors import NomicMemoryError
    from ..loading import ModelLoadError
    from ..store import Store, StoreError, default_store_path

    try:
        be = select_backend(backend.value, dtype=dtype.value)
    except BackendUnavailable as e:
        raise fail(str(e))
    try:  # before loading the model: a wrong --store must not cost a model load (after the
        # backend check, which writes nothing; opening a local store creates its directory)
        store_path = Store(store or default_store_path())
    except StoreError as e:
        raise fail(str(e))
    report_backend(be, describe(be), json_out, legacy, image_only)
    ui = ConsoleProgress(progress, style=report_style, json_out=json_out, directory=directory,
                         batch_size=batch_size, model=model_name or model_variant.value)
    if engine == EngineChoice.ray:
        try:
            from ..ray_engine import embed_directory_ray
        except ImportError as e:
            raise fail(f"--engine ray needs Ray: install it with `uv sync --extra ray` "
                       f"(or `pip install 'nomic-memory[ray]'`) ({e})")
        try:
            report = embed_directory_ray(
                directory, store_path, model_name=model_name, variant=model_variant.value,
                kind=model_kind.value if model_kind else None, backend=be, batch_size=batch_size,
                image_only=image_only, seed=seed, workers=workers, ray_address=ray_address,
                gpus_per_worker=gpus_per_worker, prune=prune, max_batch_tokens=max_batch_tokens,
                revision=revision, on_event=ui)
        except NomicMemoryError as e:
            raise fail_on(e)
        finally:
            ui.close()
        _final_report(report, json_out, style=report_style, backend=be.name)
        raise typer.Exit(EXIT_PARTIAL if report.failed else EXIT_OK)

    from ..loading import load_model
    from ..pipeline import embed_directory
    from ..variants import VARIANTS

    ui("model_loading", {"model_id": model_name or VARIANTS[model_variant.value].repo_id})
    try:
        lm = load_model(model_name, model_variant.value if model_name is None else None, backend=be,
                        kind=model_kind.value if model_kind else None, image_only=image_only, seed=seed,
                        revision=revision)
    except ModelLoadError as e:
        raise fail(error_message(e))
    ui("model_loaded", {"model_id": lm.model_id, "kind": lm.kind, "dim": lm.dim, "revision": lm.revision,
                        "notes": list(lm.notes)})
    try:
        report = embed_directory(lm, directory, store_path, batch_size=batch_size, max_batch_tokens=max_batch_tokens,
                                 workers=workers, prune=prune, seed=seed, on_event=ui)
    except StoreError as e:
        raise fail(str(e))
    finally:
        ui.close()
    _final_report(report, json_out, lm.image_only_saved_bytes, style=report_style, backend=be.name)
    raise typer.Exit(EXIT_PARTIAL if report.failed else EXIT_OK)


def report_backend(be, described: list[str], json_out: bool, legacy: bool, image_only: bool) -> None:
    """The backend lines: ``Auto-detected backend: cpu`` (when auto) and always ``Using backend: cpu``,
    dtype and attention; ``Image-only mode: ...`` in the legacy report."""
    for line in described:
        say(line, json_out)
        if line.startswith("Auto-detected backend:"):
            say(f"Using backend: {be.name}", json_out)
    if legacy:
        say(f"Image-only mode: {image_only}", json_out)


def _final_report(report, json_out: bool, image_only_saved: int = 0, *,
                  style: ReportStyle = ReportStyle.default, backend: str | None = None) -> None:
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
        if report.failed:
            out(f"Files skipped with errors: {len(report.failed)}")
        if report.pruned:
            out(f"Rows removed (files gone): {report.pruned}")
        out(f"Embedding time: {report.embed_seconds:.2f} s ({rate})")
    else:
        out(f"Embedded {plural(report.embedded, 'image')} in {report.embed_seconds:.2f} s ({rate}); "
            f"{report.skipped_unchanged} unchanged, {len(report.failed)} skipped with errors"
            + (f", {report.pruned} pruned" if report.pruned else ""))
    if report.memory is not None:
        for line in report.memory.lines():
            out(line)
    if image_only_saved:
        out(f"Image-only mode saved {image_only_saved / 2**20:.2f} MB of text-embedding weights")
    if report.failed:
        typer.echo(f"Skipped files ({len(report.failed)}):", err=True)
        for p, r in report.failed:
            typer.echo(f"  {p}: {r}", err=True)
    out(f"Store: {report.store} (table {report.table})")
    if style is ReportStyle.legacy:
        out(RULE)
    if json_out:
        typer.echo(json.dumps(report.to_dict()))
