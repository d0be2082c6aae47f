"""The live first-stage index: real LanceDB stores, real index files, real processes killed."""

from __future__ import annotations

import fcntl
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from conftest import REPO, cli_env, run_cli
from nomic_memory.search import Index, liveindex
from nomic_memory.search import firststage as fs
from nomic_memory.store import Record, Store, TableInfo

DIM = 128


def _unit(x):
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


def _page(p: int, salt: int = 0) -> np.ndarray:
    """Page ``p``: 30-50 vectors around a few of 40 shared centers plus its own, float32."""
    centers = _unit(np.random.default_rng(12345).standard_normal((40, DIM)))
    rng = np.random.default_rng([p, salt])
    n = int(rng.integers(30, 51))
    words = np.concatenate([centers[rng.choice(40, 6, replace=False)], _unit(rng.standard_normal((3, DIM)))])
    x = words[rng.integers(0, len(words), n)] + 0.4 * _unit(rng.standard_normal((n, DIM)))
    return _unit(x).astype(np.float32)


def _query(p: int) -> np.ndarray:
    x = _page(p)
    rng = np.random.default_rng([p, 99])
    return _unit(x[rng.choice(len(x), 8, replace=False)] + 0.6 * _unit(rng.standard_normal((8, DIM)))).astype(
        np.float32
    )


def _rec(p: int, salt: int = 0, kind: str = "colqwen") -> Record:
    e = _page(p, salt)
    if kind != "colqwen":
        e = _unit(e.mean(0))
    return Record("/data", f"p{p:04d}.png", f"h{p}-{salt}", 1, 0.0, 10, 10, e, "float32", page=p % 3)


def _make(tmp_path: Path, n: int = 120, kind: str = "colqwen", name: str = "store"):
    st = Store(tmp_path / name)
    info = TableInfo("synthetic", "r1", kind, DIM, "", "float16", 0)
    t = st.create_or_open("syn", info)
    for a in range(0, n, 40):
        t.upsert([_rec(p, kind=kind) for p in range(a, min(a + 40, n))])
    return st, t


def _paths(hits):
    return [[h.path for h in hs] for hs in hits]


def _assert_same(got, want):
    assert _paths(got) == _paths(want)
    for g, w in zip(got, want):
        np.testing.assert_allclose([h.score for h in g], [h.score for h in w], rtol=1e-5, atol=1e-5)


@pytest.fixture
def store(tmp_path):
    return _make(tmp_path)


# ------------------------------------------------------------------ the first stage itself
def test_reverse_assignment_equals_maximum_at():
    rng = np.random.default_rng(0)
    x = _unit(rng.standard_normal((3000, DIM))).astype(np.float32)
    offs = np.arange(0, 3001, 30)
    s = fs.Settings(coarse=8, fine=8, probe=5)
    coarse, cents = fs.train_codebook(x, s)
    ix, _ = fs.build_code_index(coarse, cents, [(x, offs)])
    q = _unit(rng.standard_normal((6, DIM))).astype(np.float32)
    got = ix._probe_scores(q @ ix.centroids.T, s.probe)
    sims = q @ ix.centroids.T
    ref = np.zeros((6, ix.n), np.float32)
    for t in range(6):
        best = np.argsort(-sims[t])[: s.probe]
        ref[t] = sims[t, best[-1]]
        for c in best:
            ents = ix.inv_entries[ix.inv_offsets[c] : ix.inv_offsets[c + 1]]
            np.maximum.at(ref[t], ents, sims[t, c])
    np.testing.assert_allclose(got, ref.sum(0), rtol=1e-6)


def test_codes_past_16_bits():
    """A codebook of more than 65,536 centroids (the largest size :meth:`Settings.sized_for` gives)
    stores 32-bit codes; candidates work the same."""
    rng = np.random.default_rng(1)
    coarse = _unit(rng.standard_normal((7, DIM))).astype(np.float32)
    cents = _unit(np.repeat(coarse, 10_000, axis=0) + 0.3 * _unit(rng.standard_normal((70_000, DIM)))).astype(
        np.float32
    )
    pages = [_page(p) for p in range(60)]
    offs = np.concatenate([[0], np.cumsum([len(x) for x in pages])])
    ix, counts = fs.build_code_index(coarse, cents, [(np.concatenate(pages), offs)])
    assert ix.codes.dtype == np.uint32 and int(ix.codes.max()) >= 1 << 16 and ix.n == 60
    assert np.array_equal(np.diff(ix.code_offsets), counts)
    s = fs.Settings(coarse=7, fine=10_000)
    for p in (4, 33, 59):
        got = ix.candidates(_query(p), s, depth=60)
        assert sorted(got.tolist()) == list(range(60)) and got[0] == p


