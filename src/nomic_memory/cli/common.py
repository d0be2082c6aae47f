"""What the commands share: exit statuses, option choices and declarations (the model options
of ``embed`` and ``watch`` among them), error reporting, logging set-up.

Exit statuses (documented in the README):
  0  done (every input embedded, or already up to date)
  3  some inputs were skipped (each reported with its reason); the rest are stored
  1  fatal: no such directory, nothing to embed, model not loadable, unavailable backend, bad store
  2  usage error (bad option)

Imports nothing heavy: ``nomic-memory --help`` must not import torch.
"""

from __future__ import annotations

import functools
import inspect
import logging
import sys
import typing
from dataclasses import dataclass
from enum import Enum
from pathlib import Path
from typing import Any, Optional

import typer
import typer.core

from nomic_memory.errors import ModelLoadError, NomicMemoryError, UsageError
from nomic_memory.logs import quiet_libraries


def _argument_help_type(self, ctx):
    """An argument's help shows its metavar alone (``DIR``), as an option's does; Typer would add
    the Python type (``DIR <path>``, ``query... <list[str]>``)."""
    return None if self.metavar is not None else self.display_type(ctx)


typer.core.TyperArgument.display_type_rich = _argument_help_type

EXIT_OK = 0
EXIT_FATAL = 1
EXIT_USAGE = 2
EXIT_PARTIAL = 3


class VariantChoice(str, Enum):
    colnomic_7b = "colnomic-7b"
    colnomic_3b = "colnomic-3b"
    nomic_7b = "nomic-7b"
    nomic_3b = "nomic-3b"


class BackendChoice(str, Enum):
    auto = "auto"
    cuda = "cuda"
    mps = "mps"
    cpu = "cpu"


class KindChoice(str, Enum):
    colqwen = "colqwen"
    biqwen = "biqwen"


class EngineChoice(str, Enum):
    local = "local"
    ray = "ray"


class DtypeChoice(str, Enum):
    auto = "auto"
    bfloat16 = "bfloat16"
    float16 = "float16"
    float32 = "float32"


class SizeChoice(str, Enum):
    tiny = "tiny"
    medium = "medium"


class ExportFormat(str, Enum):
    npz = "npz"
    parquet = "parquet"


# The same option means the same everywhere: one declaration per shared option.
STORE_HELP = "Store directory or object-storage URI (s3://...). Default: $NOMIC_MEMORY_STORE, else ~/.local/share/nomic-memory/store."


def store_option(help: str = STORE_HELP):
    return typer.Option(None, "--store", metavar="PATH", help=help)


def json_option(help: str = "Print one JSON document on stdout and nothing else (human lines go to stderr)."):
    return typer.Option(False, "--json", help=help)


def table_option(verb: str):
    """``--table NAME``: the one table a command works on, when the store has several."""
    return typer.Option(None, "--table", metavar="NAME", help=f"Table (model) to {verb}, if the store has several.")


def allow_mismatch_option(verb: str):
    return typer.Option(
        False, "--allow-mismatch", help=f"{verb} even if the model's revision/projection differ from the table's."
    )


def json_report_option(what: str = "the report"):
    """``--json`` of a command that ends with a report: the report alone on stdout."""
    return json_option(f"Print {what} as one JSON document on stdout (every other line goes to stderr).")


def verbose_option(what: str = "what happens"):
    return typer.Option(False, "--verbose", "-v", help=f"Log {what} (INFO) on stderr.")


def number_option(default, flag: str, help: str, *, metavar: str = "N", **bounds):
    """``--flag N``: a number, with its bounds (``min``, ``max``) checked before the command runs."""
    return typer.Option(default, flag, metavar=metavar, help=help, **bounds)


def value_option(flag: str, metavar: str, help: str, default=None):
    """``--flag METAVAR``: a value (a list where the parameter is one: the option repeats)."""
    return typer.Option(default, flag, metavar=metavar, help=help)


