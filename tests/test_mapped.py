"""Stored vectors read through a memory map (the re-rank's reads): real Lance files, compared
byte for byte with Lance's own ``take``; files it must not map are left to ``take``."""

from __future__ import annotations

import os

import lance
import numpy as np
import pyarrow as pa
import pytest

from nomic_memory.search import Index, approx, scoring
from nomic_memory.store import Record, Store, TableInfo
from nomic_memory.store.mapped import MappedVectors

DIM = 128


def _vectors(p: int, dtype=np.float16) -> np.ndarray:
    rng = np.random.default_rng(p)
    return rng.standard_normal((int(rng.integers(1, 60)), DIM)).astype(dtype)


def _lance_rows(ds, ids: list[int]) -> list[np.ndarray]:
    col = ds._take_rows(ids, columns=["embedding"]).column("embedding").combine_chunks()
    return [col[i].values.flatten().to_numpy(zero_copy_only=False).reshape(-1, DIM) for i in range(len(ids))]


def _live_ids(ds) -> list[int]:
    return ds.to_table(columns=[], with_row_id=True).column("_rowid").to_pylist()


def _write(path, n: int, dtype=np.float16, **kw):
    """A Lance dataset of ``n`` rows of ``list<fixed_size_list<float, DIM>>`` written directly."""
    vt = pa.float16() if dtype == np.float16 else pa.float32()
    docs = [_vectors(p, dtype) for p in range(n)]
    offs = np.zeros(n + 1, np.int32)
    np.cumsum([len(d) for d in docs], out=offs[1:])
    inner = pa.FixedSizeListArray.from_arrays(pa.array(np.concatenate(docs).reshape(-1), type=vt), DIM)
    t = pa.table(
        {
            "root": pa.array(["/d"] * n),
            "path": pa.array([f"p{p:03d}.png" for p in range(n)]),
            "page": pa.array(np.zeros(n, np.int32)),
            "embedding": pa.ListArray.from_arrays(pa.array(offs), inner),
        }
    )
    return lance.write_dataset(t, str(path), **kw), docs


def _store(tmp_path, n: int = 90):
    st = Store(tmp_path / "store")
    t = st.create_or_open("syn", TableInfo("synthetic", "r1", "colqwen", DIM, "", "float16", 0))
    for a in range(0, n, 30):  # a fragment per write
        t.upsert(
            [
                Record("/d", f"p{p:03d}.png", f"h{p}", 1, 0.0, 1, 1, _vectors(p, np.float32), "float32")
                for p in range(a, a + 30)
            ]
        )
    return st, t


def test_every_row_equals_lances_take_across_writes_and_deletions(tmp_path, monkeypatch):
    from nomic_memory.store import mapped

    monkeypatch.setattr(mapped, "RELEASE_EVERY", 1)  # every release drops the process's mappings
    st, t = _store(tmp_path)
    mv = MappedVectors()
    ds = t.table.to_lance()
    ids = _live_ids(ds)
    got = mv.rows(ds, ids)
    assert [r.tobytes() for r in got] == [r.tobytes() for r in _lance_rows(ds, ids)]
    assert mv.mapped_files() == len(ds.get_fragments()) == 3
    mv.release(ds, ids)  # the process's mappings dropped: the views read the same bytes again
    assert [r.tobytes() for r in got] == [r.tobytes() for r in _lance_rows(ds, ids)]
    # pages re-embedded (old rows deleted, new ones appended) and pages deleted: a new version
    t.upsert(
        [
            Record("/d", f"p{p:03d}.png", f"h{p}x", 1, 0.0, 1, 1, _vectors(1000 + p, np.float32), "float32")
            for p in (3, 40)
        ]
    )
    t.delete_paths("/d", ["p050.png"])
    ds2 = t.table.to_lance()
    ids2 = _live_ids(ds2)
    assert len(ids2) == 89 and set(ids2) != set(ids)
    got = mv.rows(ds2, ids2)
    assert all(g is not None for g in got)
    assert [r.tobytes() for r in got] == [r.tobytes() for r in _lance_rows(ds2, ids2)]
    assert mv.mapped_files() == 4  # the three first files still serve, one new


@pytest.mark.parametrize("dtype", [np.float16, np.float32])
def test_rows_that_continue_on_the_next_page(tmp_path, dtype):
    """Small pages: many rows' vectors start on one values page and end on the next."""
    ds, docs = _write(tmp_path / "d.lance", 200, dtype, data_storage_version="2.0", max_page_bytes=8192)
    ids = _live_ids(ds)
    mv = MappedVectors()
    got = mv.rows(ds, ids)
    assert mv.mapped_files() == 1
    for g, d in zip(got, docs):
        assert g is not None and g.dtype == dtype and np.array_equal(g, d)
    # the reader really met page boundaries
    f = next(iter(mv._files.values()))
    assert len(f.page_first) > 20