# ------------------------------------------------------------------ search through the index
def test_index_equals_exact_when_depth_covers_the_store(store):
    st, t = store
    qs = [_query(p) for p in (3, 50, 111)]
    idx = Index(st, t, index_min_rows=0)
    got = idx.search_embeddings(qs, 10, rerank=1000)
    assert idx.last_via == "index" and {h.via for hs in got for h in hs} == {"index"}
    want = idx.search_embeddings(qs, 10, exact=True)
    assert idx.last_via == "exact" and want[0][0].via == "exact"
    _assert_same(got, want)
    # default depth on this small store: the planted page is first, scores exact
    assert [hs[0].path for hs in idx.search_embeddings(qs, 5)] == ["p0003.png", "p0050.png", "p0111.png"]
    # below the threshold a search is exact
    small = Index(st, t, index_min_rows=10_000)
    small.search_embeddings(qs, 5)
    assert small.last_via == "exact"


def test_full_scores_are_each_pages_code_set_maxsim():
    """The refine score of a page is sum over tokens of its best code's centroid score, for pages
    of any number of codes (none included), through the gathered-columns segmented maximum."""
    rng = np.random.default_rng(3)
    cents = _unit(rng.standard_normal((50, DIM))).astype(np.float32)
    sets = [np.sort(rng.choice(50, int(rng.integers(1, 12)), replace=False)) for _ in range(30)]
    sets[7] = np.zeros(0, np.int64)
    offs = np.concatenate([[0], np.cumsum([len(c) for c in sets])]).astype(np.int64)
    codes = np.concatenate(sets).astype(np.uint16)
    inv_o, inv_e = fs.inverted_lists(codes, np.diff(offs), 50)
    ix = fs.CodeIndex(cents, offs, codes, inv_o, inv_e)
    q = _unit(rng.standard_normal((9, DIM))).astype(np.float32)
    sims = q @ cents.T
    entries = np.array([29, 0, 7, 13, 13, 2])
    got = ix._full_scores(np.ascontiguousarray(sims), entries)
    want = [sims[:, sets[e]].max(axis=1).sum() if len(sets[e]) else -np.inf for e in entries]
    np.testing.assert_allclose(got, want, rtol=1e-6)


def test_rerank_depth_follows_the_pages_per_list(store):
    s = fs.Settings()
    # a code index: 0.27 of the pages sharing an inverted list, never below the base depth
    assert [s.depth_for(10**6, ppl) for ppl in (0.0, 370.0, 371.0, 596.2, 1525.0)] == [100, 100, 101, 161, 412]
    # a vector index (single-vector tables): by the table's size
    assert [s.depth_for(n) for n in (0, 24_999, 25_000, 399_999, 400_000, 10**7)] == [100, 100, 200, 200, 400, 400]
    st, t = store
    idx = Index(st, t, index_min_rows=0)
    idx.search_embeddings(_query(3), 5)
    state = idx.live_index().load()
    postings = sum(len(c.codes) for c in state.parts)
    assert state.pages_per_list == pytest.approx(postings / len(state.codes.centroids)) and 0 < state.pages_per_list


def test_similarities_equal_the_product_and_take_memory_maps(tmp_path):
    """The query-centroid similarities (torch's matmul) equal numpy's product, C-contiguous
    ``(T, K)``, from centroids in RAM or memory-mapped read-only (as the index's files are)."""
    rng = np.random.default_rng(4)
    cents = rng.standard_normal((1000, DIM)).astype(np.float32)
    q = rng.standard_normal((7, DIM)).astype(np.float32)
    np.save(tmp_path / "c.npy", cents)
    for c in (cents, np.load(tmp_path / "c.npy", mmap_mode="r")):
        got = fs._similarities(q, c)
        assert got.shape == (7, 1000) and got.dtype == np.float32 and got.flags.c_contiguous
        np.testing.assert_allclose(got, q @ cents.T, rtol=1e-5, atol=1e-5)


