"""Quiet third-party logging (without importing torch or transformers: the CLI calls this before
anything heavy, and ``--help``/``plan``/``export`` never import them)."""

from __future__ import annotations

import logging
import os
import sys


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
