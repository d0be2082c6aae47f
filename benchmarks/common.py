"""What the benchmarks share: the CLI as a subprocess (offline, the tiny model on the CPU), a tiny
model built once, distinct text queries, and integer size options.

A benchmark imports it as ``common`` (``python benchmarks/x.py`` puts this folder on the path);
importing it also puts the source tree on the path, so an unsynced checkout measures its own code.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))

# No model download, no tokenizer threads fighting the measured work.
OFFLINE = {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}

WORDS = (
    "invoice revenue table chart scanned letter contract receipt diagram map signature photo page "
    "quarterly annual report budget summary figure caption title total amount date address"
).split()


def cli_env() -> dict[str, str]:
    """This process's environment, offline."""
    return {**os.environ, **OFFLINE}


def cli(command: str, *args: object) -> list[str]:
    """The argv of ``nomic-memory COMMAND ARGS...`` run by this interpreter."""
    return [sys.executable, "-m", "nomic_memory.cli", command, *map(str, args)]


def on_cpu(store: Path | str, model: Path | str) -> list[str]:
    """The options of a run that embeds with a local model on the CPU into ``store``."""
    return ["--store", str(store), "--model-name", str(model), "--backend", "cpu"]


def tiny_model(path: Path, size: str = "tiny") -> Path:
    """A random-weight ColQwen model of ``size`` at ``path``, built the first time only."""
    if not (path / "config.json").exists():
        from nomic_memory.model.tiny import build_tiny_model

        build_tiny_model(path, "colqwen", size)
    return path


def queries(n: int, seed: int = 0) -> list[str]:
    """``n`` distinct short text queries of varied lengths (2-6 words, then the query's number)."""
    rng = np.random.default_rng(seed)
    return [" ".join(rng.choice(WORDS, size=int(rng.integers(2, 7)))) + f" {i}" for i in range(n)]


def size_options(ap: argparse.ArgumentParser, **defaults: float) -> None:
    """One ``--name`` option per keyword (``batch_size=8`` -> ``--batch-size``, default 8), parsed
    as the default's type: the sizes, counts and durations a benchmark is run with."""
    for name, default in defaults.items():
        ap.add_argument("--" + name.replace("_", "-"), type=type(default), default=default)