def test_one_blas_thread_is_counted_across_users():
    """Overlapping users (a server's concurrent searches) leave in any order: BLAS stays on one
    thread until the last one leaves, which restores what the first one found.  (Modelled here
    by two contexts left in the order they were entered, on the main thread: OpenBLAS only
    takes thread counts set from the main thread once its pool runs.)"""
    from threadpoolctl import threadpool_info

    def blas_threads():
        return sorted(i["num_threads"] for i in threadpool_info() if i["user_api"] == "blas")

    before = blas_threads()
    assert before
    first, second = fs.one_blas_thread(), fs.one_blas_thread()
    first.__enter__()
    second.__enter__()
    assert set(blas_threads()) == {1}
    first.__exit__(None, None, None)
    assert set(blas_threads()) == {1}  # the second user is still inside
    second.__exit__(None, None, None)
    assert blas_threads() == before


def test_rerank_in_chunks_equals_one_batch(store, monkeypatch):
    """Each query's candidates scored in chunks on worker threads (several queries with
    overlapping and disjoint candidates, any chunk size, one or two workers) give the scores of
    one batch of all of them, and the winners' metadata."""
    from nomic_memory.search import approx, scoring

    st, t = store
    ds = t.table.to_lance()
    qs = [_query(p) for p in (3, 50, 111)]
    cands = [list(range(0, 60)), list(range(40, 120, 3)), [5, 111, 119, 0]]
    opts = scoring.ScanOptions()
    whole = ds.take(list(range(120)), columns=["root", "path", "page", "embedding"]).combine_chunks().to_batches()[0]
    want = []
    for q, cs in zip(qs, cands):
        sc = opts.score_batch([q], t.info, whole)[0][cs]
        order = sorted(range(len(cs)), key=lambda i: (-sc[i], cs[i]))[:5]
        want.append([(float(sc[i]), f"p{cs[i]:04d}.png") for i in order])
    for chunk in (3, 7, 64):
        monkeypatch.setattr(scoring, "RERANK_CHUNK_ROWS", chunk)
        for workers in (1, 2):
            tops = approx.rerank(ds, t.info, qs, 5, cands, scoring.ScanOptions(workers=workers))
            got = [[(s, m[0]) for s, m in top.results()[0]] for top in tops]
            for g, w in zip(got, want):
                assert [p for _, p in g] == [p for _, p in w]
                np.testing.assert_allclose([s for s, _ in g], [s for s, _ in w], rtol=1e-6)
    assert approx.rerank(ds, t.info, qs[:1], 5, [[]], opts)[0].results() == [[]]


def test_codebook_is_sized_for_the_table_and_outgrowing_it_is_reported(tmp_path, monkeypatch):
    st, t = _make(tmp_path, n=80)
    base = fs.Settings(coarse=4, fine=4, grow_from=100)
    assert base.sized_for(99) == base
    assert (base.sized_for(100).coarse, base.sized_for(100).fine) == (8, 8) == (base.sized_for(799).coarse, 8)
    assert (base.sized_for(800).n_centroids, base.sized_for(10**9).n_centroids) == (256, 256)
    for bad in ("", "abc", "-5"):  # ignored, as NOMIC_MEMORY_INDEX_MIN_ROWS
        monkeypatch.setenv("NOMIC_MEMORY_INDEX_GROW_FROM", bad)
        assert liveindex.base_settings() == fs.Settings()
    monkeypatch.setenv("NOMIC_MEMORY_INDEX_GROW_FROM", "70")
    assert liveindex.base_settings().grow_from == 70
    big = fs.Settings().sized_for(1_000_000)
    assert (big.n_centroids, big.train_vectors, fs.code_dtype(big.n_centroids)) == (262_144, 16 * 262_144, np.uint32)
    li = liveindex.LiveIndex(st, t, settings=base)
    s0 = li.rebuild()
    assert len(s0.codes.centroids) == 16 and s0.meta["built_rows"] == 80 and li.outgrown(s0) is None
    t.upsert([_rec(p) for p in range(80, 120)])
    s1 = li.view(t.table.to_lance()).state
    # a search's catch-up keeps the codebook (re-training reads every vector back) but says so
    assert (s1.n, len(s1.codes.centroids), li.outgrown(s1)) == (120, 16, 64)
    d = liveindex.describe(st, t, li)
    assert d["centroids"] == 16 and d["built_rows"] == 80 and "`nomic-memory index rebuild`" in d["outgrown"]
    s2 = li.rebuild()
    assert (s2.n, len(s2.codes.centroids), s2.meta["built_rows"], li.outgrown(s2)) == (120, 64, 120, None)
    assert "outgrown" not in liveindex.describe(st, t, li)
    reopened = liveindex.LiveIndex(st, t, settings=base).load()
    assert reopened is not None and len(reopened.codes.centroids) == 64
    assert fs.Settings(**reopened.meta["settings"]) == base.sized_for(120)


