"""Could a finer score between the first stage and the exact re-rank cut the re-rank depth?

On an indexed 100,000-page store (``bench_firststage.py store`` + ``nomic-memory index rebuild``),
for ``--queries`` queries: the exact top 10 (one batched exact scan), the first stage's 500 best
pages by their code-set scores (``firststage``: probe, then full code sets), and the float vectors
of those pages.  Each candidate representation below re-orders the 500 pages; the best ``N`` of
that order are re-ranked exactly, and recall@10 against the exact top 10 is reported for each
``N`` (the re-rank depth).  What a representation would cost per page is in its description.

* ``codeset``: the first stage's own order (what is kept today).
* ``localmean``: each (page, code) pair's mean vector, unquantised (~412 x 512 B per page: an upper
  bound for any code-aligned refinement, not a candidate).
* ``localmean_1bit``: the centroid plus the sign of the pair's residual scaled by its mean absolute
  value (16 B per pair, ~6.6 KB per page).
* ``localmean_1bit64``: the residual's signs on 64 random directions (8 B per pair, ~3.3 KB).
* ``pool32`` / ``pool64``: k-means pooling of the page's vectors to 32 / 64 vectors, int8 (4 / 8 KB).
* ``lm_rvq256`` / ``lm_rvq2048``: the pair's residual coded by a second, shared codebook of 256 /
  2,048 residual centroids (1-2 B per pair); ``lm_rvq256x2``: two such stages (2 B per pair).
* ``vec_rvq256pairs``: every vector's (code, residual code) pair, distinct pairs kept (~533 x 3 B).

    uv run python benchmarks/bench_middle_stage.py --store /work/bench/store100k --queries 30

Takes ~25 minutes on the 2-core machine (the k-means pooling of 13,500 pages dominates) and
~6 GB of memory.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from nomic_memory.search import Index  # noqa: E402
from nomic_memory.search import firststage as fs  # noqa: E402
from nomic_memory.search.scoring import multivector_matrix  # noqa: E402
from nomic_memory.store.table import Store  # noqa: E402
from synthetic_pages import PageGenerator, PageSpec  # noqa: E402

DEPTHS = (10, 20, 30, 50, 100, 150, 200, 300, 500)
M = 500  # pages the first stage hands over, in its order


def first_stage_order(view, q: np.ndarray, s: fs.Settings, m: int = 1000) -> np.ndarray:
    """Row ids of the first stage's ``m`` best pages for ``q``, best first (code-set scores)."""
    deep = dataclasses.replace(s, refine=m)  # the first stage's own candidates, m of them
    return view.rowids[fs.candidates(view.state.parts, q, deep, view.alive, depth=m)].astype(np.int64)


def kmeans(x: np.ndarray, k: int, rng, iters: int = 8) -> np.ndarray:
    """Euclidean k-means (residuals are not unit vectors)."""
    c = x[rng.choice(len(x), k, replace=False)].copy()
    for _ in range(iters):
        a = nearest(x, c)
        cnt = np.bincount(a, minlength=k)
        o = np.argsort(a, kind="stable")
        starts = np.concatenate([[0], np.cumsum(cnt)[:-1]])
        nz = cnt > 0
        c[nz] = np.add.reduceat(x[o], starts[nz], axis=0) / cnt[nz, None]
    return c


def nearest(x: np.ndarray, c: np.ndarray, block: int = 20000) -> np.ndarray:
    out = np.empty(len(x), np.int64)
    cc = (c * c).sum(1)[None]
    for a in range(0, len(x), block):
        out[a : a + block] = np.argmax((x[a : a + block] @ c.T) * 2 - cc, 1)
    return out


def pool(x: np.ndarray, k: int, iters: int = 6, seed: int = 0) -> np.ndarray:
    """k-means pooling of one page's vectors (spherical assignment, mean vectors), as int8."""
    r = np.random.default_rng(seed)
    c = x[r.choice(len(x), k, replace=False)].copy()
    for _ in range(iters):
        a = np.argmax(x @ c.T, 1)
        for j in range(k):
            members = x[a == j]
            if len(members):
                c[j] = members.mean(0)
    scale = np.abs(c).max(1, keepdims=True) / 127.0
    return np.round(c / scale).astype(np.int8).astype(np.float32) * scale


def maxsim(q: np.ndarray, x: np.ndarray) -> float:
    return float(np.max(q @ x.T, axis=1).sum())


