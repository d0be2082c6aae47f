"""First stages for multi-vector search, side by side, and the live index at 100,000 / 1,000,000 pages.

Data: :mod:`synthetic_pages` (pages with topics, recurring patches, a background share and
page-specific content; queries are noisy copies of some of a page's content patches plus prompt
tokens).  Every recall figure is recall@10 against exact float32 MaxSim over the same vectors
(the top 10 of the candidates after an exact re-rank, compared with the exact top 10).

    # candidates side by side, in memory (10,000 pages; the float16 vectors fit in RAM)
    uv run python benchmarks/bench_firststage.py compare --pages 10000 --queries 50 --runs 3
    # a real store of 100,000 pages (19 GB), then the live index on it: build, search, re-rank
    uv run python benchmarks/bench_firststage.py store --pages 100000 --path /tmp/nm_fs_100k
    uv run python benchmarks/bench_firststage.py live --path /tmp/nm_fs_100k --queries 50 --runs 3
    # the first stage of 1,000,000 pages, streamed from the generator (nothing stored as floats)
    uv run python benchmarks/bench_firststage.py million --pages 1000000 --queries 20 --runs 3

Latency is measured in one process with torch and BLAS limited to 2 threads (the machine's two
cores, shared with other work: medians of ``--runs`` runs, each run every query once).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import resource
import statistics
import sys
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "2")
os.environ.setdefault("OPENBLAS_NUM_THREADS", "2")

import numpy as np  # noqa: E402
import torch  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from nomic_memory.search import firststage as fs  # noqa: E402
from synthetic_pages import DIM, PageGenerator, PageSpec  # noqa: E402

torch.set_num_threads(2)


def rss_gib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


def pct(xs, p) -> float:
    return float(np.percentile(np.asarray(xs), p))


# ------------------------------------------------------------------ exact MaxSim
def maxsim_pages(qs: list[np.ndarray], v: np.ndarray, offs: np.ndarray) -> np.ndarray:
    """Exact float32 MaxSim ``(n_queries, n_pages)`` of pages ``(v, offs)`` (any float dtype)."""
    Q = torch.from_numpy(np.concatenate(qs).astype(np.float32))
    qidx = torch.from_numpy(np.repeat(np.arange(len(qs)), [len(q) for q in qs]))
    X = torch.from_numpy(np.ascontiguousarray(v, dtype=np.float32))
    lens = np.diff(offs)
    seg = torch.from_numpy(np.repeat(np.arange(len(lens)), lens))
    S = Q @ X.T
    m = torch.full((S.shape[0], len(lens)), -4.0).scatter_reduce(1, seg.expand(S.shape[0], -1), S, "amax")
    return torch.zeros(len(qs), len(lens)).index_add_(0, qidx, m).numpy()


def recall10(exact_row: np.ndarray, cand: np.ndarray, cand_scores: np.ndarray | None = None) -> float:
    """recall@10 of an exact re-rank of ``cand`` (page numbers) against the exact top 10."""
    want = set(np.argsort(-exact_row, kind="stable")[:10].tolist())
    cand = np.asarray(cand, dtype=np.int64)
    got = cand[np.argsort(-exact_row[cand], kind="stable")[:10]] if len(cand) else cand
    return len(want & set(got.tolist())) / 10


# ------------------------------------------------------------------ candidates compared
class Method:
    name = ""
    bytes_per_page = 0.0

    def build(self, v, offs, sample):  # noqa: D401
        raise NotImplementedError

    def candidates(self, q: np.ndarray, depth: int) -> np.ndarray:
        raise NotImplementedError


class Exact(Method):
    name = "exact float32 MaxSim (full scan, in RAM)"

    def build(self, v, offs, sample):
        self.v, self.offs = v, offs
        self.bytes_per_page = v.nbytes / (len(offs) - 1)

    def candidates(self, q, depth):
        s = np.zeros(len(self.offs) - 1, np.float32)
        step = 2000
        for a in range(0, len(s), step):
            b = min(a + step, len(s))
            o = self.offs[a : b + 1]
            s[a:b] = maxsim_pages([q], self.v[o[0] : o[-1]], o - o[0])[0]
        return np.argsort(-s)[:depth]


_POOLED: dict = {}


def pool_pages(v, offs, factor=4):
    """Each page's vectors k-means-pooled ``factor``:1 (as the pooled copy does); computed once per run."""
    from nomic_memory.search.approx import _pool_documents

    if id(v) in _POOLED:
        return _POOLED[id(v)]

    out, lens = [], []
    for a in range(0, len(offs) - 1, 256):
        o = offs[a : min(a + 257, len(offs))]
        x = torch.from_numpy(v[o[0] : o[-1]].astype(np.float32))
        p, n = _pool_documents(x, o - o[0], factor, 4)
        out.append(torch.cat(p).numpy().astype(np.float16))
        lens.extend(n)
    po = np.zeros(len(lens) + 1, np.int64)
    po[1:] = np.cumsum(lens)
    _POOLED[id(v)] = (np.concatenate(out), po)
    return _POOLED[id(v)]


