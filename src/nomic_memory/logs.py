"""Quiet third-party logging (without importing torch: the CLI calls this before anything heavy)."""

from __future__ import annotations

import logging


def quiet_libraries(*extra: str) -> None:
    """Silence the model libraries' info logging and progress bars (and ``extra`` loggers): a run
    reports through its own progress and report, and Ray workers would print them once per actor."""
    for noisy in ("transformers", "httpx", "huggingface_hub", *extra):
        logging.getLogger(noisy).setLevel(logging.ERROR)
    try:
        from transformers.utils import logging as tlog

        tlog.set_verbosity_error()
        tlog.disable_progress_bar()
    except Exception:
        pass
