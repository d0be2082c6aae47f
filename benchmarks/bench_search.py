"""Search benchmark: exact MaxSim over a large synthetic store, and the approximate index.

A synthetic ColQwen table of ``--docs`` documents x ``--vectors`` random unit vectors (128-d,
float16, ~3.8 GB for the defaults) is written once under ``--path`` (reused by later runs).
``--queries`` queries of ``--q-tokens`` tokens are "planted": each is ``q-tokens`` vectors of one
random document plus noise (cosine ~0.7 to their source), so every query has a real answer; a
second set of purely random queries is used for recall as well.

Measured, each ``--runs`` times (medians reported):

* exact search, all queries in one scan (latency per query) and one query per scan;
* achieved GFLOP/s (``2 * q_tokens * total_vectors * 128`` per query) against a plain torch float32
  ``(T, 128) @ (128, n)`` matmul streaming an fp32 matrix of the same tile width from memory,
  measured in the same run right before (the machine is shared: only ratios are comparable);
* the bare Lance scan of the embedding column (the I/O floor of a single-query search);
* the approximate index (build time once; latency; recall@10 against exact).

    uv run python benchmarks/bench_search.py --runs 3
    uv run python benchmarks/bench_search.py --docs 2000 --runs 3       # a quick smaller store
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow as pa

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from nomic_memory.search.approx import recall_at_k  # noqa: E402
from nomic_memory.search.index import Index, to_hits  # noqa: E402
from nomic_memory.search.scoring import Scorer, default_workers, exact_scan, multivector_matrix  # noqa: E402
from nomic_memory.store.table import Store, TableInfo, schema_for  # noqa: E402

DIM = 128
TABLE = "synthetic"


def unit(rng, n: int, dim: int = DIM) -> np.ndarray:
    x = rng.standard_normal((n, dim), dtype=np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    return x


def clustered_doc_vectors(
    rng, centers: np.ndarray, n_docs: int, vectors: int, words: int = 40, spread: float = 0.5
) -> np.ndarray:
    """Vectors with the structure of real page embeddings: each document draws its patches from a
    few (``words``) of the corpus-wide ``centers`` (background, text, figure patches recur within a
    page and across pages), each patch a unit vector at cosine ~0.9 to its center."""
    out = np.empty((n_docs * vectors, DIM), np.float32)
    for d in range(n_docs):
        mine = rng.choice(len(centers), size=words, replace=False)
        pick = centers[mine[rng.integers(0, words, size=vectors)]]
        x = pick + spread * unit(rng, vectors)
        out[d * vectors : (d + 1) * vectors] = x / np.linalg.norm(x, axis=1, keepdims=True)
    return out


def build_store(
    path: Path,
    docs: int,
    vectors: int,
    seed: int = 0,
    batch_docs: int = 200,
    storage_version: str | None = None,
    structure: str = "random",
) -> None:
    """Write the synthetic table (all the columns nomic-memory writes) in streamed batches.

    ``storage_version``: the Lance file format (None: what ``Store`` creates today).
    ``structure``: ``random`` unit vectors, or ``clustered`` (see ``clustered_doc_vectors``)."""
    info = TableInfo(
        "synthetic", f"synthetic-{structure}-{docs}x{vectors}-s{seed}", "colqwen", DIM, "", "float16", seed
    )
    store = Store(path)
    if TABLE in store.table_names():
        t = store.open_table(TABLE)
        if t.info == info and t.count() == docs:
            print(f"reusing {path} ({docs} docs x {vectors} vectors)", flush=True)
            return
        store.db.drop_table(TABLE)
    schema = schema_for(info)
    if storage_version:
        store.db.create_table(TABLE, schema=schema, data_storage_version=storage_version)
        t = store.open_table(TABLE)
    else:
        t = store.create_or_open(TABLE, info)
    rng = np.random.default_rng(seed)
    centers = unit(rng, 4096)
    t0 = time.perf_counter()

    def batches():
        for a in range(0, docs, batch_docs):
            n = min(batch_docs, docs - a)
            if structure == "clustered":
                flat = clustered_doc_vectors(rng, centers, n, vectors).astype(np.float16)
            else:
                flat = unit(rng, n * vectors).astype(np.float16)
            inner = pa.FixedSizeListArray.from_arrays(pa.array(flat.reshape(-1)), DIM)
            emb = pa.ListArray.from_arrays(pa.array(np.arange(0, n * vectors + 1, vectors, dtype=np.int32)), inner)
            cols = {
                "root": pa.array(["/synthetic"] * n),
                "path": pa.array([f"doc{i:07d}.png" for i in range(a, a + n)]),
                "page": pa.array(np.zeros(n, np.int32)),
                "content_hash": pa.array([""] * n),
                "size": pa.array(np.zeros(n, np.int64)),
                "mtime": pa.array(np.zeros(n)),
                "width": pa.array(np.zeros(n, np.int32)),
                "height": pa.array(np.zeros(n, np.int32)),
                "n_vectors": pa.array(np.full(n, vectors, np.int32)),
                "model_id": pa.array(["synthetic"] * n),
                "model_revision": pa.array([info.revision] * n),
                "proj_fingerprint": pa.array([""] * n),
                "dtype": pa.array(["float16"] * n),
                "embedded_at": pa.array(np.zeros(n, "datetime64[ms]")).cast(pa.timestamp("ms", tz="UTC")),
                "embedding": emb.cast(schema.field("embedding").type),
            }
            yield pa.RecordBatch.from_arrays([cols[f.name] for f in schema], schema=schema)
            if (a // batch_docs) % 10 == 0:
                print(f"  wrote {a + n}/{docs} docs ({time.perf_counter() - t0:.0f} s)", flush=True)

    t.table.add(pa.RecordBatchReader.from_batches(schema, batches()))
    print(f"built {path}: {docs} docs x {vectors} vectors in {time.perf_counter() - t0:.1f} s", flush=True)


def planted_queries(path: Path, n: int, q_tokens: int, docs: int, seed: int = 1, noise: float = 1.0):
    """Queries made of ``q_tokens`` of a random document's vectors plus Gaussian noise."""
    import lance

    rng = np.random.default_rng(seed)
    ds = lance.dataset(str(path / f"{TABLE}.lance"))
    src = rng.choice(docs, size=n, replace=False if n <= docs else True)
    t = ds.take(sorted(set(src.tolist())), columns=["path", "embedding"])
    by_path = {p: i for i, p in enumerate(t.column("path").to_pylist())}
    emb = t.column("embedding").combine_chunks()
    out = []
    for d in src:
        v, _ = multivector_matrix(emb.slice(by_path[f"doc{d:07d}.png"], 1))
        v = v.astype(np.float32)
        pick = v[rng.choice(v.shape[0], size=q_tokens, replace=False)]
        q = pick + noise * unit(rng, q_tokens)  # cos(q_i, source) ~ 0.7
        out.append(q / np.linalg.norm(q, axis=1, keepdims=True))
    return out, [f"doc{d:07d}.png" for d in src]


