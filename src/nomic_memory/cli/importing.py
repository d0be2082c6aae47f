"""``nomic-memory import``: bring embeddings computed elsewhere into a store."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import typer

from nomic_memory.cli.common import (
    EXIT_FATAL,
    EXIT_OK,
    EXIT_USAGE,
    VariantChoice,
    fail,
    fail_on,
    index_event_line,
    json_report_option,
    model_name_option,
    number_option,
    plural,
    resolve_store,
    revision_option,
    say,
    seed_option,
    setup_logging,
    store_option,
    value_option,
    verbose_option,
)
from nomic_memory.errors import NomicMemoryError


def import_(
    src: Path = typer.Argument(
        ...,
        metavar="SRC",
        help="A parquet or npz file (this tool's export, or path/page/embedding columns), or a folder of them.",
    ),
    model_variant: Optional[VariantChoice] = typer.Option(
        None, "--model-variant", help="The Nomic model that made the embeddings."
    ),
    model_name: Optional[str] = model_name_option(
        "NAME", "Or: the hub id or local directory of the model that made them."
    ),
    store: Optional[str] = store_option(),
    root: Optional[str] = value_option(
        "--root", "DIR", "The folder the paths are relative to (needed without a root column; replaces it otherwise)."
    ),
    revision: Optional[str] = revision_option(
        "Hub commit of the model that made them (when this machine does not have the model)."
    ),
    seed: int = seed_option("The seed they were made with (fixes a randomly initialised head)."),
    batch_rows: int = number_option(
        128, "--batch-rows", "Rows per store commit (what a killed import can lose).", min=1
    ),
    json_out: bool = json_report_option(),
    verbose: bool = verbose_option("each commit"),
) -> None:
    """Import embeddings computed elsewhere, stamped with the model that made them (checked
    first: a bad file imports nothing; resumable; rows already stored are skipped)."""
    setup_logging(verbose)
    if (model_variant is None) == (model_name is None):
        raise fail("give the model that made the embeddings: --model-variant or --model-name (one of them)", EXIT_USAGE)
    from nomic_memory.run.importing import ImportRefused, import_embeddings  # late: torch, LanceDB (seconds)

    # late, as above; imported for its store commit hook: the rows an import commits to an indexed table are coded by it
    from nomic_memory.search import liveindex  # noqa: F401

    model = model_name or model_variant.value
    try:
        report = import_embeddings(
            src,
            resolve_store(store),
            model,
            root=root,
            revision=revision,
            seed=seed,
            batch_rows=batch_rows,
            on_event=_Progress(json_out, verbose),
        )
    except ImportRefused as e:
        for p in e.problems:
            typer.echo(f"Error: {p}", err=True)
        typer.echo("Nothing was imported.", err=True)
        raise typer.Exit(EXIT_FATAL)
    except NomicMemoryError as e:
        raise fail_on(e)
    for w in report.warnings:
        typer.echo(f"Warning: {w}", err=True)
    say(
        f"Imported {plural(report.imported, 'row')} in {report.seconds:.2f} s ({report.rows_per_second:.0f} "
        f"rows/s); {report.unchanged} unchanged (already in the store)",
        json_out,
    )
    say(f"Store: {report.store} (table {report.table})", json_out)
    if report.imported:
        from nomic_memory.api import retrain_index  # late, as above

        try:
            retrain_index(report.store, report.table, _Progress(json_out, verbose))
        except NomicMemoryError as e:
            raise fail_on(e)
    if json_out:
        typer.echo(json.dumps(report.to_dict()))
    raise typer.Exit(EXIT_OK)


class _Progress:
    """The report's lines before the end: what was found, what was checked, each commit (-v)."""

    def __init__(self, json_out: bool, verbose: bool):
        self.json_out = json_out
        self.verbose = verbose

    def __call__(self, kind: str, data: dict) -> None:
        if kind == "sources":
            if data["ignored"]:
                typer.echo(f"Ignored {plural(data['ignored'], 'file')} that are not .parquet or .npz", err=True)
        elif kind == "checked":
            say(
                f"Checked {plural(data['rows'], 'row')} in {plural(data['files'], 'file')} (stored as "
                f"{data['storage_dtype']})",
                self.json_out,
            )
        elif (msg := index_event_line(kind, data)) is not None:
            say(msg, self.json_out)
        elif kind == "batch" and self.verbose:
            typer.echo(
                f"Committed {data['rows']}/{data['total']} rows ({data['imported']} written, "
                f"{data['unchanged']} unchanged)",
                err=True,
            )