# Long: one experiment read top to bottom (prepare, build every representation, score them)
def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--store", type=Path, required=True)
    ap.add_argument("--table", default="synthetic")
    ap.add_argument("--queries", type=int, default=30)
    ap.add_argument("--seed", type=int, default=11)
    a = ap.parse_args()
    t0 = time.perf_counter()
    st = Store(str(a.store), create=False)
    t = st.open_table(a.table)
    idx = Index(st, t, index_min_rows=0)
    ds = t.table.to_lance()
    view = idx.live_index().view(ds)
    s = fs.Settings(**view.state.meta["settings"])
    coarse, cents = view.state.coarse, view.state.parts[0].centroids
    g = PageGenerator(PageSpec(seed=0))
    rng = np.random.default_rng(a.seed)
    qs = [g.query(int(p)) for p in rng.choice(ds.count_rows(), a.queries, replace=False)]
    exact_paths = [{h.path for h in e} for e in idx.search_embeddings(qs, 10, exact=True)]
    ranks = np.stack([first_stage_order(view, q, s) for q in qs])
    union = np.unique(ranks[:, :M])
    pos = {int(r): i for i, r in enumerate(union)}
    pages, paths = [], []
    for b in range(0, len(union), 256):
        tb = ds._take_rows(union[b : b + 256].tolist(), columns=["path", "embedding"])
        paths += tb.column("path").to_pylist()
        v, o = multivector_matrix(tb.column("embedding").combine_chunks())
        pages += [v[o[i] : o[i + 1]].astype(np.float16) for i in range(len(o) - 1)]
    print(f"prepared {len(union)} pages in {time.perf_counter() - t0:.0f} s", flush=True)

    def page(i: int) -> np.ndarray:
        return pages[i].astype(np.float32)

    P = np.random.default_rng(5).standard_normal((128, 64)).astype(np.float32)
    codes_of, uniq, resid = [], [], []
    reps: dict[str, list] = {n: [] for n in ("pool32", "pool64", "localmean", "localmean_1bit", "localmean_1bit64")}
    for i in range(len(union)):
        x = page(i)
        codes = fs._assign(x, coarse, cents)
        u, inv = np.unique(codes, return_inverse=True)
        sums = np.zeros((len(u), 128), np.float32)
        np.add.at(sums, inv, x)
        r = sums / np.bincount(inv)[:, None] - cents[u]
        codes_of.append(codes.astype(np.int32))
        uniq.append(u)
        resid.append(r)
        reps["pool32"].append(pool(x, 32))
        reps["pool64"].append(pool(x, 64))
        reps["localmean"].append(cents[u] + r)
        sg = np.where(r >= 0, 1.0, -1.0).astype(np.float32)
        reps["localmean_1bit"].append(cents[u] + np.abs(r).mean(1, keepdims=True) * sg)
        b = np.where(r @ P >= 0, 1.0, -1.0).astype(np.float32)
        est = b @ P.T
        est *= np.linalg.norm(r, axis=1, keepdims=True) / np.maximum(np.linalg.norm(est, axis=1, keepdims=True), 1e-9)
        reps["localmean_1bit64"].append(cents[u] + est)
    krng = np.random.default_rng(0)
    sample = np.concatenate([resid[i] for i in krng.choice(len(resid), 1500, replace=False)])
    sample = sample[krng.choice(len(sample), min(len(sample), 200_000), replace=False)]
    vsample = np.concatenate([page(i) - cents[codes_of[i]] for i in krng.choice(len(union), 200, replace=False)])
    b256, b2048 = kmeans(sample, 256, krng), kmeans(sample, 2048, krng)
    b256b = kmeans(sample - b256[nearest(sample, b256)], 256, krng)
    vb = kmeans(vsample, 256, krng)
    for n in ("lm_rvq256", "lm_rvq2048", "lm_rvq256x2", "vec_rvq256pairs"):
        reps[n] = []
    pairs_per_page = []
    for i in range(len(union)):
        u, r = uniq[i], resid[i]
        c1 = nearest(r, b256)
        reps["lm_rvq256"].append(cents[u] + b256[c1])
        reps["lm_rvq2048"].append(cents[u] + b2048[nearest(r, b2048)])
        reps["lm_rvq256x2"].append(cents[u] + b256[c1] + b256b[nearest(r - b256[c1], b256b)])
        codes = codes_of[i]
        pairs = np.unique(codes.astype(np.int64) * 256 + nearest(page(i) - cents[codes], vb))
        pairs_per_page.append(len(pairs))
        reps["vec_rvq256pairs"].append(cents[pairs // 256] + vb[pairs % 256])
    print(f"built in {time.perf_counter() - t0:.0f} s", flush=True)
    res: dict[tuple[str, int], list[float]] = {}
    for qi, q in enumerate(qs):
        cand = [pos[int(r)] for r in ranks[qi, :M]]
        ex = np.array([maxsim(q, page(i)) for i in cand])
        orders = {"codeset": np.arange(M)}
        for name, R in reps.items():
            orders[name] = np.argsort(-np.array([maxsim(q, R[i]) for i in cand]), kind="stable")
        for name, o in orders.items():
            for n in DEPTHS:
                sel = np.asarray(o[:n])
                top = sel[np.argsort(-ex[sel], kind="stable")][:10]
                res.setdefault((name, n), []).append(len(exact_paths[qi] & {paths[cand[j]] for j in top}) / 10)
    out = {
        "pages": ds.count_rows(),
        "queries": a.queries,
        "distinct_codes_per_page": round(float(np.mean([len(u) for u in uniq])), 1),
        "distinct_code_residual_pairs_per_page": round(float(np.mean(pairs_per_page)), 1),
        "recall10": {name: {n: round(float(np.mean(res[(name, n)])), 3) for n in DEPTHS} for name in orders},
        "seconds": round(time.perf_counter() - t0),
    }
    print(json.dumps(out, indent=1), flush=True)


if __name__ == "__main__":
    main()
