"""Small commands: ``export`` (embeddings to npz/parquet) and ``make-tiny-model`` (offline demos)."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from .common import EXIT_USAGE, KindChoice, fail, setup_logging


def export(
    store: str = typer.Option(..., "--store", help="Store directory or object-storage URI."),
    format: str = typer.Option("npz", "--format", help="npz or parquet."),
    out: Path = typer.Option(..., "--out", help="Output file."),
    table: Optional[str] = typer.Option(None, "--table", help="Table (model) to export, if the store has several."),
    root: Optional[str] = typer.Option(None, "--root", help="Only the images embedded from this directory."),
) -> None:
    """Export embeddings: npz (key = relative path, value = float32 array) or parquet."""
    setup_logging(False)
    from ..export import FORMATS, export_store
    from ..store import StoreError

    if format not in FORMATS:
        raise fail(f"unknown format {format!r}; choose npz or parquet", EXIT_USAGE)
    try:
        n = export_store(store, format, out, table, str(Path(root).resolve()) if root else None)
    except (StoreError, ValueError) as e:
        raise fail(str(e))
    typer.echo(f"Exported {n} images to {out}")


def make_tiny_model(
    out: Path = typer.Argument(..., help="Directory to write the model to."),
    kind: KindChoice = typer.Option("colqwen", "--kind"),
    size: str = typer.Option("tiny", "--size", help="tiny or medium"),
    seed: int = typer.Option(0, "--seed"),
) -> None:
    """Write a small random-weight ColQwen2.5/BiQwen2.5 model (offline demos and tests)."""
    setup_logging(False)
    from ..tiny import build_tiny_model

    build_tiny_model(out, kind.value, size, seed)
    typer.echo(f"Wrote random {size} {kind.value} model to {out} (random weights: for testing only)")