@pytest.mark.parametrize(
    "kw", [{"data_storage_version": "2.1"}, {"data_storage_version": "2.0", "enable_stable_row_ids": True}]
)
def test_files_it_does_not_read_are_left_to_take(tmp_path, kw):
    """Another file format, or stable row ids (ids that are not row addresses): nothing mapped,
    every row answered None, and a re-rank still scores them exactly (through ``take``)."""
    ds, docs = _write(tmp_path / "d.lance", 40, **kw)
    ids = _live_ids(ds)
    mv = MappedVectors()
    assert mv.rows(ds, ids) == [None] * len(ids)
    assert mv.mapped_files() == 0
    info = TableInfo("synthetic", "r1", "colqwen", DIM, "", "float16", 0)
    q = np.random.default_rng(7).standard_normal((5, DIM)).astype(np.float32)
    top = approx.rerank(ds, info, [q], 40, [ids], scoring.ScanOptions(), rowids=True, mapped=mv)[0]
    want = scoring.Scorer([q], "colqwen", DIM).score_documents(docs)[0]
    np.testing.assert_allclose(top.scores[0], np.sort(want)[::-1], rtol=1e-6, atol=1e-4)


def test_rerank_through_the_map_equals_rerank_through_take(tmp_path):
    st, t = _store(tmp_path)
    ds = t.table.to_lance()
    ids = _live_ids(ds)
    rng = np.random.default_rng(3)
    qs = [rng.standard_normal((6, DIM)).astype(np.float32) for _ in range(3)]
    cands = [ids[:50], ids[20:90:2], [ids[5], ids[80]]]
    mv = MappedVectors()
    for workers in (1, 2):
        opts = scoring.ScanOptions(workers=workers)
        a = approx.rerank(ds, t.info, qs, 10, cands, opts, rowids=True, mapped=mv)
        b = approx.rerank(ds, t.info, qs, 10, cands, opts, rowids=True)
        assert [x.results() for x in a] == [x.results() for x in b]
    assert mv.mapped_files() == 3


def test_score_documents_equals_score_of_the_concatenation():
    rng = np.random.default_rng(1)
    docs = [rng.standard_normal((int(n), DIM)).astype(np.float16) for n in rng.integers(0, 40, 30)]
    q = rng.standard_normal((9, DIM)).astype(np.float32)
    offs = np.zeros(len(docs) + 1, np.int64)
    np.cumsum([len(d) for d in docs], out=offs[1:])
    for tile in (16, 64, 8192):
        sc = scoring.Scorer([q, q[:3]], "colqwen", DIM, tile_vectors=tile)
        assert np.array_equal(sc.score_documents(docs), sc.score(np.concatenate(docs), offs))


def test_an_indexed_search_reads_candidates_through_the_map(tmp_path):
    st, t = _store(tmp_path)
    idx = Index(st, t, index_min_rows=0)
    q = _vectors(17, np.float32)[:8]
    hits = idx.search_embeddings(q, 5)
    assert idx.last_via == "index" and idx._mapped is not None and idx._mapped.mapped_files() > 0
    exact = idx.search_embeddings(q, 5, exact=True)
    assert [h.path for h in hits[0]] == [h.path for h in exact[0]]  # 90 rows: the depth covers the table
    np.testing.assert_allclose([h.score for h in hits[0]], [h.score for h in exact[0]], rtol=1e-6)


def test_compaction_unmaps_the_files_it_replaced(tmp_path):
    """After ``optimize`` (compaction, old versions' files deleted) the new files serve the rows,
    and the replaced files' maps are dropped (a map keeps a deleted file's space allocated)."""
    import datetime as dt

    st, t = _store(tmp_path)
    mv = MappedVectors()
    ds = t.table.to_lance()
    old = set(mv._fragments(ds).values())
    mv.rows(ds, _live_ids(ds))
    assert mv.mapped_files() == 3
    t.optimize(cleanup_older_than=dt.timedelta(0))
    ds2 = t.table.to_lance()
    assert len(ds2.get_fragments()) == 1 and not any(os.path.exists(p) for p in old)
    ids = _live_ids(ds2)
    assert [r.tobytes() for r in mv.rows(ds2, ids)] == [r.tobytes() for r in _lance_rows(ds2, ids)]
    assert mv.mapped_files() == 1 and not old & set(mv._files)