def test_add_replace_delete_are_seen_by_the_next_search(store):
    st, t = store
    idx = Index(st, t, index_min_rows=0)
    qs = [_query(p) for p in (3, 50, 111, 130)]
    idx.search_embeddings(qs, 5)  # builds the index
    built = idx.live_index().load()
    assert built.n == 120 and built.version == t.version()
    t.upsert([_rec(p) for p in range(120, 140)])  # new rows
    t.upsert([_rec(50, salt=7)])  # page 50's vectors replaced (same key)
    t.delete_paths("/data", ["p0003.png"])
    got = idx.search_embeddings(qs, 10, rerank=1000)
    _assert_same(got, idx.search_embeddings(qs, 10, exact=True))
    assert "p0003.png" not in {h.path for hs in got for h in hs}
    assert got[3][0].path == "p0130.png"
    st2 = idx.live_index().load()
    assert st2.n == 139 and st2.version == t.version()
    rep = liveindex.verify(st, t)
    assert rep["state"] == "current" and rep["problems"] == []


def test_where_restricts_the_candidates(store):
    st, t = store
    idx = Index(st, t, index_min_rows=0)
    qs = [_query(p) for p in (3, 50)]
    where = "page = 1 AND path < 'p0100.png'"
    got = idx.search_embeddings(qs, 5, where=where, rerank=5)
    want = idx.search_embeddings(qs, 5, where=where, exact=True)
    for g in got:
        assert len(g) == 5
        assert all(h.page == 1 and h.path < "p0100.png" for h in g)
    _assert_same(idx.search_embeddings(qs, 5, where=where, rerank=1000), want)


def test_stale_index_with_the_lock_held_scores_new_rows_as_a_tail(store):
    st, t = store
    idx = Index(st, t, index_min_rows=0)
    qs = [_query(p) for p in (3, 125)]
    idx.search_embeddings(qs, 5)
    t.upsert([_rec(p) for p in range(120, 130)])
    t.delete_paths("/data", ["p0003.png"])
    li = idx.live_index()
    fd = os.open(li.base / ".lock", os.O_RDWR)
    fcntl.flock(fd, fcntl.LOCK_EX)  # another process updating the index
    try:
        view = li.view(t.table.to_lance(), wait=False)
        assert len(view.tail) == 10 and int((~view.alive).sum()) == 1
        got = idx.search_embeddings(qs, 10, rerank=1000)
        assert li.load().version != t.version()  # nothing written while locked
    finally:
        os.close(fd)
    _assert_same(got, idx.search_embeddings(qs, 10, exact=True))
    assert got[1][0].path == "p0125.png" and "p0003.png" not in _paths(got)[0]