class Pooled(Method):
    name = "pooled x4 copy, float16 (today's --approx: full scan of the copy)"

    def build(self, v, offs, sample):
        self.pv, self.po = pool_pages(v, offs)
        self.bytes_per_page = self.pv.nbytes / (len(offs) - 1)

    def candidates(self, q, depth):
        s = np.zeros(len(self.po) - 1, np.float32)
        for a in range(0, len(s), 4000):
            b = min(a + 4000, len(s))
            o = self.po[a : b + 1]
            s[a:b] = maxsim_pages([q], self.pv[o[0] : o[-1]], o - o[0])[0]
        return np.argsort(-s)[:depth]


class Binary(Method):
    """Vespa-style: every patch vector binarised (sign bits, 16 bytes), MaxSim by Hamming."""

    name = "binarised patch vectors, Hamming MaxSim (full scan)"

    def build(self, v, offs, sample):
        self.bits = np.packbits(v > 0, axis=1).view(np.uint64)  # (total, 2)
        self.offs = offs
        self.bytes_per_page = self.bits.nbytes / (len(offs) - 1)

    def candidates(self, q, depth):
        qb = np.packbits(q > 0, axis=1).view(np.uint64)
        lens = np.diff(self.offs)
        s = np.zeros(len(lens), np.float32)
        for t in range(len(qb)):
            ham = np.bitwise_count(self.bits[:, 0] ^ qb[t, 0]) + np.bitwise_count(self.bits[:, 1] ^ qb[t, 1])
            s -= np.minimum.reduceat(ham, self.offs[:-1])
        return np.argsort(-s)[:depth]


class Muvera(Method):
    """MUVERA fixed-dimensional encodings (SimHash buckets, random projections), flat inner
    product over the encodings (float16)."""

    def __init__(self, reps=10, ksim=4, dproj=16):
        self.reps, self.ksim, self.dproj = reps, ksim, dproj
        self.name = f"MUVERA FDE ({reps} reps x {2**ksim} buckets x {dproj} dims), flat inner product"
        rng = np.random.default_rng(7)
        self.G = rng.standard_normal((reps, DIM, ksim)).astype(np.float32)
        self.P = (rng.choice([-1.0, 1.0], size=(reps, DIM, dproj)) / np.sqrt(dproj)).astype(np.float32)

    def _fde(self, x: np.ndarray, page: np.ndarray, n: int, doc: bool) -> np.ndarray:
        """Encodings ``(n, reps * B * dproj)`` of the vectors ``x`` belonging to pages ``page``:
        per repetition, the (document: mean, query: sum of) projections per SimHash bucket."""
        B = 2**self.ksim
        out = torch.zeros((self.reps, n * B, self.dproj))
        xt = torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32))
        pg = torch.from_numpy(page.astype(np.int64)) * B
        for r in range(self.reps):
            bucket = ((xt @ torch.from_numpy(self.G[r])) > 0).long() @ (1 << torch.arange(self.ksim))
            out[r].index_add_(0, pg + bucket, xt @ torch.from_numpy(self.P[r]))
            if doc:
                cnt = torch.zeros(n * B).index_add_(0, pg + bucket, torch.ones(len(bucket)))
                out[r] /= cnt.clamp_min(1)[:, None]
        return out.view(self.reps, n, B * self.dproj).permute(1, 0, 2).reshape(n, -1).numpy()

    def build(self, v, offs, sample):
        parts = []
        for a in range(0, len(offs) - 1, 500):
            o = offs[a : min(a + 501, len(offs))]
            page = np.repeat(np.arange(len(o) - 1), np.diff(o))
            parts.append(self._fde(v[o[0] : o[-1]], page, len(o) - 1, True).astype(np.float16))
        self.F = torch.from_numpy(np.concatenate(parts))
        self.bytes_per_page = self.F.shape[1] * 2

    def candidates(self, q, depth):
        f = torch.from_numpy(self._fde(q, np.zeros(len(q), np.int64), 1, False)[0])
        s = (self.F.float() @ f) if self.F.dtype != torch.float32 else self.F @ f
        return torch.topk(s, min(depth, len(s))).indices.numpy()