def timed(f):
    c0, w0 = time.process_time(), time.perf_counter()
    out = f()
    return out, time.perf_counter() - w0, time.process_time() - c0


_POOL = {}


def plain_matmul_rate(T: int, tile: int, total: int, pool_vectors: int, workers: int) -> dict:
    """Throughput of a plain torch float32 ``(T, 128) @ (128, tile)`` matmul (preallocated output)
    cycling through an fp32 matrix of ``pool_vectors`` rows (bigger than the caches) until
    ``total`` columns are done, run two ways: one ``torch.mm`` per tile with torch's default
    threading, and the tiles split between ``workers`` Python threads with single-threaded torch
    (what the search engine does).  The better of the two is the baseline."""
    from concurrent.futures import ThreadPoolExecutor

    import torch

    if pool_vectors not in _POOL:
        _POOL.clear()
        _POOL[pool_vectors] = torch.randn(pool_vectors, DIM)
    X = _POOL[pool_vectors]
    Q = torch.randn(T, DIM)
    n_tiles = max(1, total // tile)
    starts = [(i * tile) % (pool_vectors - tile + 1) for i in range(n_tiles)]
    fl = 2 * T * DIM * tile * n_tiles / 1e9

    def run(part):
        out = torch.empty(T, tile)
        for s in part:
            torch.mm(Q, X[s : s + tile].T, out=out)

    run(starts[:2])
    _, w1, c1 = timed(lambda: run(starts))
    prev = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with ThreadPoolExecutor(workers) as ex:
            parts = [starts[i::workers] for i in range(workers)]
            _, w2, c2 = timed(lambda: list(ex.map(run, parts)))
    finally:
        torch.set_num_threads(prev)
    best = max(fl / w1, fl / w2)
    return {
        "gflops": best,
        "gflops_per_cpu_s": max(fl / c1, fl / c2),
        "torch_threads_gflops": fl / w1,
        "python_threads_gflops": fl / w2,
    }


def bare_scan_seconds(idx: Index) -> tuple[float, float]:
    """(wall, CPU) seconds of reading the embedding column, doing nothing with it."""
    ds = idx.table.table.to_lance()

    def run():
        for b in ds.to_batches(columns=["embedding"], batch_size=32, scan_in_order=True):
            _ = b.num_rows

    _, w, c = timed(run)
    return w, c


def med(xs):
    return statistics.median(xs)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--path", type=Path, default=Path("/tmp/nomic_memory_bench_search"))
    ap.add_argument("--docs", type=int, default=20_000)
    ap.add_argument("--vectors", type=int, default=750)
    ap.add_argument("--queries", type=int, default=100)
    ap.add_argument("--q-tokens", type=int, default=20)
    ap.add_argument("--k", type=int, default=10)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--single-runs", type=int, default=None, help="single-query scans (default: --runs)")
    ap.add_argument("--pool-factor", type=int, default=4)
    ap.add_argument("--rerank", type=int, default=100)
    ap.add_argument(
        "--lance-index", action="store_true", help="also build and measure LanceDB's IVF_PQ multivector index"
    )
    ap.add_argument("--skip-batched", action="store_true")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument(
        "--storage-version", default=None, help="Lance file format of the synthetic table (default: what Store creates)"
    )
    ap.add_argument("--skip-approx", action="store_true")
    ap.add_argument("--skip-single", action="store_true")
    ap.add_argument(
        "--paired", type=int, default=0, help="alternate engine/plain-matmul this many times (see paired())"
    )
    ap.add_argument("--paired-docs", type=int, default=2000, help="documents per paired batched measurement")
    ap.add_argument(
        "--structure",
        choices=["random", "clustered"],
        default="random",
        help="random unit vectors (the issue's benchmark) or clustered ones (recall on realistic structure)",
    )
    ap.add_argument("--out", type=Path, default=None, help="write the figures as JSON here")
    a = ap.parse_args(argv)

    import torch

    if a.threads:
        torch.set_num_threads(a.threads)
    store_dir = a.path.expanduser().resolve()
    build_store(store_dir, a.docs, a.vectors, storage_version=a.storage_version, structure=a.structure)
    idx = Index.open(store_dir, TABLE)
    total = a.docs * a.vectors
    flop_q = 2 * a.q_tokens * total * DIM
    queries, sources = planted_queries(store_dir, a.queries, a.q_tokens, a.docs)
    rng = np.random.default_rng(7)
    random_q = [unit(rng, a.q_tokens) for _ in range(a.queries)]
    res: dict = {
        "structure": a.structure,
        "docs": a.docs,
        "vectors_per_doc": a.vectors,
        "total_vectors": total,
        "dim": DIM,
        "storage": "float16",
        "queries": a.queries,
        "q_tokens": a.q_tokens,
        "k": a.k,
        "torch_threads": torch.get_num_threads(),
        "cpus": os.cpu_count(),
        "bytes_on_disk": sum(f.stat().st_size for f in (store_dir / f"{TABLE}.lance").rglob("*") if f.is_file()),
    }
    print(json.dumps({k: v for k, v in res.items()}), flush=True)

    # ---- exact, all queries in one scan
    T_all = a.q_tokens * a.queries
    tile_all = Scorer(queries, "colqwen", DIM).tile_vectors
    tile_one = Scorer(queries[:1], "colqwen", DIM).tile_vectors
    ds = idx.table.table.to_lance()
    exact_hits = None
    workers = default_workers()
    res["scan_workers"] = workers

    def measure(label, qs, T, tile, base_total, pool):
        rows = []
        for r in range(a.runs if label == "batched" else (a.single_runs or a.runs)):
            base = plain_matmul_rate(T, tile, base_total, pool, workers)
            bw, bc = base["gflops"], base["gflops_per_cpu_s"]
            q = qs if label == "batched" else [qs[r % len(qs)]]
            top, w, c = timed(lambda: exact_scan(ds, idx.info, q, a.k))
            fl = flop_q * len(q) / 1e9
            row = {
                "wall_s": w,
                "cpu_s": c,
                "gflops": fl / w,
                "gflops_per_cpu_s": fl / c,
                "plain_gflops": bw,
                "plain_gflops_per_cpu_s": bc,
                "fraction": fl / w / bw,
                "fraction_cpu": (fl / c) / bc,
                "plain_torch_threads_gflops": base["torch_threads_gflops"],
                "plain_python_threads_gflops": base["python_threads_gflops"],
            }
            if label == "single":
                row["bare_scan_wall_s"], row["bare_scan_cpu_s"] = bare_scan_seconds(idx)
            rows.append(row)
            print(
                f"[{label} run {r + 1}] {w:.2f} s wall ({c:.2f} s CPU) for {len(q)} quer{'ies' if len(q) > 1 else 'y'} "
                f"= {w / len(q) * 1e3:.0f} ms/query, {fl / w:.1f} GFLOP/s; plain matmul {bw:.1f} GFLOP/s "
                f"-> {row['fraction']:.1%} (per CPU-second: {row['fraction_cpu']:.1%})"
                + (
                    f"; bare Lance scan {row['bare_scan_wall_s']:.2f} s ({row['bare_scan_cpu_s']:.2f} s CPU)"
                    if label == "single"
                    else ""
                ),
                flush=True,
            )
        m = {key: med([r_[key] for r_ in rows]) for key in rows[0]}
        m["ms_per_query"] = m["wall_s"] / (len(qs) if label == "batched" else 1) * 1e3
        m["runs"] = rows
        return m, top

    def paired(label, qs, T, tile, docs_limit, reps):
        """Engine and plain matmul alternated ``reps`` times on the same amount of work (the first
        ``docs_limit`` documents): the ratio of each adjacent pair, then the median.  On a shared
        machine this is the fair comparison: a long scan and a baseline measured minutes apart
        see different loads."""
        rows = []
        n_vec = min(docs_limit, a.docs) * a.vectors
        fl = 2 * T * n_vec * DIM / 1e9
        for r in range(reps):
            q = qs if label == "batched" else [qs[r % len(qs)]]
            _, w, c = timed(lambda: exact_scan(ds, idx.info, q, a.k, limit=docs_limit))
            base = plain_matmul_rate(T, tile, n_vec, 1 << 20 if T > 100 else 1 << 21, workers)
            rows.append(
                {
                    "gflops": fl / w,
                    "gflops_per_cpu_s": fl / c,
                    "plain_gflops": base["gflops"],
                    "plain_gflops_per_cpu_s": base["gflops_per_cpu_s"],
                    "fraction": fl / w / base["gflops"],
                    "fraction_cpu": fl / c / base["gflops_per_cpu_s"],
                }
            )
            print(
                f"[paired {label} {r + 1}] engine {fl / w:.1f} GFLOP/s ({fl / c:.1f} per CPU-s), plain "
                f"{base['gflops']:.1f} ({base['gflops_per_cpu_s']:.1f} per CPU-s) -> {rows[-1]['fraction']:.1%} "
                f"(per CPU-s {rows[-1]['fraction_cpu']:.1%})",
                flush=True,
            )
        m = {key: med([r_[key] for r_ in rows]) for key in rows[0]}
        m.update(docs=min(docs_limit, a.docs), reps=reps, runs=rows)
        return m

    if a.paired:
        res["paired_batched"] = paired("batched", queries, T_all, tile_all, a.paired_docs, a.paired)
        res["paired_single"] = paired("single", queries, a.q_tokens, tile_one, a.docs, a.paired)
    if not a.skip_batched:
        res["batched"], top = measure("batched", queries, T_all, tile_all, min(total, 2_000_000), 1 << 20)
        exact_hits = to_hits(top)
        top1 = sum(h[0].path == s_ for h, s_ in zip(exact_hits, sources)) / a.queries
        res["planted_top1_exact"] = top1
        print(f"planted source ranked first by exact search: {top1:.0%}", flush=True)
    if not a.skip_single:
        res["single"], _ = measure("single", queries, a.q_tokens, tile_one, total, 1 << 21)

    res["lance_format"] = ds.data_storage_version
    if a.skip_approx:
        print(json.dumps(res, indent=1))
        if a.out:
            a.out.write_text(json.dumps(res, indent=1))
        return 0
    # ---- approximate: pooled
    t0 = time.perf_counter()
    desc = idx.build_approx_index("pooled", pool_factor=a.pool_factor)
    res["pooled_build_s"] = time.perf_counter() - t0
    res["pooled_vectors"] = desc["pooled_vectors"]
    print(
        f"pooled index: {desc['pooled_vectors']} vectors (from {desc['vectors']}) in {res['pooled_build_s']:.1f} s",
        flush=True,
    )
    if exact_hits is None:
        exact_hits = to_hits(exact_scan(ds, idx.info, queries, a.k))
    exact_random = to_hits(exact_scan(ds, idx.info, random_q, a.k))
    approx = {}
    for name, qs, ex in (("planted", queries, exact_hits), ("random", random_q, exact_random)):
        lat_b, lat_s, rec = [], [], []
        for r in range(a.runs):
            t0 = time.perf_counter()
            hits = idx.search_embeddings(qs, a.k, approx=True, rerank=a.rerank, method="pooled")
            lat_b.append((time.perf_counter() - t0) / len(qs))
            rec.append(recall_at_k(hits, ex, a.k))
            t0 = time.perf_counter()
            idx.search_embeddings([qs[r]], a.k, approx=True, rerank=a.rerank, method="pooled")
            lat_s.append(time.perf_counter() - t0)
        approx[name] = {
            "recall_at_k": med(rec),
            "batched_ms_per_query": med(lat_b) * 1e3,
            "single_ms": med(lat_s) * 1e3,
        }
        print(
            f"pooled approx ({name} queries): recall@{a.k} {med(rec):.3f}, batched {med(lat_b) * 1e3:.0f} ms/query, "
            f"single {med(lat_s) * 1e3:.0f} ms",
            flush=True,
        )
    res["pooled"] = approx

    if a.lance_index:
        t0 = time.perf_counter()
        d = idx.build_approx_index("lance")
        res["lance_build_s"] = time.perf_counter() - t0
        print(f"lance IVF_PQ index: {d} in {res['lance_build_s']:.1f} s", flush=True)
        la = {}
        for name, qs, ex in (("planted", queries, exact_hits), ("random", random_q, exact_random)):
            lat_s, rec = [], []
            for r in range(a.runs):
                t0 = time.perf_counter()
                hits = idx.search_embeddings(qs, a.k, approx=True, rerank=a.rerank, method="lance")
                lat_s.append((time.perf_counter() - t0) / len(qs))
                rec.append(recall_at_k(hits, ex, a.k))
            la[name] = {"recall_at_k": med(rec), "ms_per_query": med(lat_s) * 1e3}
            print(
                f"lance approx ({name} queries): recall@{a.k} {med(rec):.3f}, {med(lat_s) * 1e3:.0f} ms/query",
                flush=True,
            )
        res["lance"] = la
    print(json.dumps(res, indent=1))
    if a.out:
        a.out.write_text(json.dumps(res, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
