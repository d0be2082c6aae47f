"""The first stage of a search: a compact index that proposes candidates, which are then scored
exactly from the stored vectors.

Multi-vector (ColQwen) tables: **centroid codes with inverted lists**, the candidate generation
of PLAID/WARP.  A codebook of ``K`` centroids is trained on a sample of the table's vectors
(two-level k-means: ``coarse`` x ``fine`` centroids, so that assigning a vector costs
``coarse + fine`` dot products instead of ``K``).  Each page is represented by the *set* of
centroids its vectors fall in (patches recur on a page, so a 750-vector page has a few hundred
distinct codes: 2 bytes each), and each centroid lists the pages that use it.  A query token
scores every centroid (one ``(T, 128) @ (128, K)`` matmul), walks the inverted lists of its
``probe`` best centroids and gives each page it meets the best centroid score it has there; a
page it does not meet gets the ``probe``-th score (an upper bound of what it would have got).
The sum over query tokens approximates MaxSim; the best ``1.5 x depth`` pages (at most ``refine``)
are then scored by their full code sets (no imputation) and the best ``depth`` of those go to the
exact re-rank.

Everything here is numpy on arrays that can be memory-mapped (the query's one matmul runs on
torch, as the exact scorer's do); :mod:`nomic_memory.search.liveindex` keeps such an index beside
each table, current with every write.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass, replace

import numpy as np

from nomic_memory.threads import CountedSetting


@dataclass(frozen=True)
class Settings:
    """What an index is built with; changing them needs ``nomic-memory index rebuild``."""

    coarse: int = 128  # first-level k-means centroids
    fine: int = 128  # second-level centroids inside each first-level one (K = coarse * fine)
    train_vectors: int = 400_000  # sample the codebook is trained on
    iters: int = 8  # k-means iterations per level
    probe: int = 16  # centroids whose pages a query token visits
    refine: int = 500  # pages re-scored with their full code sets (at most; see REFINE_PER_DEPTH)
    depth: int = 100  # pages re-ranked exactly (per query)
    grow_from: int = 50_000  # rows from which the codebook has 4x the centroids, 16x from 8x as many (sized_for)

    @property
    def n_centroids(self) -> int:
        return self.coarse * self.fine

    def sized_for(self, rows: int) -> Settings:
        """These settings with the codebook sized for a table of ``rows`` rows: from
        :attr:`grow_from` rows twice the coarse and twice the fine centroids (65,536 by default:
        codes still fit 16 bits), from 8x :attr:`grow_from` twice again (262,144: 32-bit codes),
        trained on 16 sample vectors per centroid.  A fixed codebook serves a growing table
        worse and worse: its centroids' inverted lists lengthen and the pages in one list look
        alike to the first stage.  Measured on structured page embeddings (BENCHMARKS.md):
        100,000 pages, 50 queries, candidate recall@10 0.73 / 0.87 (depth 100 / 200) with 16,384
        centroids, 0.94 / 1.00 with 65,536, 0.99 / 0.99 with 262,144 (4.6 KB per page, 11 minutes
        to build there); 1,000,000 pages, 0.18 / 0.25 with 16,384, 0.62 / 0.76 with 65,536,
        0.84 / 0.93 with 262,144.
        Applied to an index's *base* settings when it is built (the stored settings are the
        sized ones)."""
        steps = 0 if rows < self.grow_from else 1 if rows < 8 * self.grow_from else 2
        if steps == 0:
            return self
        bigger = replace(self, coarse=self.coarse << steps, fine=self.fine << steps)
        return replace(bigger, train_vectors=max(self.train_vectors, 16 * bigger.n_centroids))

    def depth_for(self, pages: int, pages_per_list: float | None = None) -> int:
        """Pages re-ranked exactly in a table of ``pages`` rows whose code index puts
        ``pages_per_list`` pages on an inverted list on average (its postings over its
        centroids).

        The exact top 10 are close neighbours, and what the code scores confuse them with are
        the pages that share their centroids: so the depth follows the pages per list,
        :data:`DEPTH_PER_LIST_PAGE` of them, and never less than :attr:`depth`.  On structured
        page embeddings (BENCHMARKS.md) recall@10 against exact search followed depth / pages
        per list, whatever the table's size and codebook: 100,000 pages on 65,536 centroids
        (590 pages a list) recalled 0.94 / 0.98 / 0.99 at depth 100 / 150 / 200 (ratios 0.17 /
        0.25 / 0.34); a million pages on 262,144 centroids (1,525 a list) 0.93 / 0.96 / 0.985
        at depth 200 / 400 / 600 (0.13 / 0.26 / 0.39); 5,000-20,000 pages on 16,384 centroids
        0.965-0.975 at depth 100.  A ratio of 0.27 asks for about 0.97.

        Without ``pages_per_list`` (a vector index: single-vector tables), by the table's size:
        ``depth``, twice that from :data:`DEEPER_FROM` rows, four times from :data:`DEEPEST_FROM`."""
        if pages_per_list is not None:
            return max(self.depth, math.ceil(DEPTH_PER_LIST_PAGE * pages_per_list))
        if pages < DEEPER_FROM:
            return self.depth
        return 2 * self.depth if pages < DEEPEST_FROM else 4 * self.depth


#: Pages re-ranked per page that shares an inverted list (:meth:`Settings.depth_for`).
DEPTH_PER_LIST_PAGE = 0.27
#: Pages re-scored by their whole code sets per page re-ranked (at most :attr:`Settings.refine`):
#: candidate recall@10 was the same for 200-500 re-scored pages at depth 100-150 on 10,000 pages
#: (0.963) and for 250-500 at depth 161 on 100,000 (0.984), and the step costs ~2 ms per 100 pages.
REFINE_PER_DEPTH = 1.5
#: Single-vector tables: rows from which twice :attr:`Settings.depth` candidates are re-ranked.
DEEPER_FROM = 25_000
#: ... and from which four times as many.
DEEPEST_FROM = 400_000


# ------------------------------------------------------------------ k-means
def _kmeans(x: np.ndarray, k: int, iters: int, rng: np.random.Generator) -> np.ndarray:
    """Spherical k-means (unit centroids, cosine assignment); empty clusters are re-seeded."""
    k = max(1, min(k, len(x)))
    c = x[rng.choice(len(x), size=k, replace=False)].copy()
    for _ in range(iters):
        a = _argmax_dot(x, c)
        order = np.argsort(a, kind="stable")
        counts = np.bincount(a, minlength=k)
        sums = np.zeros_like(c)
        nz = np.flatnonzero(counts)
        sums[nz] = np.add.reduceat(x[order], np.concatenate([[0], np.cumsum(counts)[:-1]])[nz], axis=0)
        empty = counts == 0
        if empty.any():
            sums[empty] = x[rng.choice(len(x), size=int(empty.sum()), replace=False)]
        c = sums / np.maximum(np.linalg.norm(sums, axis=1, keepdims=True), 1e-12)
    return c.astype(np.float32)


def _argmax_dot(x: np.ndarray, c: np.ndarray, block: int = 65536) -> np.ndarray:
    out = np.empty(len(x), np.int64)
    for a in range(0, len(x), block):
        out[a : a + block] = np.argmax(x[a : a + block] @ c.T, axis=1)
    return out


def train_codebook(sample: np.ndarray, s: Settings, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """``(coarse (C, dim), centroids (C * F, dim))`` from ``sample`` (float32, unit rows).
    Centroid ``c * F + f`` is the ``f``-th fine centroid inside coarse centroid ``c``."""
    rng = np.random.default_rng(seed)
    x = np.ascontiguousarray(sample, dtype=np.float32)
    if len(x) > s.train_vectors:
        x = x[rng.choice(len(x), size=s.train_vectors, replace=False)]
    # a small table gets fewer fine centroids (about 8 sample vectors each)
    n_fine = int(min(s.fine, max(1, len(x) // (8 * s.coarse))))
    coarse = _kmeans(x, s.coarse, s.iters, rng)
    if len(coarse) < s.coarse:  # tiny tables: pad so that codes keep their layout
        coarse = np.concatenate([coarse, np.repeat(coarse[:1], s.coarse - len(coarse), axis=0)])
    a = _argmax_dot(x, coarse)
    fine = np.empty((s.coarse, n_fine, x.shape[1]), np.float32)
    for c in range(s.coarse):
        members = x[a == c]
        if len(members) == 0:
            fine[c] = coarse[c]
            continue
        f = _kmeans(members, n_fine, s.iters, rng)
        fine[c, : len(f)] = f
        fine[c, len(f) :] = f[0]  # duplicates of a real centroid: never preferred, always valid
    return coarse, fine.reshape(-1, x.shape[1])


def _one_blas_thread():
    from threadpoolctl import ThreadpoolController  # late: inspects the loaded libraries once

    if not _BLAS:
        _BLAS.append(ThreadpoolController())
    return _BLAS[0].limit(limits=1, user_api="blas")


_BLAS: list = []
_ONE_BLAS_THREAD = CountedSetting(_one_blas_thread, lambda limiter: limiter.restore_original_limits())


def one_blas_thread():
    """A context in which BLAS runs on one thread.  Assignment multiplies many small matrices (one
    per coarse centroid); a multi-threaded BLAS synchronises its threads for each of them, which on
    a busy machine costs several times the arithmetic (measured: 0.72 s against 0.13-0.33 s for
    37,500 vectors at load ~10 on 2 cores).  The limit is process-wide, so it is counted
    (:class:`~nomic_memory.threads.CountedSetting`): the last thread to leave restores what the
    first one found.  (OpenBLAS takes a thread count set from another thread than the main one
    only before its pool runs: elsewhere this may leave BLAS as it is, which changes speed, never
    results.)"""
    return _ONE_BLAS_THREAD.held()


def assign(x: np.ndarray, coarse: np.ndarray, centroids: np.ndarray) -> np.ndarray:
    """The code (centroid number) of each row of ``x``: its best coarse centroid, then the best
    fine centroid inside it."""
    with one_blas_thread():
        return _assign(x, coarse, centroids)


def _assign(x: np.ndarray, coarse: np.ndarray, centroids: np.ndarray) -> np.ndarray:
    x = np.ascontiguousarray(x, dtype=np.float32)
    n_fine = len(centroids) // len(coarse)
    top = _argmax_dot(x, coarse)
    codes = np.empty(len(x), np.int64)
    fine = centroids.reshape(len(coarse), n_fine, -1)
    order = np.argsort(top, kind="stable")
    bounds = np.searchsorted(top[order], np.arange(len(coarse) + 1))
    for c in range(len(coarse)):
        rows = order[bounds[c] : bounds[c + 1]]
        if len(rows):
            codes[rows] = c * n_fine + np.argmax(x[rows] @ fine[c].T, axis=1)
    return codes


def page_code_sets(codes: np.ndarray, offsets: np.ndarray, n_centroids: int) -> tuple[np.ndarray, np.ndarray]:
    """Distinct codes of each page: ``(codes sorted within each page, counts per page)``."""
    n = len(offsets) - 1
    lens = np.diff(offsets)
    page = np.repeat(np.arange(n, dtype=np.int64), lens)
    key = np.unique(page * n_centroids + codes)
    counts = np.bincount(key // n_centroids, minlength=n)
    return (key % n_centroids).astype(code_dtype(n_centroids)), counts.astype(np.int64)


def code_dtype(n_centroids: int):
    return np.uint16 if n_centroids <= 1 << 16 else np.uint32


def inverted_lists(codes: np.ndarray, counts: np.ndarray, n_centroids: int) -> tuple[np.ndarray, np.ndarray]:
    """``(offsets (K+1,), entries int32)``: for each centroid, the entries (pages) using it, in
    entry order (a stable radix sort of the codes)."""
    entry = np.repeat(np.arange(len(counts), dtype=np.int32), counts)
    order = np.argsort(codes, kind="stable")
    offs = np.zeros(n_centroids + 1, np.int64)
    offs[1:] = np.cumsum(np.bincount(codes, minlength=n_centroids))
    return offs, entry[order]


# ------------------------------------------------------------------ candidates
@dataclass
class CodeIndex:
    """The arrays of a multi-vector first stage (any of them may be memory-mapped)."""

    centroids: np.ndarray  # (K, dim) float32
    code_offsets: np.ndarray  # (n+1,) int64: entry i's codes are codes[code_offsets[i]:code_offsets[i+1]]
    codes: np.ndarray  # uint16/uint32
    inv_offsets: np.ndarray  # (K+1,) int64
    inv_entries: np.ndarray  # int32

    @property
    def n(self) -> int:
        return len(self.code_offsets) - 1

    def candidates(
        self, q: np.ndarray, s: Settings, allowed: np.ndarray | None = None, depth: int | None = None
    ) -> np.ndarray:
        """The entries (indices) of the ``depth`` best pages for one query ``(T, dim)``, best
        first; ``allowed`` (bool per entry) restricts them."""
        return candidates([self], q, s, allowed, depth)

    def _probe_scores(self, sims: np.ndarray, probe: int) -> np.ndarray:
        return self._probed(_probe(sims, probe))

    def _probed(self, probe: tuple[np.ndarray, np.ndarray, np.ndarray]) -> np.ndarray:
        """Each entry's imputed score from the tokens' best centroids (:func:`_probe`): the sum
        of the tokens' floors, plus, for each token that meets the entry, its best score there
        above that token's floor.

        One token at a time, in a scratch vector that is only ever touched where the token's
        lists point (then cleared there), so the work is the lists' length, not tokens x pages:
        a dense (tokens, pages) array was most of the first stage at a million pages."""
        best, bs, floor = probe
        T, p = best.shape
        out = np.full(self.n, floor.sum(dtype=np.float32), np.float32)
        scratch = np.zeros(self.n, np.float32)
        for t in range(T):
            starts, ends = self.inv_offsets[best[t]], self.inv_offsets[best[t] + 1]
            lens = ends - starts
            total = int(lens.sum())
            if not total:
                continue
            ent = self.inv_entries[_ranges(starts, lens, total)]
            val = np.repeat(bs[t] - floor[t], lens)
            # the token's lists come best centroid first: written in reverse, the last write to a
            # page -- numpy assigns repeated indices in order -- is its best score (what
            # np.maximum.at gives, several times faster; a test checks the two agree); a page
            # listed twice is added once (a buffered fancy-index add)
            scratch[ent[::-1]] = val[::-1]
            out[ent] += scratch[ent]
            scratch[ent] = 0.0
        return out

    def _full_scores(self, sims: np.ndarray, entries: np.ndarray) -> np.ndarray:
        """Each entry's score from its whole code set; ``sims`` is ``(T, K)``, C-contiguous.
        ``np.take`` gathers the codes' columns into a ``(T, codes)`` matrix whose rows the
        segmented maximum then runs along: 8-13 ms for 500 pages at 65,536 centroids, against
        23 ms gathering rows of the transposed ``(K, T)`` matrix and a maximum across 20-float
        rows (which was itself 2.4x faster than fancy-indexed columns ``sims[:, codes]``)."""
        a, b = self.code_offsets[entries], self.code_offsets[entries + 1]
        lens = b - a
        total = int(lens.sum())
        if total == 0:
            return np.full(len(entries), -np.inf, np.float32)
        codes = self.codes[_ranges(a, lens, total)].astype(np.int64)
        g = np.take(sims, codes, axis=1)  # (T, total)
        starts = np.concatenate([[0], np.cumsum(lens)[:-1]])
        nonempty = lens > 0
        out = np.full(len(entries), -np.inf, np.float32)
        out[nonempty] = np.maximum.reduceat(g, starts[nonempty], axis=1).sum(axis=0)
        return out


def candidates(
    parts: list[CodeIndex], q: np.ndarray, s: Settings, allowed: np.ndarray | None = None, depth: int | None = None
) -> np.ndarray:
    """:meth:`CodeIndex.candidates` over several indexes with the same centroids (a base and the
    entries added since), whose entries are numbered one after the other.  It runs on the
    calling thread: splitting the query's tokens over two threads was tried and did not pay on
    a 2-core machine (43 ms against 33 ms, twice the CPU)."""
    depth = s.depth if depth is None else depth
    parts = [p for p in parts if p.n]
    n = sum(p.n for p in parts)
    if n == 0:
        return np.zeros(0, np.int64)
    sims = _similarities(np.asarray(q, dtype=np.float32), parts[0].centroids)
    probe = _probe(sims, s.probe)
    approx = np.concatenate([p._probed(probe) for p in parts])
    if allowed is not None:
        approx[~allowed] = -np.inf
    live = int(np.count_nonzero(approx > -np.inf))
    m = min(max(depth, min(s.refine, math.ceil(REFINE_PER_DEPTH * depth))), live)
    if m <= 0:
        return np.zeros(0, np.int64)
    top = _top(approx, m)
    refined = np.empty(len(top), np.float32)
    start = 0
    for p in parts:
        inside = (top >= start) & (top < start + p.n)
        refined[inside] = p._full_scores(sims, top[inside] - start)
        start += p.n
    return top[_top(refined, min(depth, len(top)))]


def _similarities(q: np.ndarray, centroids: np.ndarray) -> np.ndarray:
    """``q @ centroids.T`` as a C-contiguous ``(T, K)`` float32 matrix, multiplied by torch (MKL,
    torch's own threads), as the exact scorer multiplies.

    Inside a search at 100,000 pages (20 tokens, 65,536 centroids, the centroids' 32 MB pushed
    out of the caches by the previous re-rank) numpy's OpenBLAS took 11.7 ms a query for this
    product, in blocks on one thread (its two threads, woken, spun on through the re-rank), and
    torch 8.3 ms on one thread; on torch's two threads the whole search's p50 fell from 59.7 to
    49.5 ms at the same CPU time (BENCHMARKS.md, "Candidates read through a memory map")."""
    import torch  # late: a process that only builds or checks an index need not load torch

    with warnings.catch_warnings():  # a read-only memory map: only ever read
        warnings.simplefilter("ignore", UserWarning)
        c = torch.from_numpy(centroids)
    qt = torch.from_numpy(np.ascontiguousarray(q, dtype=np.float32))
    return torch.mm(qt, c.T).numpy()


def _probe(sims: np.ndarray, probe: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Each token's ``probe`` best centroids, best first, their scores and the lowest of them
    (the imputed score of a page a token does not meet); the same for every part.  torch's
    ``topk`` on its threads: 2.4 ms for 20 tokens and 65,536 centroids (caches cold) against
    3.7 ms for numpy's ``argpartition`` and a sort of the best."""
    import torch  # late: as _similarities

    p = min(probe, sims.shape[1])
    scores, best = torch.topk(torch.from_numpy(sims), p, dim=1)  # sorted, best first
    bs = scores.numpy()
    return best.numpy(), bs, bs[:, -1].copy()


def _ranges(starts: np.ndarray, lens: np.ndarray, total: int) -> np.ndarray:
    """Concatenated ``arange(s, s + l)`` for each pair, vectorised."""
    ends = np.cumsum(lens)
    base = np.repeat(starts - (ends - lens), lens)
    return base + np.arange(total, dtype=np.int64)


def _top(scores: np.ndarray, m: int) -> np.ndarray:
    """Indices of the ``m`` largest scores, best first (ties: lower index first)."""
    if m >= len(scores):
        idx = np.arange(len(scores))
    else:
        idx = np.argpartition(-scores, m - 1)[:m]
    return idx[np.lexsort((idx, -scores[idx].astype(np.float64)))]


def build_code_index(coarse: np.ndarray, centroids: np.ndarray, batches) -> tuple[CodeIndex, np.ndarray]:
    """A :class:`CodeIndex` from ``batches`` of ``(vectors float32, offsets)`` (streamed: only
    codes are kept).  Returns it and the per-entry code counts."""
    K = len(centroids)
    parts, counts = [], []
    for vecs, offs in batches:
        c, n = page_code_sets(assign(vecs, coarse, centroids), offs, K)
        parts.append(c)
        counts.append(n)
    return assemble(centroids, parts, counts), (np.concatenate(counts) if counts else np.zeros(0, np.int64))


def assemble(centroids: np.ndarray, code_parts: list, count_parts: list) -> CodeIndex:
    K = len(centroids)
    codes = np.concatenate(code_parts) if code_parts else np.zeros(0, code_dtype(K))
    counts = np.concatenate(count_parts) if count_parts else np.zeros(0, np.int64)
    offs = np.zeros(len(counts) + 1, np.int64)
    offs[1:] = np.cumsum(counts)
    inv_o, inv_e = inverted_lists(codes, counts, K)
    return CodeIndex(centroids, offs, codes.astype(code_dtype(K)), inv_o, inv_e)


__all__ = [
    "CodeIndex",
    "Settings",
    "assemble",
    "assign",
    "build_code_index",
    "candidates",
    "code_dtype",
    "inverted_lists",
    "page_code_sets",
    "train_codebook",
]