class TokenANN(Method):
    """ColBERT(v1)-style candidates: an ANN index over the pooled vectors; each query token's
    nearest vectors vote for their pages (score: sum over tokens of the best similarity found)."""

    def __init__(self, kind="ivfpq", per_token=128):
        self.kind, self.per_token = kind, per_token
        self.name = {
            "ivfpq": "faiss IVF-PQ over pooled x4 vectors (16-byte codes), per-token kNN",
            "hnsw": "usearch HNSW (int8) over pooled x4 vectors, per-token kNN",
        }[kind]

    def build(self, v, offs, sample):
        import faiss

        pv, po = pool_pages(v, offs)
        x = pv.astype(np.float32)
        self.page_of = np.repeat(np.arange(len(po) - 1), np.diff(po))
        n = len(offs) - 1
        if self.kind == "ivfpq":
            nlist = int(2 * np.sqrt(len(x)))
            q = faiss.IndexFlatIP(DIM)
            self.ix = faiss.IndexIVFPQ(q, DIM, nlist, 16, 8, faiss.METRIC_INNER_PRODUCT)
            self.ix.train(x[np.random.default_rng(0).choice(len(x), min(len(x), 50_000), replace=False)])
            self.ix.add(x)
            self.ix.nprobe = 32
            self.bytes_per_page = (len(x) * (16 + 8)) / n
        else:
            from usearch.index import Index as UIndex

            self.ix = UIndex(ndim=DIM, metric="ip", dtype="i8", connectivity=16)
            self.ix.add(np.arange(len(x), dtype=np.uint64), x, threads=2)
            self.bytes_per_page = self.ix.memory_usage / n

    def candidates(self, q, depth):
        if self.kind == "ivfpq":
            sims, ids = self.ix.search(np.ascontiguousarray(q, dtype=np.float32), self.per_token)
        else:
            m = self.ix.search(np.ascontiguousarray(q, dtype=np.float32), self.per_token, threads=2)
            ids, sims = m.keys.astype(np.int64), 1 - m.distances
        pages = self.page_of[np.clip(ids, 0, None)]
        score: dict[int, float] = {}
        for t in range(len(q)):
            best: dict[int, float] = {}
            for p, d, i in zip(pages[t], sims[t], ids[t]):
                if i >= 0 and d > best.get(int(p), -9):
                    best[int(p)] = float(d)
            for p, d in best.items():
                score[p] = score.get(p, 0.0) + d
        ranked = sorted(score, key=lambda p: -score[p])
        return np.asarray(ranked[:depth], np.int64)


class Codes(Method):
    name = "centroid codes + inverted lists (chosen: nomic_memory.search.firststage)"

    def __init__(self, settings=fs.Settings()):
        self.s = settings

    def build(self, v, offs, sample):
        coarse, cents = fs.train_codebook(sample, self.s)

        def batches():
            for a in range(0, len(offs) - 1, 500):
                o = offs[a : min(a + 501, len(offs))]
                yield v[o[0] : o[-1]].astype(np.float32), o - o[0]

        self.ix, _ = fs.build_code_index(coarse, cents, batches())
        c = self.ix
        self.bytes_per_page = (
            sum(a.nbytes for a in (c.centroids, c.code_offsets, c.codes, c.inv_offsets, c.inv_entries)) / c.n
        )

    def candidates(self, q, depth):
        return self.ix.candidates(q, self.s, depth=depth)