def model_name_option(metavar: str, help: str):
    return value_option("--model-name", metavar, help)


def revision_option(help: str):
    return value_option("--revision", "REV", help)


def seed_option(help: str):
    return number_option(0, "--seed", help)


def workers_option(help: str):
    return number_option(None, "--workers", help, min=0)


def host_option(help: str):
    return value_option("--host", "ADDRESS", help, default="127.0.0.1")


def port_option(default: int, help: str, metavar: str = "N", envvar: str | None = None):
    return typer.Option(default, "--port", min=0, max=65535, metavar=metavar, envvar=envvar, help=help)


VERBOSE = verbose_option()
DTYPE = typer.Option("auto", "--dtype", help="auto: bf16 on CUDA, fp16 on MPS, fp32 on CPU.")
# Every table, or the one named (the store's housekeeping commands).
TABLE_FILTER = typer.Option(None, "--table", metavar="NAME", help="Only this table (default: all).")
# The query model of the commands that search a table (search, serve, mcp).
QUERY_BACKEND = typer.Option("auto", "--backend", help="Device for the query model (auto: CUDA, MPS, CPU).")
QUERY_MODEL_NAME = model_name_option("PATH", "Load the query model from here instead of the id the table records.")
TEMPLATE = typer.Option(None, "--template", metavar="TEXT", help='Format text queries first, e.g. "Query: {}".')


def resolve_store(store: str | None):
    """``--store``, else the default store (``$NOMIC_MEMORY_STORE`` or the XDG data directory)."""
    from nomic_memory.store.table import default_store_path  # late: pyarrow; the CLI starts without it

    return store or default_store_path()


def plural(n: int, word: str, plural_form: str | None = None) -> str:
    """``1 image``, ``2 images``."""
    return f"{n} {word if n == 1 else (plural_form or word + 's')}"


def say(msg: str = "", json_out: bool = False) -> None:
    """A human line: on stdout, or on stderr when stdout carries the ``--json`` document."""
    typer.echo(msg, err=json_out)


def index_event_line(kind: str, data: dict) -> str | None:
    """The line for a run's or an import's search-index event (a codebook re-trained for a table
    that outgrew it); None for any other event."""
    if kind == "index_retraining":
        return (
            f"Table {data['table']} has {plural(data['rows'], 'row')}: re-training its search index "
            f"({data['before']} -> {data['centroids']} centroids)"
        )
    if kind == "index_retrained":
        return f"Search index re-trained: {plural(data['rows'], 'row')}, {data['centroids']} centroids, {data['seconds']:.1f} s"
    return None


def version_callback(value: bool) -> None:
    if value:
        from importlib.metadata import PackageNotFoundError, version

        try:
            v = version("nomic-memory")
        except PackageNotFoundError:  # running from a source tree that was never installed
            v = "unknown"
        typer.echo(f"nomic-memory {v}")
        raise typer.Exit(EXIT_OK)


_TEARDOWN: dict[str, bool] = {}  # "skip": exit_without_teardown was called in this process


def exit_without_teardown() -> None:
    """Have :func:`finish` end this process without the interpreter's teardown.

    A search in a new process imports torch, transformers and lancedb; unloading them after the
    answer is printed (finalising some 340,000 objects and every module) took 0.6-1.0 s of the
    command's 4-6 s here, all of it after the user has the answer and none of it doing anything a
    finished read-only command needs (the operating system reclaims memory, files and threads)."""
    _TEARDOWN["skip"] = True


def finish(code: Any) -> None:
    """End the process with ``code`` (a ``SystemExit`` code) as Python would, but where
    :func:`exit_without_teardown` was called and only the main Python thread is left: exit
    handlers run (``atexit``, so ``weakref.finalize`` and logging's shutdown), stdout and stderr
    are flushed, then ``os._exit`` (a failed stdout flush, a closed pipe, exits 120 as Python does)."""
    import atexit
    import os
    import threading

    run_exit_handlers = getattr(atexit, "_run_exitfuncs", None)
    if (
        not _TEARDOWN.get("skip")
        or run_exit_handlers is None
        or not (code is None or isinstance(code, int))
        or threading.active_count() > sum(1 for t in threading.enumerate() if t.daemon) + 1
    ):
        raise SystemExit(code)
    code = code or 0
    run_exit_handlers()
    try:
        sys.stdout.flush()
    except (OSError, ValueError):
        code = code or 120
    try:
        sys.stderr.flush()
    except (OSError, ValueError):
        pass
    os._exit(code)


