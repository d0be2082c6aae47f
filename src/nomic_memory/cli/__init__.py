"""The ``nomic-memory`` command line: a thin shell over the library API.

Each command lives in its own module as a plain function; this module assembles them into one
Typer app, explicitly (no registration by import side effect), from a table of command names and
the modules that hold them: a command's module is imported when the command runs or help lists
it, so start-up (``--version``, one ``search``) pays only for what it uses.  ``python -m nomic_memory``,
``python -m nomic_memory.cli``, the ``nomic-memory`` script and ``main.py`` all run this app.

Help is click's plain format (``rich_markup_mode=None``): rich's option table cuts long option
names at 80 columns and shows ``<bool>`` for flags.
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Callable, Iterator, MutableMapping
from typing import Any, Optional

import typer
from typer.core import TyperGroup
from typer.models import CommandInfo

from nomic_memory.cli.common import finish, reports_errors, version_callback

# Every command, in the order ``--help`` lists them: name -> (module, function or sub-app).  A
# command's module is imported only when that command is needed (it runs, or help lists it), so
# ``nomic-memory --version`` or one ``search`` does not import what ``embed`` or ``serve`` need.
COMMANDS: dict[str, tuple[str, str]] = {
    "embed": ("nomic_memory.cli.embed", "embed"),
    "search": ("nomic_memory.cli.search", "search"),
    "serve": ("nomic_memory.cli.serve", "serve"),
    "watch": ("nomic_memory.cli.watch", "watch"),
    "mcp": ("nomic_memory.cli.mcp", "mcp"),
    "export": ("nomic_memory.cli.tools", "export"),
    "import": ("nomic_memory.cli.importing", "import_"),
    "bench": ("nomic_memory.cli.bench", "bench"),
    "plan": ("nomic_memory.cli.bench", "plan"),
    "make-tiny-model": ("nomic_memory.cli.tools", "make_tiny_model"),
    "samples": ("nomic_memory.cli.samples", "samples"),
    "check": ("nomic_memory.cli.check", "check"),
    "store": ("nomic_memory.cli", "store_app"),
    "index": ("nomic_memory.cli", "index_app"),
}


def _build_command(name: str) -> Any:
    """The click command (or group) ``name``, built from its module, imported now.

    Every command reports any NomicMemoryError it did not handle itself as one line (exit 1, or 2
    for a usage error): the one exception root, caught in one place.
    """
    module, attr = COMMANDS[name]
    target = getattr(importlib.import_module(module), attr)
    if isinstance(target, typer.Typer):
        group = typer.main.get_group(target)
        group.name = name
        return group
    info = CommandInfo(name=name, callback=reports_errors(target))
    return typer.main.get_command_from_info(info, pretty_exceptions_short=True, rich_markup_mode=None)


class _LazyCommands(MutableMapping):
    """The top-level group's commands: every name known at once, each command built on first use."""

    def __init__(self, build: Callable[[str], Any]) -> None:
        self._build = build
        self._names = list(COMMANDS)
        self._built: dict[str, Any] = {}

    def __getitem__(self, name: str) -> Any:
        if name not in self._built:
            if name not in self._names:
                raise KeyError(name)
            self._built[name] = self._build(name)
        return self._built[name]

    def __setitem__(self, name: str, command: Any) -> None:
        if name not in self._names:
            self._names.append(name)
        self._built[name] = command

    def __delitem__(self, name: str) -> None:
        self._names.remove(name)
        self._built.pop(name, None)

    def __iter__(self) -> Iterator[str]:
        return iter(list(self._names))

    def __len__(self) -> int:
        return len(self._names)


class _LazyGroup(TyperGroup):
    """Typer's group with the commands of ``COMMANDS``, each imported when first looked up."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        commands = _LazyCommands(_build_command)
        commands.update(kwargs.pop("commands", None) or {})
        super().__init__(*args, commands=commands, **kwargs)


app = typer.Typer(
    cls=_LazyGroup,
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


def __getattr__(name: str) -> typer.Typer:
    """``store_app`` and ``index_app``, the sub-apps, built (and their modules imported) on first use."""
    if name == "store_app":
        return _store_app()
    if name == "index_app":
        return _index_app()
    raise AttributeError(name)


def _group(help: str, commands: dict) -> typer.Typer:
    """A command group (``nomic-memory store ...``): plain help, and its help when named alone.
    Every command reports any NomicMemoryError it did not handle itself as one line (exit 1, or 2
    for a usage error): the one exception root, caught in one place."""
    group = typer.Typer(no_args_is_help=True, rich_markup_mode=None, help=help)
    for name, command in commands.items():
        group.command(name)(reports_errors(command))
    return group


def _store_app() -> typer.Typer:
    # late: only ``store ...`` (or the full help) needs these commands
    from nomic_memory.cli import store as _store

    return _group(
        "Inspect and tidy a store: list tables, drop one, forget a folder, compact.",
        {"list": _store.list_tables, "drop": _store.drop, "forget": _store.forget, "compact": _store.compact},
    )


def _index_app() -> typer.Typer:
    # late: only ``index ...`` (or the full help) needs these commands
    from nomic_memory.cli import index as _index

    return _group(
        "The search index beside each table (kept current by every search).",
        {"rebuild": _index.rebuild, "status": _index.status},
    )


def main() -> None:
    """The ``nomic-memory`` command (the console script and ``python -m nomic_memory.cli``)."""
    try:
        app()
    except SystemExit as e:
        finish(e.code)  # a command may have asked to end without the interpreter's teardown


def legacy_main(argv: list[str] | None = None) -> None:
    """``python main.py DIR [--model-variant ...]``: the original command line and its report
    (the ``embed`` command with the legacy report style)."""
    embed_cmd = _build_command("embed")
    embed_cmd.main(
        args=argv if argv is not None else sys.argv[1:], prog_name="main.py", default_map={"report_style": "legacy"}
    )


__all__ = ["app", "main", "legacy_main"]
