"""Why a page matched: late-interaction heatmaps from the stored vectors.

A ColNomic (ColQwen) row stores one vector per token of the document sequence: the document
prompt's text tokens and, in between, one ``<|image_pad|>`` token per 28 x 28-pixel patch of the
processed image (14-pixel patches merged 2 x 2), in row-major order over that merged grid.  The
processed image's size is known from the row's stored width and height alone
(:func:`nomic_memory.ingest.batching.target_size`), so the map needs no re-embedding and no GPU: it is the
float32 dot products of the query's token vectors with the page's visual-token vectors, reshaped
onto the patch grid.  The score itself is ``sum_i max_j <q_i, d_j>``; the map shows, per patch,
``max_i <q_i, d_j>`` (which patch answers the query best) or one query token's row.

Nomic (BiQwen) rows hold one pooled vector per page: there is nothing per patch to show.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import numpy as np
from PIL import Image

from nomic_memory.errors import SearchError
from nomic_memory.ingest.batching import target_size
from nomic_memory.model.collate import prepare_image


class HeatmapUnavailable(SearchError):
    """This row cannot have a heatmap (a single-vector table, or a layout that does not match)."""


@dataclass(frozen=True)
class Layout:
    """Where a document's visual tokens sit in its stored sequence, and their grid."""

    positions: np.ndarray  # (gh * gw,) indices into the stored vectors, row-major over the grid
    grid: tuple[int, int]  # (gh, gw): merged patches down and across
    size: tuple[int, int]  # (height, width) of the processed image in pixels
    seq_len: int  # stored vectors the document must have


@functools.lru_cache(maxsize=256)
def _layout_cached(processor_key: int, processor, height: int, width: int) -> Layout:
    ip = processor.image_processor
    # a blank image of exactly the processed size: the processor leaves it unresized, and the
    # prompt around the image tokens depends only on the grid
    prepared = prepare_image(processor, Image.new("RGB", (width, height)))
    ids = prepared.input_ids.numpy()
    positions = np.flatnonzero(ids == processor.image_token_id)
    merge = ip.merge_size
    _, gh, gw = (int(x) for x in prepared.image_grid_thw)
    grid = (gh // merge, gw // merge)
    if len(positions) != grid[0] * grid[1]:
        raise HeatmapUnavailable(
            f"the document prompt has {len(positions)} image tokens for a {grid[0]} x {grid[1]} patch grid"
        )
    return Layout(positions, grid, (height, width), int(ids.shape[0]))


def layout(processor, width: int, height: int) -> Layout:
    """The visual-token layout of a page stored with this (original) width and height."""

    if not width or not height:  # an imported row whose source did not record the page size
        raise HeatmapUnavailable("the page's size was not recorded with its embedding, so its patch grid is unknown")
    try:
        h, w = target_size(int(width), int(height), processor.image_processor)
    except ValueError as e:  # an aspect ratio the processor refuses (the page was padded first)
        raise HeatmapUnavailable(f"no patch grid for a {width} x {height} page: {e}") from None
    return _layout_cached(id(processor), processor, int(h), int(w))


def similarity_maps(query: np.ndarray, doc: np.ndarray, lay: Layout) -> np.ndarray:
    """``(query tokens, gh, gw)`` float32: each query token's dot product with each patch."""
    q = np.asarray(query, dtype=np.float32)
    d = np.asarray(doc, dtype=np.float32)
    if q.ndim != 2 or d.ndim != 2:
        raise HeatmapUnavailable("heatmaps need multi-vector (ColNomic) embeddings")
    if d.shape[0] != lay.seq_len:
        raise HeatmapUnavailable(
            f"the stored page has {d.shape[0]} vectors but its document prompt has "
            f"{lay.seq_len} tokens (embedded with other processor settings?)"
        )
    vis = d[lay.positions]  # (gh*gw, dim)
    return (q @ vis.T).reshape(q.shape[0], *lay.grid)


def combine(maps: np.ndarray, query_token: int | None = None) -> np.ndarray:
    """One ``(gh, gw)`` map: the max over query tokens, or one token's map."""
    if query_token is None:
        return maps.max(axis=0)
    if not 0 <= query_token < maps.shape[0]:
        raise IndexError(f"query_token must be in 0..{maps.shape[0] - 1}")
    return maps[query_token]


def colourise(grid_map: np.ndarray, size: tuple[int, int], cmap: str = "inferno") -> Image.Image:
    """The map upsampled (bilinear) to ``size`` = (width, height), min-max normalised, coloured."""
    from matplotlib import colormaps

    m = np.asarray(grid_map, dtype=np.float32)
    lo, hi = float(m.min()), float(m.max())
    norm = (m - lo) / (hi - lo) if hi > lo else np.zeros_like(m)
    up = Image.fromarray(norm.astype(np.float32), mode="F").resize(size, Image.Resampling.BILINEAR)
    rgba = colormaps[cmap](np.clip(np.asarray(up), 0.0, 1.0), bytes=True)
    return Image.fromarray(rgba[..., :3], "RGB")


def overlay(page: Image.Image, grid_map: np.ndarray, alpha: float = 0.55) -> Image.Image:
    """The page (resized to the processed size it was embedded at) with the heatmap blended in."""
    heat = colourise(grid_map, page.size)
    return Image.blend(page.convert("RGB"), heat, alpha)


__all__ = ["Layout", "HeatmapUnavailable", "layout", "similarity_maps", "combine", "colourise", "overlay"]
