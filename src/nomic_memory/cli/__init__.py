"""The ``nomic-memory`` command line: a thin shell over the library API.

Each command lives in its own module as a plain function; this module assembles them into one
Typer app, explicitly (no registration by import side effect).  ``python -m nomic_memory``,
``python -m nomic_memory.cli``, the ``nomic-memory`` script and ``main.py`` all run this app.
"""

from __future__ import annotations

import sys

import typer

from . import bench as _bench
from . import embed as _embed
from . import search as _search
from . import serve as _serve
from . import tools as _tools

app = typer.Typer(add_completion=False, no_args_is_help=True,
                  help="Embed folders of images and documents with Nomic's multimodal retrievers, "
                       "store and search them.")
app.command("embed")(_embed.embed)
app.command("search")(_search.search)
app.command("serve")(_serve.serve)
app.command("export")(_tools.export)
app.command("bench")(_bench.bench)
app.command("plan")(_bench.plan)
app.command("make-tiny-model")(_tools.make_tiny_model)


def main() -> None:
    app()


def legacy_main(argv: list[str] | None = None) -> None:
    """``python main.py DIR [--model-variant ...]``: the original command line, unchanged."""
    cmd = typer.main.get_command(app)
    embed_cmd = getattr(cmd, "commands", {}).get("embed", cmd)
    embed_cmd.main(args=argv if argv is not None else sys.argv[1:], prog_name="main.py")


__all__ = ["app", "main", "legacy_main"]
