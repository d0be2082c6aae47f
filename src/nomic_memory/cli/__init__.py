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


def _commands(group: typer.Typer, commands: dict) -> typer.Typer:
    """Register ``commands`` (name: function) on ``group``.  Every command reports any
    NomicMemoryError it did not handle itself as one line (exit 1, or 2 for a usage error): the
    one exception root, caught in one place."""
    for name, command in commands.items():
        group.command(name)(reports_errors(command))
    return group


def _group(help: str, commands: dict) -> typer.Typer:
    """A command group (``nomic-memory store ...``): plain help, and its help when named alone."""
    return _commands(typer.Typer(no_args_is_help=True, rich_markup_mode=None, help=help), commands)


_commands(
    app,
    {
        "embed": _embed.embed,
        "search": _search.search,
        "serve": _serve.serve,
        "watch": _watch.watch,
        "mcp": _mcp.mcp,
        "export": _tools.export,
        "import": _importing.import_,
        "bench": _bench.bench,
        "plan": _bench.plan,
        "make-tiny-model": _tools.make_tiny_model,
        "samples": _samples.samples,
        "check": _check.check,
    },
)
app.add_typer(
    _group(
        "Inspect and tidy a store: list tables, drop one, forget a folder, compact.",
        {"list": _store.list_tables, "drop": _store.drop, "forget": _store.forget, "compact": _store.compact},
    ),
    name="store",
)
app.add_typer(
    _group(
        "The search index beside each table (kept current by every search).",
        {"rebuild": _index.rebuild, "status": _index.status},
    ),
    name="index",
)


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