def test_half_written_or_damaged_index_is_never_wrong(store):
    st, t = store
    idx = Index(st, t, index_min_rows=0)
    qs = [_query(p) for p in (3, 50)]
    want = idx.search_embeddings(qs, 10, exact=True)
    idx.search_embeddings(qs, 10)
    base = idx.live_index().base
    gen = base / (base / "CURRENT").read_text()
    (base / ".tmp-gen-00000001-dead").mkdir()  # a writer killed mid-way
    (base / ".tmp-gen-00000001-dead" / "codes.npy").write_bytes(b"\x93NUMPY garbage")
    codes = gen / "codes.npy"
    codes.write_bytes(codes.read_bytes()[: codes.stat().st_size // 2])  # a damaged file
    fresh = Index(st, t, index_min_rows=0)
    assert liveindex.verify(st, t)["problems"]  # check sees it
    _assert_same(fresh.search_embeddings(qs, 10, rerank=1000), want)  # the search rebuilds it
    assert liveindex.verify(st, t)["problems"] == []
    (base / "CURRENT").write_text("gen-99999999-missing")  # names a generation that is gone
    _assert_same(Index(st, t, index_min_rows=0).search_embeddings(qs, 10, rerank=1000), want)
    assert not (base / ".tmp-gen-00000001-dead").exists()
    assert liveindex.repair(st, t)["entries"] == 120


def test_single_vector_table_has_a_vector_index(tmp_path):
    st, t = _make(tmp_path, 300, kind="biqwen")
    idx = Index(st, t, index_min_rows=0)
    qs = [_unit(_page(p).mean(0)).astype(np.float32) for p in (5, 77, 250)]
    got = idx.search_embeddings(qs, 10, rerank=300)
    assert idx.last_via == "index" and liveindex.describe(st, t)["kind"] == "usearch hnsw i8"
    _assert_same(got, idx.search_embeddings(qs, 10, exact=True))
    assert [hs[0].path for hs in idx.search_embeddings(qs, 3, rerank=20)] == ["p0005.png", "p0077.png", "p0250.png"]
    t.delete_paths("/data", ["p0005.png"])
    t.upsert([_rec(77, salt=3, kind="biqwen"), _rec(400, kind="biqwen")])
    got = idx.search_embeddings(qs, 10, rerank=400)
    _assert_same(got, idx.search_embeddings(qs, 10, exact=True))
    assert "p0005.png" not in _paths(got)[0]
    where = "page = 2"
    _assert_same(
        idx.search_embeddings(qs, 5, where=where, rerank=400), idx.search_embeddings(qs, 5, where=where, exact=True)
    )
    assert liveindex.verify(st, t)["problems"] == []


def test_searches_in_threads_while_rows_are_committed(store):
    st, t = store
    idx = Index(st, t, index_min_rows=0)
    qs = [_query(p) for p in (3, 50, 150)]
    idx.search_embeddings(qs, 5)
    errors, seen = [], []
    done = threading.Event()

    def searcher():
        while not done.is_set():
            try:
                hits = idx.search_embeddings(qs, 5)
                seen.append(hits[2][0].path)
            except Exception as e:  # noqa: BLE001 - collected and reported below
                errors.append(repr(e))

    threads = [threading.Thread(target=searcher) for _ in range(3)]
    for th in threads:
        th.start()
    for a in range(120, 200, 10):  # commits, as an embed run makes them
        t.upsert([_rec(p) for p in range(a, a + 10)])
        t.delete_paths("/data", [f"p{a - 100:04d}.png"])
    done.set()
    for th in threads:
        th.join()
    assert not errors, errors[:3]
    assert seen  # searches ran during the commits
    _assert_same(idx.search_embeddings(qs, 10, rerank=1000), idx.search_embeddings(qs, 10, exact=True))
    assert liveindex.verify(st, t)["problems"] == []


# ------------------------------------------------------------------ rows coded by their writers
def _parquet(path: Path, pages) -> Path:
    import pyarrow as pa
    import pyarrow.parquet as pq

    vecs = [_page(p).astype(np.float16) for p in pages]
    t = pa.table(
        {
            "path": [f"p{p:04d}.png" for p in pages],
            "page": [p % 3 for p in pages],
            "embedding": pa.array([v.tolist() for v in vecs], type=pa.list_(pa.list_(pa.float16()))),
        }
    )
    pq.write_table(t, path)
    return path


def test_import_into_an_indexed_table_is_coded_by_the_importer(store, tmp_path):
    from nomic_memory.run.importing import ImportStamp, import_embeddings

    st, t = store
    idx = Index(st, t, index_min_rows=0)
    qs = [_query(p) for p in (3, 130, 145)]
    idx.search_embeddings(qs, 5)  # builds the index
    li = idx.live_index()
    built = li.load()
    assert built.n == 120 and not built.meta.get("base")
    stamp = ImportStamp("synthetic", "r1", "colqwen", DIM, "syn", 0)
    report = import_embeddings(
        _parquet(tmp_path / "new.parquet", range(120, 150)), st, stamp, root="/data", batch_rows=10
    )
    assert (report.imported, report.commits) == (30, 3)
    t.refresh()
    # the index's own state: three segments of 30 rows continue it up to the table's version
    d = liveindex.describe(st, t)
    assert d["state"].startswith("current") and (d["pending_rows"], d["pending_segments"]) == (30, 3), d
    assert li.load() is built  # nothing rewritten by the writes themselves
    view = li.view(t.table.to_lance())
    assert (view.caught_up, view.from_writers) == (0, 30)  # no vector read back from the table
    after = view.state
    assert after.n == 150 and after.meta["base"] == built.path.name  # appended to the same base
    assert li.pending(after) == [] and not list((li.base / liveindex.SEGMENTS).glob("seg-*"))
    got = idx.search_embeddings(qs, 10, rerank=1000)
    _assert_same(got, idx.search_embeddings(qs, 10, exact=True))
    assert got[1][0].path == "p0130.png" and got[2][0].path == "p0145.png"
    assert liveindex.verify(st, t)["problems"] == []
    assert liveindex.describe(st, t)["state"] == "current"


def test_appended_entries_are_compacted_past_a_fraction_of_the_base(store):
    st, t = store
    idx = Index(st, t, index_min_rows=0)
    qs = [_query(p) for p in (3, 50, 125, 165)]
    idx.search_embeddings(qs, 5)
    li = idx.live_index()
    base = li.load().path.name
    t.upsert([_rec(p) for p in range(120, 135)], known_new={f"p{p:04d}.png" for p in range(120, 135)})
    t.upsert([_rec(50, salt=3)])  # replaced: its old entry is marked dead in the base
    t.delete_paths("/data", ["p0003.png"])
    view = li.view(t.table.to_lance())
    assert (view.caught_up, view.from_writers) == (0, 16)
    st1 = view.state
    assert st1.meta["base"] == base and st1.n == 134 and st1.entries == 136
    assert "p0003.png" not in _paths(idx.search_embeddings(qs, 10, rerank=1000))[0]
    _assert_same(idx.search_embeddings(qs, 10, rerank=1000), idx.search_embeddings(qs, 10, exact=True))
    # past COMPACT_FRACTION of the base (2 dead + 16 + 15 > 30): a full generation again
    t.upsert([_rec(p) for p in range(135, 170)], known_new={f"p{p:04d}.png" for p in range(135, 170)})
    view = li.view(t.table.to_lance())
    st2 = view.state
    assert view.caught_up == 0 and not st2.meta.get("base") and st2.n == st2.entries == 169
    assert st2.alive is None and st2.delta is None
    _assert_same(idx.search_embeddings(qs, 10, rerank=1000), idx.search_embeddings(qs, 10, exact=True))
    assert liveindex.verify(st, t)["problems"] == []


def test_rows_whose_writer_left_no_segment_are_read_back(store):
    st, t = store
    idx = Index(st, t, index_min_rows=0)
    qs = [_query(p) for p in (3, 125)]
    idx.search_embeddings(qs, 5)
    li = idx.live_index()
    t.upsert([_rec(p) for p in range(120, 130)])
    segs = list((li.base / liveindex.SEGMENTS).glob("seg-*.npz"))
    assert len(segs) == 1
    segs[0].write_bytes(segs[0].read_bytes()[:100])  # a damaged segment: its rows are read back
    t.upsert([_rec(p) for p in range(130, 135)])
    view = li.view(t.table.to_lance())
    assert (view.caught_up, view.from_writers) == (10, 5)
    _assert_same(idx.search_embeddings(qs, 10, rerank=1000), idx.search_embeddings(qs, 10, exact=True))
    assert liveindex.verify(st, t)["problems"] == []


# ------------------------------------------------------------------ kill -9 and the CLI
UPDATER = textwrap.dedent("""
    import sys
    import numpy as np
    sys.path.insert(0, sys.argv[2])
    from test_liveindex import _rec
    from nomic_memory.store import Store
    from nomic_memory.search.liveindex import LiveIndex
    st = Store(sys.argv[1], create=False)
    t = st.open_table("syn")
    li = LiveIndex(st, t)
    p = 1000
    print("ready", flush=True)
    while True:
        t.upsert([_rec(q) for q in range(p, p + 5)])
        t.delete_paths("/data", [f"p{p - 900:04d}.png"])
        li.view(t.table.to_lance())
        p += 5
""")


@pytest.mark.slow
def test_kill9_during_index_updates_then_search_and_check(tmp_path):
    st, t = _make(tmp_path, 200)
    Index(st, t, index_min_rows=0).search_embeddings([_query(1)], 5)
    script = tmp_path / "updater.py"
    script.write_text(UPDATER)
    rng = np.random.default_rng(0)
    for _ in range(4):
        proc = subprocess.Popen(
            [sys.executable, str(script), str(tmp_path / "store"), str(REPO / "tests")],
            stdout=subprocess.PIPE,
            env=cli_env(),
        )
        assert proc.stdout.readline().strip() == b"ready"
        time.sleep(float(rng.uniform(0.5, 3.0)))
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        st = Store(tmp_path / "store", create=False)
        t = st.open_table("syn")
        rep = liveindex.verify(st, t)
        assert rep["problems"] == [], rep
        idx = Index(st, t, index_min_rows=0)
        qs = [_query(p) for p in (5, 150)]
        _assert_same(idx.search_embeddings(qs, 10, rerank=10_000), idx.search_embeddings(qs, 10, exact=True))
    r = run_cli("check", "--store", str(tmp_path / "store"), "--json")
    assert r.returncode == 0, r
    assert r.json()["index"]["state"] == "current" and r.json()["index"]["problems"] == []


@pytest.mark.slow
def test_embed_and_cli_import_into_an_indexed_table_are_coded_by_the_writer(loaded, image_dir, tiny_colqwen, tmp_path):
    folder = tmp_path / "images"
    shutil.copytree(image_dir, folder)
    moved = sorted(p for p in folder.rglob("*") if p.suffix.lower() in {".png", ".jpg"})[:3]
    held = tmp_path / "held"
    held.mkdir()
    for i, p in enumerate(moved):  # embedded by the second run only
        p.rename(held / f"{i}{p.suffix}")
    store = tmp_path / "store"
    loaded["colqwen"].embed_directory(folder, store=store, workers=0)
    idx = loaded["colqwen"].index(store, index_min_rows=0)
    q = np.asarray(idx.table.to_arrow(["embedding"]).column("embedding")[0].as_py(), np.float32)[:6]
    idx.search_embeddings([q], 5)  # builds the index
    li = idx.live_index()
    built = li.load()
    for i, p in enumerate(moved):
        (held / f"{i}{p.suffix}").rename(p)
    report = loaded["colqwen"].embed_directory(folder, store=store, workers=0)
    assert report.embedded == 3
    t = idx.table
    t.refresh()
    d = liveindex.describe(idx.store, t)
    assert d["state"].startswith("current") and d["pending_rows"] == 3, d
    view = li.view(t.table.to_lance())
    assert (view.caught_up, view.from_writers) == (0, 3) and view.state.n == built.n + 3
    hits = idx.search_embeddings([q], 10, rerank=1000)
    _assert_same(hits, idx.search_embeddings([q], 10, exact=True))
    assert liveindex.verify(idx.store, t)["problems"] == []
    # `nomic-memory import` (its own process) codes the rows it commits too
    from nomic_memory.store.export import export_store

    npz = tmp_path / "rows.npz"
    export_store(store, "npz", npz)
    n = t.count()
    r = run_cli(
        "import",
        str(npz),
        "--store",
        str(store),
        "--model-name",
        str(tiny_colqwen),
        "--root",
        str(tmp_path / "other"),
        "--json",
    )
    assert r.returncode == 0, r
    t.refresh()
    d = liveindex.describe(idx.store, t)
    assert d["state"].startswith("current") and d["pending_rows"] == n, d
    view = li.view(t.table.to_lance())
    assert (view.caught_up, view.from_writers) == (0, n) and view.state.n == 2 * n
    _assert_same(idx.search_embeddings([q], 10, rerank=1000), idx.search_embeddings([q], 10, exact=True))


@pytest.mark.slow
def test_import_and_embed_retrain_an_outgrown_codebook(loaded, image_dir, tiny_colqwen, tmp_path, monkeypatch):
    from nomic_memory.store.export import export_store

    folder = tmp_path / "images"
    shutil.copytree(image_dir, folder)
    held = sorted(p for p in folder.rglob("*") if p.suffix.lower() in {".png", ".jpg"})[:3]
    for p in held:  # embedded by the last run only
        p.rename(tmp_path / p.name)
    store = tmp_path / "store"
    emb = loaded["colqwen"]
    emb.embed_directory(folder, store=store, workers=0)
    idx = emb.index(store, index_min_rows=0)
    q = np.asarray(idx.table.to_arrow(["embedding"]).column("embedding")[0].as_py(), np.float32)[:6]
    idx.search_embeddings([q], 5)  # builds the index: the base codebook
    base = fs.Settings().n_centroids
    n = idx.table.count()

    def nominal() -> int:
        st = liveindex.LiveIndex(idx.store, idx.table).load()
        assert st is not None and liveindex.verify(idx.store, idx.table)["problems"] == []
        return fs.Settings(**st.meta["settings"]).n_centroids

    assert nominal() == base
    # `nomic-memory import` (its own process) doubles the table past the threshold: re-trained
    npz = tmp_path / "rows.npz"
    export_store(store, "npz", npz)
    env = {**cli_env(), "NOMIC_MEMORY_INDEX_GROW_FROM": str(n + 1)}
    args = ("import", str(npz), "--store", str(store), "--model-name", str(tiny_colqwen), "--root", str(tmp_path / "o"))
    r = run_cli(*args, env=env)
    assert r.returncode == 0, r
    assert f"Table {idx.table.name} has {2 * n} rows: re-training its search index ({base} -> {4 * base}" in r.stdout, r
    assert "Search index re-trained" in r.stdout, r
    idx.table.refresh()
    assert nominal() == 4 * base
    # nothing new, nothing re-trained (the second import skips every row)
    r = run_cli(*args, env=env)
    assert r.returncode == 0 and "re-train" not in r.stdout, r
    # `Embedder.embed_directory`: an index built again below the threshold, then a run crossing it
    shutil.rmtree(store / liveindex.INDEX_DIR)
    emb.index(store, index_min_rows=0).search_embeddings([q], 5)
    assert nominal() == base
    monkeypatch.setenv("NOMIC_MEMORY_INDEX_GROW_FROM", str(2 * n + 1))
    for p in held:
        (tmp_path / p.name).rename(p)
    events: list = []
    report = emb.embed_directory(folder, store=store, workers=0, on_event=lambda k, d: events.append((k, d)))
    assert report.embedded == 3
    ours = [(k, d) for k, d in events if k.startswith("index_")]
    assert [k for k, _ in ours] == ["index_retraining", "index_retrained"]
    assert {k: ours[1][1][k] for k in ("rows", "centroids", "before")} == {
        "rows": 2 * n + 3,
        "centroids": 4 * base,
        "before": base,
    }
    idx = emb.index(store, index_min_rows=0)
    assert nominal() == 4 * base
    _assert_same(idx.search_embeddings([q], 10, rerank=1000), idx.search_embeddings([q], 10, exact=True))


@pytest.mark.slow
def test_cli_search_says_which_it_used_and_index_commands(loaded, image_dir, tiny_colqwen, tmp_path):
    store = tmp_path / "store"
    loaded["colqwen"].embed_directory(image_dir, store=store, workers=0)
    env = {**cli_env(), "NOMIC_MEMORY_INDEX_MIN_ROWS": "0"}
    base = ["--store", str(store), "--model-name", str(tiny_colqwen), "--backend", "cpu", "--json"]
    r = run_cli("search", "a red bicycle", *base, env=env)
    assert r.returncode == 0, r
    indexed = r.json()
    assert {h["via"] for h in indexed["results"][0]} == {"index"}
    r = run_cli("search", "a red bicycle", *base, "--exact", env=env)
    exact = r.json()
    assert {h["via"] for h in exact["results"][0]} == {"exact"}
    assert [h["path"] for h in indexed["results"][0]] == [h["path"] for h in exact["results"][0]]
    r = run_cli("index", "status", "--store", str(store), "--json")
    assert r.json()["tables"][0]["state"] == "current", r
    centroids = r.json()["tables"][0]["centroids"]  # a few rows: fewer than the codebook's nominal size
    assert 0 < centroids <= fs.Settings().n_centroids and "outgrown" not in r.json()["tables"][0]
    r = run_cli("index", "status", "--store", str(store))
    assert f"centroid codes ({centroids} centroids)" in r.stdout, r
    r = run_cli("store", "list", "--store", str(store), "--json")
    table = r.json()["tables"][0]
    assert table["index"]["rows"] == table["rows"] > 0
    shutil.rmtree(store / liveindex.INDEX_DIR)
    r = run_cli("check", "--store", str(store), "--json")
    assert r.returncode == 0 and r.json()["index"]["state"] == "none", r
    r = run_cli("index", "rebuild", "--store", str(store), "--json")
    assert r.returncode == 0 and r.json()["tables"][0]["entries"] > 0, r
    r = run_cli("search", "x", "--exact", "--approx", "--store", str(store))
    assert r.returncode == 2 and "exclude" in r.stderr, r
