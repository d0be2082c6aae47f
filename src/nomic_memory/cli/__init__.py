"""The ``nomic-memory`` command line: a thin shell over the library API.

Each command lives in its own module as a plain function; this module assembles them into one
Typer app, explicitly (no registration by import side effect).  ``python -m nomic_memory``,
``python -m nomic_memory.cli``, the ``nomic-memory`` script and ``main.py`` all run this app.

Help is click's plain format (``rich_markup_mode=None``): rich's option table cuts long option
names at 80 columns and shows ``<bool>`` for flags.
"""

from __future__ import annotations

import sys
from typing import Optional

import typer

from nomic_memory.cli import bench as _bench
from nomic_memory.cli import check as _check
from nomic_memory.cli import embed as _embed
from nomic_memory.cli import importing as _importing
from nomic_memory.cli import index as _index
from nomic_memory.cli import mcp as _mcp
from nomic_memory.cli import samples as _samples
from nomic_memory.cli import search as _search
from nomic_memory.cli import serve as _serve
from nomic_memory.cli import store as _store
from nomic_memory.cli import tools as _tools
from nomic_memory.cli import watch as _watch
from nomic_memory.cli.common import reports_errors, version_callback

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    rich_markup_mode=None,
    help="Embed folders of images and documents with Nomic's multimodal retrievers, store and search them.",
)


@app.callback()
def _app_options(
    version: Optional[bool] = typer.Option(
        None, "--version", callback=version_callback, is_eager=True, help="Print the version and exit."
    ),
) -> None:
    """Embed folders of images and documents with Nomic's multimodal retrievers, store and search them."""


# Every command reports any NomicMemoryError it did not handle itself as one line (exit 1, or 2
# for a usage error): the one exception root, caught in one place.
app.command("embed")(reports_errors(_embed.embed))
app.command("search")(reports_errors(_search.search))
app.command("serve")(reports_errors(_serve.serve))
app.command("watch")(reports_errors(_watch.watch))
app.command("mcp")(reports_errors(_mcp.mcp))
app.command("export")(reports_errors(_tools.export))
app.command("import")(reports_errors(_importing.import_))
app.command("bench")(reports_errors(_bench.bench))
app.command("plan")(reports_errors(_bench.plan))
app.command("make-tiny-model")(reports_errors(_tools.make_tiny_model))
app.command("samples")(reports_errors(_samples.samples))
app.command("check")(reports_errors(_check.check))
store_app = typer.Typer(
    no_args_is_help=True,
    rich_markup_mode=None,
    help="Inspect and tidy a store: list tables, drop one, forget a folder, compact.",
)
store_app.command("list")(reports_errors(_store.list_tables))
store_app.command("drop")(reports_errors(_store.drop))
store_app.command("forget")(reports_errors(_store.forget))
store_app.command("compact")(reports_errors(_store.compact))
app.add_typer(store_app, name="store")
index_app = typer.Typer(
    no_args_is_help=True,
    rich_markup_mode=None,
    help="The search index beside each table (kept current by every search).",
)
index_app.command("rebuild")(reports_errors(_index.rebuild))
index_app.command("status")(reports_errors(_index.status))
app.add_typer(index_app, name="index")


def main() -> None:
    app()


def legacy_main(argv: list[str] | None = None) -> None:
    """``python main.py DIR [--model-variant ...]``: the original command line and its report
    (the ``embed`` command with the legacy report style)."""
    cmd = typer.main.get_command(app)
    embed_cmd = getattr(cmd, "commands", {}).get("embed", cmd)
    embed_cmd.main(
        args=argv if argv is not None else sys.argv[1:], prog_name="main.py", default_map={"report_style": "legacy"}
    )


__all__ = ["app", "main", "legacy_main"]
