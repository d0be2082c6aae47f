"""The original entry point, kept working: ``uv run python main.py DIR [--model-variant ...]``.

It runs ``nomic-memory embed`` with the same options; see ``nomic-memory embed --help``.
"""

from nomic_memory.cli import legacy_main

if __name__ == "__main__":
    legacy_main()
