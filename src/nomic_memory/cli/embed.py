"""``nomic-memory embed`` (and ``main.py``): embed every image and document under a folder."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Optional

import typer

from .common import (EXIT_OK, EXIT_PARTIAL, BackendChoice, DtypeChoice, EngineChoice, KindChoice, VariantChoice,
                     fail, fail_on, setup_logging)


class ConsoleProgress:
    """A rich progress bar on a terminal; the original per-batch lines otherwise."""

    def __init__(self, enabled: bool | None = None):
        self.tty = sys.stdout.isatty() if enabled is None else enabled
        self.model = ""
        self.bar = None
        self.task = None

    def __call__(self, kind: str, data: dict) -> None:
        if kind == "failed":
            msg = f"Skipped {data['path']}: {data['reason']}"
            if self.bar is not None:
                self.bar.console.print(msg, style="yellow")
            else:
                typer.echo(msg, err=True)
        elif kind == "todo":
            typer.echo(f"Found {data['count'] + data['skipped']} images to consider: {data['count']} to embed, "
                       f"{data['skipped']} unchanged (skipped)")
            if self.tty and data["count"]:
                from rich.progress import (BarColumn, MofNCompleteColumn, Progress, TextColumn,
                                           TimeElapsedColumn, TimeRemainingColumn)

                self.bar = Progress(TextColumn("Embedding"), BarColumn(), MofNCompleteColumn(),
                                    TextColumn("{task.fields[rate]}"), TimeElapsedColumn(),
                                    TextColumn("ETA"), TimeRemainingColumn())
                self.bar.start()
                self.task = self.bar.add_task("embed", total=data["count"], rate="")
        elif kind == "model_loading":
            typer.echo(f"Loading model: {self.model}")
        elif kind == "model_loaded":
            if "model_id" in data:
                typer.echo(f"Model: {data['model_id']} ({data['kind']}, {data['dim']}-d, revision {data['revision']})")
            for note in data.get("notes", []):
                typer.echo(note)
        elif kind == "plan":
            typer.echo(f"{data['batches']} batches, padding overhead {100 * data['padding_overhead']:.1f}% of tokens")
        elif kind == "batch":
            rate = data["embedded"] / data["elapsed"] if data["elapsed"] > 0 else 0.0
            if self.bar is not None:
                self.bar.update(self.task, advance=data["images"], rate=f"{rate:.2f} img/s")
            else:
                typer.echo(f"Processed batch {data['index']}/{data['total']} ({data['images']} images, "
                           f"{rate:.2f} images/s)")
        elif kind == "done":
            self.close()

    def close(self) -> None:
        if self.bar is not None:
            self.bar.stop()
            self.bar = None


def embed(
    directory: Path = typer.Argument(..., help="Directory of images (searched recursively)."),
    model_variant: VariantChoice = typer.Option("colnomic-7b", "--model-variant", help="Which Nomic model."),
    model_name: Optional[str] = typer.Option(None, "--model-name", help="Hub id or local directory; overrides --model-variant."),
    model_kind: Optional[KindChoice] = typer.Option(None, "--model-kind", help="Force the model kind of a custom model."),
    batch_size: int = typer.Option(8, "--batch-size", min=1, help="Images per batch (at most)."),
    max_batch_tokens: Optional[int] = typer.Option(None, "--max-batch-tokens", min=1, help="Cap on padded tokens per batch."),
    backend: BackendChoice = typer.Option("auto", "--backend", help="auto picks CUDA, then MPS, then CPU."),
    image_only: bool = typer.Option(False, "--image-only", help="Keep only what image embedding needs (saves memory)."),
    dtype: DtypeChoice = typer.Option("auto", "--dtype", help="auto: bf16 on CUDA, fp16 on MPS, fp32 on CPU."),
    store: Optional[str] = typer.Option(None, "--store", help="Store directory or object-storage URI (s3://...; default: see README)."),
    prune: bool = typer.Option(False, "--prune", help="Remove rows of files that no longer exist."),
    workers: Optional[int] = typer.Option(None, "--workers", min=0, help="Decode worker processes (0: inline). With --engine ray: model actors."),
    seed: int = typer.Option(0, "--seed", help="RNG seed set before loading (fixes any randomly initialised head)."),
    revision: Optional[str] = typer.Option(None, "--revision", help="Hub revision (branch, tag or commit)."),
    engine: EngineChoice = typer.Option("local", "--engine", help="local, or ray for a Ray cluster."),
    ray_address: Optional[str] = typer.Option(None, "--ray-address", help="Ray cluster address (auto, ray://host:10001); default starts a local cluster."),
    gpus_per_worker: float = typer.Option(1.0, "--gpus-per-worker", help="GPUs per Ray model actor (CUDA only)."),
    json_out: bool = typer.Option(False, "--json", help="Print the final report as JSON."),
    progress: Optional[bool] = typer.Option(None, "--progress/--no-progress", help="Progress bar (default: on a terminal)."),
    verbose: bool = typer.Option(False, "--verbose", "-v"),
) -> None:
    """Embed every image under DIRECTORY into the store (resumable; unchanged files are skipped)."""
    setup_logging(verbose)
    from ..images import discover_images

    # Checked before torch is imported (seconds): a mistyped directory fails at once.
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
    from ..api import Embedder
    from ..backends import describe
    from ..errors import NomicMemoryError
    from ..store import Store, default_store_path

    ui = ConsoleProgress(progress)
    try:
        emb = Embedder(model_name or model_variant.value, backend=backend.value, dtype=dtype.value,
                       kind=model_kind.value if model_kind else None, image_only=image_only, seed=seed,
                       revision=revision, lazy=True)
        # Before any model work: a wrong --store must not cost a model load (opening a local
        # store creates its directory, so after the backend check, which writes nothing).
        store_obj = Store(store or default_store_path())
        for line in describe(emb.backend):
            typer.echo(line)
        if engine == EngineChoice.ray:
            try:
                import nomic_memory.ray_engine  # noqa: F401
            except ImportError as e:
                raise fail(f"--engine ray needs Ray: install it with `uv sync --extra ray` "
                           f"(or `pip install 'nomic-memory[ray]'`) ({e})")
        ui.model = emb.resolved.model_id
        report = emb.embed_directory(directory, store_obj, batch_size=batch_size, max_batch_tokens=max_batch_tokens,
                                     workers=workers, prune=prune, engine=engine.value, ray_address=ray_address,
                                     gpus_per_worker=gpus_per_worker, on_event=ui)
    except NomicMemoryError as e:
        raise fail_on(e)
    finally:
        ui.close()
    saved = emb.loaded.image_only_saved_bytes if emb.is_loaded else 0
    _final_report(report, json_out, saved)
    raise typer.Exit(EXIT_PARTIAL if report.failed else EXIT_OK)


def _final_report(report, json_out: bool, image_only_saved: int = 0) -> None:
    typer.echo(f"Embedded {report.embedded} images in {report.embed_seconds:.2f} s "
               f"({report.images_per_second:.2f} images/s); {report.skipped_unchanged} unchanged, "
               f"{len(report.failed)} skipped with errors" + (f", {report.pruned} pruned" if report.pruned else ""))
    if report.memory is not None:
        for line in report.memory.lines():
            typer.echo(line)
    if image_only_saved:
        typer.echo(f"Image-only mode saved {image_only_saved / 2**20:.2f} MB of text-embedding weights")
    if report.failed:
        typer.echo(f"Skipped files ({len(report.failed)}):", err=True)
        for p, r in report.failed:
            typer.echo(f"  {p}: {r}", err=True)
    typer.echo(f"Store: {report.store} (table {report.table})")
    if json_out:
        typer.echo(json.dumps(report.to_dict()))
