"""What every command shares: exit statuses, option choices, error reporting, logging set-up.

Exit statuses (documented in the README):
  0  done (every input embedded, or already up to date)
  3  some inputs were skipped (each reported with its reason); the rest are stored
  1  fatal: no such directory, nothing to embed, model not loadable, unavailable backend, bad store
  2  usage error (bad option)

Imports nothing heavy: ``nomic-memory --help`` must not import torch.
"""

from __future__ import annotations

import logging
import sys
from enum import Enum

import typer

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


def fail(msg: str, code: int = EXIT_FATAL) -> typer.Exit:
    """Print ``Error: msg`` on stderr; the caller raises the returned ``typer.Exit``."""
    typer.echo(f"Error: {msg}", err=True)
    return typer.Exit(code)


def fail_on(e: BaseException) -> typer.Exit:
    """The one-line report of a :class:`~nomic_memory.errors.NomicMemoryError` (usage errors exit 2)."""
    from ..errors import UsageError

    return fail(str(e), EXIT_USAGE if isinstance(e, UsageError) else EXIT_FATAL)


def setup_logging(verbose: bool) -> None:
    logging.basicConfig(level=logging.INFO if verbose else logging.WARNING, format="%(levelname)s %(message)s",
                        stream=sys.stderr)
    from ..logs import quiet_libraries

    quiet_libraries("lance", "lancedb")
