"""Counting each image's visual tokens from its size, and grouping images into batches.

Token counts are known before any pixel is decoded (the processor's resize depends only on the
image's size), so a run plans every batch up front: images of similar token counts go together
(padding is compute and memory spent on nothing), capped by images and by padded tokens.
"""

from __future__ import annotations

from nomic_memory.errors import UsageError

# Batches are cut so that none pads more than this fraction of its tokens (make_batches).
MAX_PADDING = 0.05


def visual_tokens(width: int, height: int, image_processor) -> int:
    """Visual tokens the processor will produce for an image of this size (known before decoding)."""
    h, w = target_size(width, height, image_processor)
    merge = image_processor.merge_size
    patch = image_processor.patch_size
    return (h // patch // merge) * (w // patch // merge)


def target_size(width: int, height: int, image_processor) -> tuple[int, int]:
    """(height, width) the processor resizes an image to."""
    from transformers.models.qwen2_vl.image_processing_qwen2_vl import smart_resize

    size = image_processor.size
    min_px = size.get("shortest_edge") if hasattr(size, "get") else size["shortest_edge"]
    max_px = size.get("longest_edge") if hasattr(size, "get") else size["longest_edge"]
    factor = image_processor.patch_size * image_processor.merge_size
    return smart_resize(height, width, factor=factor, min_pixels=min_px, max_pixels=max_px)


def check_max_batch_tokens(value: int | None, image_processor) -> None:
    """Refuse a ``--max-batch-tokens`` below the visual tokens of one full-size image.

    A batch holds at least one image, so such a cap could not be honoured: every image at the
    processor's pixel budget would make a batch over it (what the user sized the cap for, memory,
    would not be respected).  The largest image the processor produces has
    ``longest_edge / (patch_size * merge_size)**2`` visual tokens (768 for Nomic's models)."""
    if value is None:
        return

    unit = (image_processor.patch_size * image_processor.merge_size) ** 2
    size = image_processor.size
    max_pixels = size.get("longest_edge") if hasattr(size, "get") else size["longest_edge"]
    most = max_pixels // unit
    if value < most:
        raise UsageError(
            f"max_batch_tokens (--max-batch-tokens) {value} is below the {most} visual tokens of "
            f"one full-size image for this model (images are resized to at most {max_pixels} "
            f"pixels); a batch holds at least one image: use {most} or more"
        )


def make_batches(
    token_counts: list[int],
    batch_size: int,
    max_batch_tokens: int | None = None,
    sort: bool = True,
    max_padding: float | None = None,
) -> list[list[int]]:
    """Group item indices into batches of similar token counts.

    Sorting by length and cutting greedily keeps padding near zero (padding is compute and
    memory spent on nothing); each batch holds at most ``batch_size`` items and, when given, at
    most ``max_batch_tokens`` padded tokens (``len(batch) * longest``).

    With ``max_padding`` (a fraction, e.g. 0.05) the sorted items are instead cut where no batch
    pads more than that fraction of its tokens, with as few batches as that allows (and, among
    those, the least padding): a folder of icons, phone snaps and page scans then never pads an
    icon to a page's 768 tokens just because the batch had room.
    """
    order = (
        sorted(range(len(token_counts)), key=lambda i: (token_counts[i], i)) if sort else list(range(len(token_counts)))
    )
    if sort and max_padding is not None:
        return _batches_within_padding(order, token_counts, batch_size, max_batch_tokens, max_padding)
    batches: list[list[int]] = []
    cur: list[int] = []
    longest = 0
    for i in order:
        n = token_counts[i]
        new_longest = max(longest, n)
        if cur and (len(cur) >= batch_size or (max_batch_tokens and new_longest * (len(cur) + 1) > max_batch_tokens)):
            batches.append(cur)
            cur, new_longest = [], n
        cur.append(i)
        longest = new_longest
    if cur:
        batches.append(cur)
    return batches


def _batches_within_padding(
    order: list[int], counts: list[int], batch_size: int, max_batch_tokens: int | None, max_padding: float
) -> list[list[int]]:
    """Optimal cut of the sorted ``order`` into contiguous batches (dynamic programming over the
    prefix length): fewest batches such that every batch has at most ``max_padding`` padding,
    ``batch_size`` items and ``max_batch_tokens`` padded tokens; ties broken by least padding."""
    t = [counts[i] for i in order]
    n = len(t)
    prefix = [0] * (n + 1)
    for k, v in enumerate(t):
        prefix[k + 1] = prefix[k] + v
    INF = (float("inf"), float("inf"))
    best: list[tuple[float, float]] = [INF] * (n + 1)
    cut = [0] * (n + 1)
    best[0] = (0, 0)
    for j in range(1, n + 1):
        longest = t[j - 1]  # sorted: the batch's last item is its longest
        for i in range(j - 1, max(-1, j - 1 - batch_size), -1):
            size = j - i
            padded = size * longest
            if size > 1:
                if max_batch_tokens and padded > max_batch_tokens:
                    break
                if padded and (padded - (prefix[j] - prefix[i])) > max_padding * padded:
                    break  # adding smaller items only pads more
            cand = (best[i][0] + 1, best[i][1] + padded - (prefix[j] - prefix[i]))
            if cand < best[j]:
                best[j], cut[j] = cand, i
    batches: list[list[int]] = []
    j = n
    while j > 0:
        i = cut[j]
        batches.append(order[i:j])
        j = i
    return batches[::-1]


def padding_overhead(token_counts: list[int], batches: list[list[int]]) -> float:
    """Fraction of processed tokens that are padding."""
    real = sum(token_counts[i] for b in batches for i in b)
    padded = sum(len(b) * max(token_counts[i] for i in b) for b in batches)
    return 0.0 if padded == 0 else (padded - real) / padded
