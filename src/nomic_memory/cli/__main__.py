"""``python -m nomic_memory.cli ...``: the same as the ``nomic-memory`` command."""

from nomic_memory.cli import main

main()
