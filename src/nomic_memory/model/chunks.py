"""The lean forward's working-set bounds, per backend: the forward runs in calls of at most this
much work (encode.py), and the memory planner (plan.py) predicts the peak from the same numbers.

Imports nothing: the planner must not import torch.
"""

# The vision tower runs a batch's images in
# chunks of at most VISION patches (whole images; at least one image per chunk), the language
# model runs groups of rows of at most LM tokens (whole rows), each decoder layer's MLP at most
# MLP tokens at a time.  On accelerators the chunks are large (big matrix products keep the GPU
# busy); on the CPU one page at a time is both the fastest (the working set stays in cache: a
# batch of 8 pages through the medium model's text layers took 1.9 s in one call and 1.65 s as
# 8 calls on the development machine) and the smallest.
CHUNKS = {"cpu": (4096, 1024, 1024), "default": (8192, 8192, 4096)}


def chunk_limits(backend: str) -> tuple[int, int, int]:
    """``(vision patches, language-model tokens, MLP tokens)`` per call on ``backend``."""
    return CHUNKS.get(backend, CHUNKS["default"])


__all__ = ["CHUNKS", "chunk_limits"]
