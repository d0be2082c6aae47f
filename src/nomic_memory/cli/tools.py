"""Small commands: ``export`` (embeddings to npz/parquet) and ``make-tiny-model`` (offline demos)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import typer

from nomic_memory.cli.common import (
    ExportFormat,
    KindChoice,
    SizeChoice,
    fail,
    json_option,
    resolve_store,
    say,
    setup_logging,
    store_option,
    table_option,
)


def export(
    store: Optional[str] = store_option(),
    format: ExportFormat = typer.Option(
        "npz", "--format", help="npz (key = relative path, float32 array) or parquet (the table, float32 embeddings)."
    ),
    out: Path = typer.Option(..., "--out", metavar="FILE", help="Output file."),
    table: Optional[str] = table_option("export"),
    root: Optional[str] = typer.Option(
        None, "--root", metavar="DIR", help="Only the images embedded from this directory."
    ),
    json_out: bool = json_option(),
) -> None:
    """Export embeddings: npz (key = relative path, value = float32 array) or parquet."""
    setup_logging(False)
    from nomic_memory.store.export import export_store_table  # late: pyarrow; the CLI starts without it
    from nomic_memory.store.table import StoreError  # late: pyarrow; the CLI starts without it

    location = resolve_store(store)
    try:
        n, table = export_store_table(
            location, format.value, out, table, str(Path(root).expanduser().resolve()) if root else None
        )
    except (StoreError, ValueError) as e:
        raise fail(str(e))
    if json_out:
        typer.echo(
            json.dumps({"exported": n, "out": str(out), "format": format.value, "store": str(location), "table": table})
        )
    else:
        # Written to stderr when the export itself goes to standard output.
        say(f"Exported {n} {'image' if n == 1 else 'images'} to {out}", json_out=_is_stdout(out))


def _is_stdout(out: Path) -> bool:
    import os

    try:
        return os.path.samefile(out, "/dev/stdout")
    except (OSError, ValueError):
        return False


def make_tiny_model(
    out: Path = typer.Argument(..., metavar="DIR", help="Directory to write the model to."),
    kind: KindChoice = typer.Option("colqwen", "--kind", help="colqwen (multi-vector) or biqwen (one vector)."),
    size: SizeChoice = typer.Option("tiny", "--size", help="tiny (a few hundred kB) or medium."),
    seed: int = typer.Option(0, "--seed", metavar="N", help="RNG seed of the random weights."),
    json_out: bool = json_option(),
) -> None:
    """Write a small random-weight ColQwen2.5/BiQwen2.5 model (offline demos and tests)."""
    setup_logging(False)
    from nomic_memory.model.tiny import build_tiny_model  # late: torch (a second); the CLI starts without it

    build_tiny_model(out, kind.value, size.value, seed)
    if json_out:
        typer.echo(json.dumps({"path": str(out), "kind": kind.value, "size": size.value, "seed": seed}))
    else:
        say(f"Wrote random {size.value} {kind.value} model to {out} (random weights: for testing only)")
