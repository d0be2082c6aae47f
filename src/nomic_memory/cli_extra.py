"""Registers the commands that live in their own modules (search, bench, plan) on the CLI app."""

import importlib

for _mod in ("cli_search", "cli_bench", "cli_serve"):
    try:
        importlib.import_module(f"nomic_memory.{_mod}")
    except ModuleNotFoundError as e:  # not written yet
        if e.name != f"nomic_memory.{_mod}":
            raise
