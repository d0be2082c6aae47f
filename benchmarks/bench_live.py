"""The live index on a real store (the ``store`` and ``live`` commands of bench_firststage.py).

``store`` writes generator pages into a real nomic-memory table (float16, every column the
embedder writes, checksums included), streamed.  ``live`` measures on it, in one run: building
the index from the stored vectors, the exact scan (batched and one query), the indexed search
(first stage + exact re-rank read from disk), recall@10 against the exact scan, adding 1,000
pages with and without the index kept current, and that a deleted page is never returned.
``add`` runs only the adding measurement: bare commits and ``nomic-memory import`` of 1,000 pages,
each without and with the index (rows coded by the writer, folded in by the next update).
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


def rss_now_gib(field: str = "VmRSS") -> float:
    """This process's resident memory (``VmRSS``), or one part of it: ``RssAnon`` (its own
    memory) or ``RssFile`` (pages of mapped files, such as the re-rank's memory-mapped vectors:
    page cache, shared and reclaimable)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 2**20
    return 0.0


def reference_ms() -> float:
    """The machine's speed at the moment: a fixed single-threaded workload (1,000 products of a
    20 x 128 and a 128 x 2,048 float32 matrix, the re-rank's kind of work), median of 3, in ms.
    On the shared 2-core machine this varied by 1.5x within an hour; figures taken at different
    moments compare through it."""
    import torch

    q, x = torch.randn(20, 128), torch.randn(2048, 128)
    saved = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        times = []
        for _ in range(3):
            t0 = time.perf_counter()
            for _ in range(1000):
                torch.mm(q, x.T)
            times.append(time.perf_counter() - t0)
    finally:
        torch.set_num_threads(saved)
    return round(1000 * statistics.median(times), 1)


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
    res: dict = {"pages": n, "queries": a.queries, "reference_ms_before": reference_ms()}
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
            hits, secs = _time(lambda q=q: idx.search_embeddings([q], 10, rerank=a.rerank))
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
            "reference_ms_after": reference_ms(),
            "rss_gib_after_searches": round(rss_now_gib(), 2),
            "rss_anon_gib_after_searches": round(rss_now_gib("RssAnon"), 2),
            "rss_file_gib_after_searches": round(rss_now_gib("RssFile"), 2),
        }
    )
    if a.rerank:
        res["rerank"] = a.rerank
    print(json.dumps(res), flush=True)
    if a.searches_only:
        return res
    res["add_1000"] = _add_pages(a, st, t, idx, g, n, a.runs)
    res["deleted_never_returned"] = _delete_check(st, t, idx, qs[0])
    print(json.dumps(res), flush=True)
    return res


def _records(g: PageGenerator, a: int, b: int) -> list:
    """Pages ``a..b`` as the records embed and import commit (float16 vectors, as stored)."""
    from nomic_memory.store import Record

    return [
        Record("/synthetic", f"page{i:07d}.png", f"h{i}", 0, 0.0, 0, 0, g.page(i).astype(np.float16), "float16")
        for i in range(a, b)
    ]


def _commit_pages(t, recs: list, per_commit: int = 50) -> float:
    """Commit ``recs`` as embed and import do (``upsert`` of new keys, one commit per batch);
    returns the seconds taken."""
    t.stored_keys("/synthetic")  # what a run reads first: later commits look up only others' writes
    t0 = time.perf_counter()
    for i in range(0, len(recs), per_commit):
        batch = recs[i : i + per_commit]
        t.upsert(batch, known_new={(r.path, r.page) for r in batch})
    return time.perf_counter() - t0


def _parquet(g: PageGenerator, a: int, b: int, path: Path) -> Path:
    """Pages ``a..b`` as a plain parquet for ``nomic-memory import`` (path, page, embedding)."""
    import pyarrow.parquet as pq

    docs = [g.page(i).astype(np.float16) for i in range(a, b)]
    nv = sum(len(d) for d in docs)
    inner = pa.ListArray.from_arrays(
        pa.array(np.arange(0, nv * DIM + 1, DIM, dtype=np.int32)), pa.array(np.concatenate(docs).reshape(-1))
    )
    outer = pa.ListArray.from_arrays(pa.array(np.cumsum([0] + [len(d) for d in docs]).astype(np.int32)), inner)
    cols = {"path": [f"page{i:07d}.png" for i in range(a, b)], "page": pa.array(np.zeros(b - a, np.int32))}
    pq.write_table(pa.table({**cols, "embedding": outer}), path)
    return path