def fail(msg: str, code: int = EXIT_FATAL) -> typer.Exit:
    """Print ``Error: msg`` on stderr; the caller raises the returned ``typer.Exit``."""
    typer.echo(f"Error: {msg}", err=True)
    return typer.Exit(code)


def fail_on(e: BaseException) -> typer.Exit:
    """The one-line report of a :class:`~nomic_memory.errors.NomicMemoryError` (usage errors exit 2)."""

    return fail(error_message(e), EXIT_USAGE if isinstance(e, UsageError) else EXIT_FATAL)


def error_message(e: BaseException) -> str:
    """The library's message, plus the flag that does what it advises (the library names none)."""

    msg = str(e)
    if isinstance(e, ModelLoadError) and "local model directory" in msg and "--model-name" not in msg:
        msg = msg.rstrip(".") + " (--model-name PATH)."
    return msg


def reports_errors(command):
    """Wrap a command so that a :class:`~nomic_memory.errors.NomicMemoryError` it lets through is
    printed as one line with the right exit status, never a traceback (the signature is kept:
    Typer reads the options from it)."""

    @functools.wraps(command)
    def run(*args, **kwargs):
        try:
            return command(*args, **kwargs)
        except NomicMemoryError as e:
            raise fail_on(e) from None

    return run


def setup_logging(verbose: bool) -> None:
    logging.basicConfig(
        level=logging.INFO if verbose else logging.WARNING, format="%(levelname)s %(message)s", stream=sys.stderr
    )

    quiet_libraries("lance", "lancedb")


def check_template(template: str | None) -> None:
    """A ``--template`` must say where the query goes: refused (exit 2) before anything loads."""
    if template is not None and "{}" not in template:
        raise fail(f'--template {template!r} has no {{}} where the query goes (e.g. "Query: {{}}")', EXIT_USAGE)


def open_for_queries(
    opener, store: str | None, table: str | None, backend: BackendChoice, model_name, template, **more
):
    """``opener(store, table, ...)`` (``Index.open``, ``open_page_store``) with the query-model
    options a searching command takes (``--store`` resolved, ``--backend`` as its name)."""
    return opener(resolve_store(store), table, backend=backend.value, model_name=model_name, template=template, **more)


# The model and batching options `embed` and `watch` share: one declaration each.
MODEL_VARIANT = typer.Option("colnomic-7b", "--model-variant", help="Which Nomic model.")
MODEL_NAME = model_name_option("NAME", "Hub id or local directory; overrides --model-variant.")
MODEL_KIND = typer.Option(None, "--model-kind", help="Force the model kind of a custom model.")
BATCH_SIZE = number_option(8, "--batch-size", "Images per batch (at most).", min=1)
MAX_BATCH_TOKENS = number_option(None, "--max-batch-tokens", "Cap on padded visual tokens per batch.", min=1)
BACKEND = typer.Option("auto", "--backend", help="auto picks CUDA, then MPS, then CPU.")
IMAGE_ONLY = typer.Option(False, "--image-only", help="Keep only what image embedding needs (saves memory).")
SEED = seed_option("RNG seed set before loading (fixes any randomly initialised head).")
REVISION = revision_option("Hub revision (branch, tag or commit) of a hub model.")
PROGRESS = typer.Option(None, "--progress/--no-progress", help="Progress bar (default: on a terminal).")


