"""The live index on a real store (the ``store`` and ``live`` commands of bench_firststage.py).

``store`` writes generator pages into a real nomic-memory table (float16, every column the
embedder writes, checksums included), streamed.  ``live`` measures on it, in one run: building
the index from the stored vectors, the exact scan (batched and one query), the indexed search
(first stage + exact re-rank read from disk), recall@10 against the exact scan, adding 1,000
pages with and without the index kept current, and that a deleted page is never returned.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import statistics
import time
from pathlib import Path

import numpy as np
import pyarrow as pa

from synthetic_pages import DIM, PageGenerator, PageSpec

TABLE = "synthetic"


def _info(pages: int, seed: int):
    from nomic_memory.store.table import TableInfo

    return TableInfo("synthetic", f"synthetic-pages-s{seed}", "colqwen", DIM, "", "float16", seed)


def _batch(g: PageGenerator, schema: pa.Schema, a: int, b: int, info) -> pa.RecordBatch:
    from nomic_memory.store.table import embedding_checksum

    docs = [g.page(p).astype(np.float16) for p in range(a, b)]
    n = len(docs)
    flat = np.concatenate(docs)
    inner = pa.FixedSizeListArray.from_arrays(pa.array(flat.reshape(-1)), DIM)
    offs = np.zeros(n + 1, np.int32)
    offs[1:] = np.cumsum([len(d) for d in docs])
    emb = pa.ListArray.from_arrays(pa.array(offs), inner)
    now = dt.datetime.now(dt.UTC)
    cols = {
        "root": pa.array(["/synthetic"] * n),
        "path": pa.array([f"page{i:07d}.png" for i in range(a, b)]),
        "page": pa.array(np.zeros(n, np.int32)),
        "content_hash": pa.array([f"h{i}" for i in range(a, b)]),
        "size": pa.array(np.zeros(n, np.int64)),
        "mtime": pa.array(np.zeros(n)),
        "width": pa.array(np.zeros(n, np.int32)),
        "height": pa.array(np.zeros(n, np.int32)),
        "n_vectors": pa.array([len(d) for d in docs], pa.int32()),
        "model_id": pa.array(["synthetic"] * n),
        "model_revision": pa.array([info.revision] * n),
        "proj_fingerprint": pa.array([""] * n),
        "dtype": pa.array(["float16"] * n),
        "embedded_at": pa.array([now] * n, pa.timestamp("ms", tz="UTC")),
        "embedding_checksum": pa.array([embedding_checksum(d) for d in docs], pa.int64()),
        "embedding": emb.cast(schema.field("embedding").type),
    }
    return pa.RecordBatch.from_arrays([cols[f.name] for f in schema], schema=schema)


def cmd_store(a) -> dict:
    from nomic_memory.store.table import Store

    g = PageGenerator(PageSpec(seed=a.seed))
    info = _info(a.pages, a.seed)
    st = Store(a.path)
    t = st.create_or_open(TABLE, info)
    have = t.count()
    schema = t.table.schema
    t0 = time.perf_counter()

    def batches():
        for s in range(have, a.pages, 200):
            yield _batch(g, schema, s, min(s + 200, a.pages), info)
            if (s // 200) % 25 == 0:
                print(f"  wrote {min(s + 200, a.pages)}/{a.pages} pages ({time.perf_counter() - t0:.0f} s)", flush=True)

    if have < a.pages:
        t.table.add(pa.RecordBatchReader.from_batches(schema, batches()))
    res = {"pages": t.count(), "seconds": round(time.perf_counter() - t0, 1), "disk_bytes": st.disk_bytes(TABLE)}
    print(json.dumps(res), flush=True)
    return res


def rss_now_gib() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 2**20
    return 0.0


def _time(f):
    t0 = time.perf_counter()
    r = f()
    return r, time.perf_counter() - t0


def cmd_live(a) -> dict:
    from nomic_memory.search import Index
    from nomic_memory.store.table import Store

    st = Store(a.path, create=False)
    t = st.open_table(TABLE)
    n = t.count()
    g = PageGenerator(PageSpec(seed=a.seed))
    rng = np.random.default_rng(a.seed + 1)
    qs = [g.query(int(p)) for p in rng.choice(n, a.queries, replace=False)]
    idx = Index(st, t, index_min_rows=0)
    res: dict = {"pages": n, "queries": a.queries}
    li = idx.live_index()
    if a.rebuild or li.load() is None:
        state, secs = _time(li.rebuild)
        res["build_s"] = round(secs, 1)
    state = li.load()
    res["first_stage_bytes"] = state.nbytes()
    res["bytes_per_page"] = round(state.nbytes() / state.n)
    exact, secs = _time(lambda: idx.search_embeddings(qs, 10, exact=True))
    res["exact_batched_s_per_query"] = round(secs / len(qs), 3)
    singles = [_time(lambda q=q: idx.search_embeddings([q], 10, exact=True))[1] for q in qs[: a.exact_singles]]
    res["exact_single_s"] = [round(x, 2) for x in singles]
    runs = []
    ds = t.table.to_lance()
    for _ in range(a.runs):
        lat, first, rec, cpu = [], [], [], []
        for qi, q in enumerate(qs):
            c0 = time.process_time()
            hits, secs = _time(lambda q=q: idx.search_embeddings([q], 10))
            cpu.append(time.process_time() - c0)
            lat.append(secs)
            view = li.view(ds)
            _, fsecs = _time(lambda q=q, v=view: idx._candidates(v, [q], 100, None))
            first.append(fsecs)
            want = {h.path for h in exact[qi]}
            rec.append(len(want & {h.path for h in hits[0]}) / len(want))
        runs.append(
            (
                np.percentile(lat, 50),
                np.percentile(lat, 95),
                np.percentile(first, 50),
                np.percentile(first, 95),
                np.mean(rec),
                np.percentile(cpu, 50),
                np.percentile(cpu, 95),
            )
        )
    med = [statistics.median(r[i] for r in runs) for i in range(7)]
    res.update(
        {
            "search_p50_ms": round(1000 * med[0], 1),
            "search_p95_ms": round(1000 * med[1], 1),
            "first_stage_p50_ms": round(1000 * med[2], 1),
            "first_stage_p95_ms": round(1000 * med[3], 1),
            "rerank_from_disk_p50_ms": round(1000 * (med[0] - med[2]), 1),
            "recall10": round(med[4], 3),
            "search_cpu_p50_ms": round(1000 * med[5], 1),
            "search_cpu_p95_ms": round(1000 * med[6], 1),
            "load": os.getloadavg()[0],
            "rss_gib_after_searches": round(rss_now_gib(), 2),
        }
    )
    print(json.dumps(res), flush=True)
    res["add_1000"] = _add_pages(a, st, t, idx, g, n)
    res["deleted_never_returned"] = _delete_check(st, t, idx, qs[0])
    print(json.dumps(res), flush=True)
    return res


def _add_pages(a, st, t, idx, g: PageGenerator, n: int) -> dict:
    """Add 1,000 pages in 20 commits of 50 (as embed commits batch by batch): without the index
    (table writes only), then 1,000 more with the index caught up (one search afterwards, which
    indexes them).  The added pages are deleted again afterwards."""
    schema = t.table.schema
    info = t.info
    out = {}
    for label, start in (("without_index_s", n + 10_000), ("with_index_s", n + 20_000)):
        t0 = time.perf_counter()
        for s in range(start, start + 1000, 50):
            t.table.add(pa.Table.from_batches([_batch(g, schema, s, s + 50, info)]))
        if label == "with_index_s":
            t1 = time.perf_counter()
            idx.search_embeddings([g.query(start + 7)], 10)
            out["catch_up_and_search_s"] = round(time.perf_counter() - t1, 2)
        out[label] = round(time.perf_counter() - t0, 2)
    out["ratio"] = round(out["with_index_s"] / out["without_index_s"], 2)
    t.table.delete("path >= 'page" + f"{n:07d}" + "'")
    return out


def _delete_check(st, t, idx, q) -> dict:
    hits = idx.search_embeddings([q], 10)[0]
    top = hits[0]
    row = t.table.to_lance().to_table(filter=f"path = '{top.path}'")
    t.table.delete(f"path = '{top.path}'")
    after = idx.search_embeddings([q], 10)[0]
    t.table.add(row)  # put it back
    return {"deleted": top.path, "returned_after_delete": top.path in {h.path for h in after}, "via": after[0].via}


def add_live_commands(sub) -> None:
    s = sub.add_parser("store")
    s.add_argument("--pages", type=int, default=100_000)
    s.add_argument("--path", type=Path, required=True)
    s.set_defaults(func=cmd_store)
    lv = sub.add_parser("live")
    lv.add_argument("--path", type=Path, required=True)
    lv.add_argument("--queries", type=int, default=50)
    lv.add_argument("--runs", type=int, default=3)
    lv.add_argument("--exact-singles", type=int, default=3)
    lv.add_argument("--rebuild", action="store_true")
    lv.set_defaults(func=cmd_live)
