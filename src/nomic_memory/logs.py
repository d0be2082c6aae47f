"""Quiet third-party logging (without importing torch or transformers: the CLI calls this before
anything heavy, and ``--help``/``plan``/``export`` never import them), and the shapes a run,
an import or a check reports in: progress events and reports as dicts."""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Callable
from typing import Any

#: How a run, an import or a watcher reports progress: ``on_event(kind, data)``, an event's name
#: and its fields.
ProgressCallback = Callable[[str, dict], None]


def report_dict(report: object, names: str, digits: dict[str, int] | None = None, **values: object) -> dict:
    """A report as a JSON-ready dict: the attributes (properties too) in ``names``, space-separated,
    in that order; a name given in ``values`` takes that value instead, and one in ``digits`` is
    rounded to that many decimal places."""
    digits = digits or {}
    out = {}
    for name in names.split():
        value: Any = values[name] if name in values else getattr(report, name)
        out[name] = round(value, digits[name]) if name in digits else value
    return out


def quiet_libraries(*extra: str) -> None:
    """Silence the model libraries' info logging and progress bars (and ``extra`` loggers): a run
    reports through its own progress and report, and Ray workers would print them once per actor.

    Lance and LanceDB log from Rust, configured once at import by ``LANCE_LOG``/``LANCEDB_LOG``
    (a user's own setting wins); transformers reads ``TRANSFORMERS_VERBOSITY`` at import, and is
    quieted directly only if something already imported it."""
    os.environ.setdefault("LANCE_LOG", "error")
    os.environ.setdefault("LANCEDB_LOG", "error")
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    for noisy in ("transformers", "httpx", "huggingface_hub", *extra):
        logging.getLogger(noisy).setLevel(logging.ERROR)
    if "transformers" in sys.modules:
        try:
            from transformers.utils import logging as tlog

            tlog.set_verbosity_error()
            tlog.disable_progress_bar()
        except Exception:
            pass