@dataclass(frozen=True)
class ModelOptions:
    """The model and batching options `embed` and `watch` share, as one value (these eight, in
    this order in both commands' help)."""

    model_variant: VariantChoice
    model_name: Optional[str]
    model_kind: Optional[KindChoice]
    batch_size: int
    max_batch_tokens: Optional[int]
    backend: BackendChoice
    image_only: bool
    dtype: DtypeChoice

    def check_revision(self, revision: str | None) -> None:
        """``--revision`` names a hub commit: refused (exit 2) with a local ``--model-name``."""
        if revision is not None and self.model_name is not None and Path(self.model_name).expanduser().is_dir():
            raise fail(
                f"--revision {revision} names a hub revision, but --model-name {self.model_name} is a local "
                "directory (it has no revisions): drop --revision, or pass a hub id",
                EXIT_USAGE,
            )

    def embedder(self, seed: int, revision: str | None):
        """The (lazy) Embedder these options (and ``--seed``, ``--revision``) describe; loads nothing yet."""
        from nomic_memory.api import Embedder  # late: torch (a second); the CLI starts without it

        return Embedder(
            self.model_name or self.model_variant.value,
            backend=self.backend.value,
            dtype=self.dtype.value,
            kind=self.model_kind.value if self.model_kind else None,
            image_only=self.image_only,
            seed=seed,
            revision=revision,
            lazy=True,
        )

    def open(self, store: str | None, seed: int, revision: str | None, json_out: bool, legacy: bool = False):
        """``(embedder, store)``, once the backend lines are printed.  Before any model work: a
        wrong --store must not cost a model load (opening a local store creates its directory, so
        after the backend check, which writes nothing)."""
        from nomic_memory.model.backends import describe  # late: torch (a second); the CLI starts without it
        from nomic_memory.store.table import Store  # late: pyarrow; the CLI starts without it

        emb = self.embedder(seed, revision)
        store_obj = Store(resolve_store(store))
        report_backend(emb.backend, describe(emb.backend), json_out, legacy, self.image_only)
        return emb, store_obj


_MODEL_OPTIONS = {
    "model_variant": MODEL_VARIANT,
    "model_name": MODEL_NAME,
    "model_kind": MODEL_KIND,
    "batch_size": BATCH_SIZE,
    "max_batch_tokens": MAX_BATCH_TOKENS,
    "backend": BACKEND,
    "image_only": IMAGE_ONLY,
    "dtype": DTYPE,
}
# A command's ``model: ModelOptions = MODEL_OPTIONS`` parameter: see takes_model_options.
MODEL_OPTIONS: Any = None


def takes_model_options(command):
    """Typer reads a command's options from its signature: there, ``command``'s ``model``
    parameter becomes the eight options of :class:`ModelOptions`, and the command is called with
    them as one ``ModelOptions``."""
    sig = inspect.signature(command, eval_str=True)
    hints = typing.get_type_hints(ModelOptions)
    group = [
        inspect.Parameter(name, inspect.Parameter.POSITIONAL_OR_KEYWORD, default=option, annotation=hints[name])
        for name, option in _MODEL_OPTIONS.items()
    ]
    params = list(sig.parameters.values())
    at = list(sig.parameters).index("model")

    @functools.wraps(command)
    def run(**kwargs):
        model = ModelOptions(**{name: kwargs.pop(name) for name in _MODEL_OPTIONS})
        return command(model=model, **kwargs)

    run.__signature__ = sig.replace(parameters=params[:at] + group + params[at + 1 :])  # type: ignore[attr-defined]
    return run


def report_backend(be, described: list[str], json_out: bool, legacy: bool, image_only: bool) -> None:
    """The backend lines: ``Auto-detected backend: cpu`` (when auto) and always ``Using backend: cpu``,
    dtype and attention; ``Image-only mode: ...`` in the legacy report."""
    for line in described:
        say(line, json_out)
        if line.startswith("Auto-detected backend:"):
            say(f"Using backend: {be.name}", json_out)
    if legacy:
        say(f"Image-only mode: {image_only}", json_out)
