"""Embedding runs: the driver (plan, executor, store sink) and its executors (this machine, Ray)."""