def _import_once(st, t, li, g: PageGenerator, start: int, pages: int, tmp: Path, with_first: bool = False) -> dict:
    """``nomic-memory import`` of ``pages`` new pages (a parquet, commits of 50 rows) without the
    index, then of ``pages`` others with it (coded by the importer, folded by the next update)."""
    from nomic_memory.run.importing import ImportStamp, import_embeddings

    info = t.info
    stamp = ImportStamp(info.model_id, info.revision, info.kind, info.dim, TABLE, info.seed, info.fingerprint or None)
    out: dict = {}
    aside = li.base.with_name(li.base.name + ".aside")
    phases = (("without", start), ("with", start + pages))
    for phase, a in reversed(phases) if with_first else phases:
        src = _parquet(g, a, a + pages, tmp / f"import-{a}.parquet")
        if phase == "without":
            li.base.rename(aside)
        try:
            _, secs = _time(lambda: import_embeddings(src, st, stamp, root="/synthetic", batch_rows=50))
        finally:
            if phase == "without":
                aside.rename(li.base)
        t.refresh()
        if phase == "with":
            view, fold = _time(lambda: li.view(t.table.to_lance()))
            out.update(rows_read_back=view.caught_up, rows_from_writers=view.from_writers, fold_s=fold)
            secs += fold
        out[f"{phase}_index_s"] = secs
        t.delete_paths("/synthetic", [f"page{i:07d}.png" for i in range(a, a + pages)])
        li.view(t.table.to_lance())  # the deletions folded in (not timed)
        src.unlink()
    out["ratio"] = out["with_index_s"] / out["without_index_s"]
    return out


def _add_once(t, li, g: PageGenerator, start: int, pages: int, with_first: bool = False) -> dict:
    """One run: ``pages`` new pages committed with the index moved aside (no index: table writes
    only), and ``pages`` others committed with the index in place (each commit's rows coded by
    the writer) and folded in by the next update of the index; each removed again afterwards.
    ``with_first``: the indexed half first (runs alternate, against drifts of the machine's load)."""
    from nomic_memory.search.liveindex import SEGMENTS

    out: dict = {}
    aside = li.base.with_name(li.base.name + ".aside")
    for phase in ("with", "without") if with_first else ("without", "with"):
        a = start if phase == "without" else start + pages
        recs = _records(g, a, a + pages)
        if phase == "without":
            li.base.rename(aside)
            try:
                out["without_index_s"] = _commit_pages(t, recs)
            finally:
                aside.rename(li.base)
        else:
            out["writes_with_index_s"] = _commit_pages(t, recs)
            out["segments"] = len(list((li.base / SEGMENTS).glob("seg-*.npz")))
            view, secs = _time(lambda: li.view(t.table.to_lance()))
            out["fold_s"] = secs
            out["rows_read_back"] = view.caught_up
            out["rows_from_writers"] = view.from_writers
            out["generation"] = "appended" if view.state.meta.get("base") else "full"
            out["with_index_s"] = out["writes_with_index_s"] + out["fold_s"]
        t.delete_paths("/synthetic", [r.path for r in recs])
        li.view(t.table.to_lance())  # the deletions folded in (not timed)
    out["ratio"] = out["with_index_s"] / out["without_index_s"]
    return out


def _add_pages(a, st, t, idx, g: PageGenerator, n: int, runs: int = 3) -> dict:
    """Add 1,000 pages in 20 commits of 50 (as embed and import commit them), without and with
    the index kept current, ``runs`` times; medians.  The added pages are deleted again."""
    li = idx.live_index()
    li.view(t.table.to_lance())
    per, imp = [], []
    tmp = Path(st.path) / "_bench_import"
    tmp.mkdir(exist_ok=True)
    rounded = lambda d: {k: round(v, 2) if isinstance(v, float) else v for k, v in d.items()}  # noqa: E731
    for r in range(runs):
        per.append(_add_once(t, li, g, n + 10_000 + 4_000 * r, 1000, with_first=r % 2 == 1))
        print(json.dumps({"commits": rounded(per[-1]), "load": os.getloadavg()[0]}), flush=True)
        imp.append(_import_once(st, t, li, g, n + 12_000 + 4_000 * r, 1000, tmp, with_first=r % 2 == 1))
        print(json.dumps({"import": rounded(imp[-1]), "load": os.getloadavg()[0]}), flush=True)
    keys = ("without_index_s", "writes_with_index_s", "fold_s", "with_index_s", "ratio")
    out = {k: round(statistics.median(p[k] for p in per), 2) for k in keys}
    out["runs"] = [rounded(p) for p in per]
    out["import"] = {
        k: round(statistics.median(p[k] for p in imp), 2)
        for k in ("without_index_s", "fold_s", "with_index_s", "ratio")
    }
    out["import"]["runs"] = [rounded(p) for p in imp]
    out["load"] = os.getloadavg()
    return out


def cmd_add(a) -> dict:
    """Only the adding measurement (``live`` runs it too, after the searches)."""
    from nomic_memory.search import Index
    from nomic_memory.store.table import Store

    st = Store(a.path, create=False)
    t = st.open_table(TABLE)
    n = t.count()
    idx = Index(st, t, index_min_rows=0)
    if idx.live_index().load() is None:
        idx.live_index().rebuild()
    res = {"pages": n, "add_1000": _add_pages(a, st, t, idx, PageGenerator(PageSpec(seed=a.seed)), n, a.runs)}
    print(json.dumps(res), flush=True)
    return res


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
    lv.add_argument("--rerank", type=int, help="pages re-ranked per query (default: the index's depth for the table)")
    lv.add_argument("--searches-only", action="store_true", help="skip the timed additions and the deletion check")
    lv.set_defaults(func=cmd_live)
    ad = sub.add_parser("add")
    ad.add_argument("--path", type=Path, required=True)
    ad.add_argument("--runs", type=int, default=3)
    ad.set_defaults(func=cmd_add)