def cmd_compare(a) -> dict:
    g = PageGenerator(PageSpec(seed=a.seed))
    t0 = time.perf_counter()
    v16, offs = g.pages(0, a.pages)
    v16 = v16.astype(np.float16)
    print(f"generated {a.pages} pages ({len(v16)} vectors) in {time.perf_counter() - t0:.0f} s", flush=True)
    rng = np.random.default_rng(a.seed + 1)
    qp = rng.choice(a.pages, a.queries, replace=False)
    qs = [g.query(int(p)) for p in qp]
    exact = np.concatenate(
        [
            maxsim_pages(qs, v16[offs[i] : offs[j]], offs[i : j + 1] - offs[i])
            for i, j in zip(range(0, a.pages, 1000), [min(x + 1000, a.pages) for x in range(0, a.pages, 1000)])
        ],
        axis=1,
    )
    sample = v16[: min(len(v16), 400_000)].astype(np.float32)
    methods = {
        "exact": Exact(),
        "pooled": Pooled(),
        "binary": Binary(),
        "muvera": Muvera(),
        "ivfpq": TokenANN("ivfpq"),
        "hnsw": TokenANN("hnsw"),
        "codes": Codes(),
    }
    out = {}
    for key in a.methods.split(","):
        m = methods[key]
        t0 = time.perf_counter()
        m.build(v16, offs, sample)
        build = time.perf_counter() - t0
        runs = []
        for _ in range(a.runs):
            lat, rec, cpu = [], [], []
            for qi, q in enumerate(qs):
                t1, c1 = time.perf_counter(), time.process_time()
                c = m.candidates(q, a.depth)
                lat.append(time.perf_counter() - t1)
                cpu.append(time.process_time() - c1)
                rec.append(recall10(exact[qi], c))
            runs.append((pct(lat, 50), pct(lat, 95), float(np.mean(rec)), pct(cpu, 50)))
        r = {
            "name": m.name,
            "build_s": round(build, 1),
            "bytes_per_page": round(m.bytes_per_page),
            "p50_ms": round(1000 * statistics.median(x[0] for x in runs), 1),
            "p95_ms": round(1000 * statistics.median(x[1] for x in runs), 1),
            "recall10": round(statistics.median(x[2] for x in runs), 3),
            "cpu_p50_ms": round(1000 * statistics.median(x[3] for x in runs), 1),
            "load": os.getloadavg()[0],
        }
        out[key] = r
        print(json.dumps(r), flush=True)
        del m
        methods[key] = None
    return out


# ------------------------------------------------------------------ the first stage alone at scale
def stream_build(
    g: PageGenerator,
    n_pages: int,
    qs: list[np.ndarray],
    s: fs.Settings,
    batch: int = 500,
    with_exact: bool = True,
    pages: tuple[int, int] | None = None,
):
    """Train on the first pages, then one streamed pass: codes of every page and (optionally)
    the exact scores of every query against every page.  Nothing but codes is kept.  ``pages``
    ``(start, stop)`` codes only that range (a shard: the codebook is the same in every shard,
    trained on the same first pages with the same seed)."""
    t0 = time.perf_counter()
    sv, _ = g.pages(0, max(1, int(np.ceil(s.train_vectors / 750))))
    coarse, cents = fs.train_codebook(sv, s)
    train = time.perf_counter() - t0
    del sv
    start, stop = pages or (0, n_pages)
    exact = np.zeros((len(qs), stop - start), np.float32) if with_exact else None
    parts, counts = [], []
    t_gen = t_codes = t_exact = 0.0
    for a, v, o in g.batches(stop, batch, start=start):
        a -= start
        t1 = time.perf_counter()
        c, n = fs.page_code_sets(fs.assign(v, coarse, cents), o, len(cents))
        t2 = time.perf_counter()
        parts.append(c)
        counts.append(n)
        if with_exact:
            exact[:, a : a + len(n)] = maxsim_pages(qs, v, o)
        t3 = time.perf_counter()
        t_codes += t2 - t1
        t_exact += t3 - t2
        if (a // batch) % 100 == 0:
            print(f"  {a + len(n)}/{stop - start} pages, {time.perf_counter() - t0:.0f} s", flush=True)
    t4 = time.perf_counter()
    ix = fs.assemble(cents, parts, counts)
    t_asm = time.perf_counter() - t4
    total = time.perf_counter() - t0
    t_gen = total - train - t_codes - t_exact - t_asm
    return (
        ix,
        exact,
        {
            "train_s": round(train, 1),
            "codes_s": round(t_codes, 1),
            "assemble_s": round(t_asm, 1),
            "generate_s": round(t_gen, 1),
            "exact_s": round(t_exact, 1),
            "build_s_without_generation_and_exact": round(train + t_codes + t_asm, 1),
        },
    )


def query_first_stage(ix: fs.CodeIndex, qs, exact, s: fs.Settings, runs: int, depth: int, sources=None):
    out = []
    found = []
    for _ in range(runs):
        lat, rec, cpu = [], [], []
        for qi, q in enumerate(qs):
            t1, c1 = time.perf_counter(), time.process_time()
            c = ix.candidates(q, s, depth=depth)
            lat.append(time.perf_counter() - t1)
            cpu.append(time.process_time() - c1)
            if exact is not None:
                rec.append(recall10(exact[qi], c))
            if sources is not None:
                found.append(int(sources[qi]) in set(c.tolist()))
        out.append((pct(lat, 50), pct(lat, 95), float(np.mean(rec)) if rec else None, pct(cpu, 50), pct(cpu, 95)))
    return {
        "p50_ms": round(1000 * statistics.median(x[0] for x in out), 1),
        "p95_ms": round(1000 * statistics.median(x[1] for x in out), 1),
        "cpu_p50_ms": round(1000 * statistics.median(x[3] for x in out), 1),
        "cpu_p95_ms": round(1000 * statistics.median(x[4] for x in out), 1),
        "load": os.getloadavg()[0],
        "candidate_recall10": None if exact is None else round(statistics.median(x[2] for x in out), 3),
        "source_page_in_candidates": None if sources is None else round(float(np.mean(found)), 3),
    }


_ARRAYS = ("centroids", "code_offsets", "codes", "inv_offsets", "inv_entries")


def _save_built(d: Path, ix: fs.CodeIndex, exact, times: dict) -> None:
    d.mkdir(parents=True, exist_ok=True)
    for name in _ARRAYS:
        np.save(d / f"{name}.npy", getattr(ix, name))
    if exact is not None:
        np.save(d / "exact.npy", exact)
    (d / "times.json").write_text(json.dumps(times))


def _load_built(d: Path):
    arrays = {name: np.load(d / f"{name}.npy", mmap_mode="r") for name in _ARRAYS}
    arrays["centroids"] = np.array(arrays["centroids"])  # in RAM, as the live index holds them
    ix = fs.CodeIndex(**arrays)
    exact = np.load(d / "exact.npy") if (d / "exact.npy").exists() else None
    return ix, exact, json.loads((d / "times.json").read_text())


def _assemble_shards(d: Path):
    """One first stage from the ``shard-I-of-N`` folders under ``d`` (in page order); the build
    times are the shards' summed (each ran on its own core)."""
    shards = sorted(d.glob("shard-*-of-*"), key=lambda p: int(p.name.split("-")[1]))
    loaded = [_load_built(p) for p in shards]
    t0 = time.perf_counter()
    ix0 = loaded[0][0]
    codes = [np.asarray(x.codes) for x, _, _ in loaded]
    counts = [np.diff(np.asarray(x.code_offsets)) for x, _, _ in loaded]
    ix = fs.assemble(np.asarray(ix0.centroids), codes, counts)
    exact = None if loaded[0][1] is None else np.concatenate([e for _, e, _ in loaded], axis=1)
    times = {k: round(sum(t[k] for _, _, t in loaded), 1) for k in loaded[0][2]}
    times["train_s"] = loaded[0][2]["train_s"]  # every shard trains the same codebook
    times["assemble_s"] = round(time.perf_counter() - t0, 1)
    times["build_s_without_generation_and_exact"] = round(times["train_s"] + times["codes_s"] + times["assemble_s"], 1)
    times["shards"] = len(shards)
    return ix, exact, times


def settings_from(a) -> fs.Settings:
    """The index settings, with the codebook size and training sample given on the command line."""
    s = fs.Settings()
    s = dataclasses.replace(s, coarse=a.coarse or s.coarse, fine=a.fine or s.fine)
    return dataclasses.replace(s, train_vectors=a.train_vectors or max(s.train_vectors, 16 * s.n_centroids))


def cmd_million(a) -> dict:
    g = PageGenerator(PageSpec(seed=a.seed))
    rng = np.random.default_rng(a.seed + 1)
    sources = rng.choice(a.pages, a.queries, replace=False)
    qs = [g.query(int(p)) for p in sources]
    s = settings_from(a)
    if a.shard:  # one of several processes coding a range of the pages (one core each)
        i, n = (int(x) for x in a.shard.split("/"))
        lo, hi = a.pages * i // n, a.pages * (i + 1) // n
        ix, exact, times = stream_build(g, a.pages, qs, s, with_exact=not a.no_exact, pages=(lo, hi))
        _save_built(a.save / f"shard-{i}-of-{n}", ix, exact, times)
        return {"shard": a.shard, "pages": [lo, hi], **times}
    if a.assemble:  # the shards' codes joined into one first stage, saved as --save does
        ix, exact, times = _assemble_shards(a.save)
        _save_built(a.save, ix, exact, times)
    if a.load or a.assemble:  # the index and exact scores a previous run saved: query them again
        ix, exact, times = _load_built(a.load or a.save)
    else:
        ix, exact, times = stream_build(g, a.pages, qs, s, with_exact=not a.no_exact)
        if a.save:
            _save_built(a.save, ix, exact, times)
    c = ix
    nbytes = sum(x.nbytes for x in (c.centroids, c.code_offsets, c.codes, c.inv_offsets, c.inv_entries))
    res = {
        "pages": a.pages,
        "queries": a.queries,
        "centroids": len(c.centroids),
        **times,
        "first_stage_bytes": nbytes,
        "bytes_per_page": round(nbytes / a.pages),
        "codes_per_page": round(len(c.codes) / a.pages, 1),
        "peak_rss_gib": round(rss_gib(), 2),
    }
    for depth in (100, 200):
        res[f"depth{depth}"] = query_first_stage(ix, qs, exact, s, a.runs, depth, sources)
    print(json.dumps(res), flush=True)
    return res


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    c = sub.add_parser("compare")
    c.add_argument("--pages", type=int, default=10000)
    c.add_argument("--queries", type=int, default=50)
    c.add_argument("--runs", type=int, default=3)
    c.add_argument("--depth", type=int, default=100)
    c.add_argument("--methods", default="codes,muvera,ivfpq,hnsw,pooled,binary,exact")
    m = sub.add_parser("million")
    m.add_argument("--pages", type=int, default=1_000_000)
    m.add_argument("--queries", type=int, default=20)
    m.add_argument("--runs", type=int, default=3)
    m.add_argument("--no-exact", action="store_true")
    m.add_argument("--save", type=Path, help="keep the built first stage and exact scores here")
    m.add_argument("--load", type=Path, help="query a first stage saved by --save instead of building one")
    m.add_argument("--shard", help="I/N: code only the I-th of N ranges of the pages into --save/shard-I-of-N")
    m.add_argument("--assemble", action="store_true", help="join the shards under --save, save and query it")
    m.add_argument("--coarse", type=int, help="first-level centroids (default: the index's)")
    m.add_argument("--fine", type=int, help="second-level centroids per first-level one (default: the index's)")
    m.add_argument("--train-vectors", type=int, help="codebook sample (default: 16 per centroid, at least the index's)")
    from bench_live import add_live_commands  # the real-store half

    add_live_commands(sub)
    for p in sub.choices.values():
        p.add_argument("--seed", type=int, default=0)
        p.add_argument("--out", type=Path, default=None, help="also write the results here (JSON)")
    a = ap.parse_args()
    res = {"compare": cmd_compare, "million": cmd_million}.get(a.cmd, getattr(a, "func", None))(a)
    if a.out:
        a.out.write_text(json.dumps(res, indent=1))


if __name__ == "__main__":
    main()
