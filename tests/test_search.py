"""Tests for nomic_memory.search.index: real LanceDB stores, tiny random models built offline."""

from __future__ import annotations

import dataclasses
import json
import re
import shutil
import warnings
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from nomic_memory.cli import app
from nomic_memory.search.approx import recall_at_k
from nomic_memory.search.index import Hit, Index, ModelMismatchError, SearchError, check_model
from nomic_memory.search.scoring import Scorer, fixed_size_list_matrix, multivector_matrix
from nomic_memory.store.table import Record, Store, TableInfo

N_IMAGES = 10
QUERIES = ["a red bicycle", "quarterly revenue table", "x", "the cat sat on the mat"]


def _images(folder: Path) -> list[Path]:
    """Distinct random images in two sizes (so documents have different vector counts)."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    paths = []
    for i in range(N_IMAGES):
        w = 224 if i % 3 else 168
        p = folder / f"img{i:02d}.png"
        Image.fromarray(rng.integers(0, 256, (224, w, 3), dtype=np.uint8)).save(p)
        paths.append(p)
    return paths


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    from nomic_memory.api import Embedder
    from nomic_memory.model.tiny import build_tiny_model

    base = tmp_path_factory.mktemp("search")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        col = build_tiny_model(base / "col", "colqwen", seed=0)
        bi = build_tiny_model(base / "bi", "biqwen", seed=0)
        images = _images(base / "imgs")
        col_emb = Embedder(str(col), backend="cpu")
        col_emb.embed_directory(base / "imgs", store=base / "col_store", workers=0)
        bi_emb = Embedder(str(bi), backend="cpu")
        bi_emb.embed_directory(base / "imgs", store=base / "bi_store", workers=0)
    return {
        "base": base,
        "col": col,
        "bi": bi,
        "images": images,
        "col_emb": col_emb,
        "bi_emb": bi_emb,
        "col_store": base / "col_store",
        "bi_store": base / "bi_store",
    }


def _colpali_embeddings(lm, images: list[Path], texts: list[str]):
    """Embeddings from colpali-engine's own model forward (the model card's code path)."""
    model, proc = lm.model, lm.processor
    with torch.inference_mode():
        ps = []
        for p in images:  # one at a time: no padding rows to strip
            b = proc.process_images([Image.open(p).convert("RGB")])
            ps.append(model(**b)[0].float())
        b = proc.process_queries(texts)
        out = model(**b).float()
        if out.dim() == 3:  # strip query padding (zero rows after the mask)
            qs = [o[m.bool()] for o, m in zip(out, b["attention_mask"])]
        else:
            qs = list(out)
    return qs, ps


def _assert_same_ranking(hits: list[Hit], ref_scores: torch.Tensor, names: list[str]):
    order = torch.argsort(ref_scores, descending=True).tolist()
    assert [h.path for h in hits] == [names[i] for i in order[: len(hits)]]
    np.testing.assert_allclose([h.score for h in hits], ref_scores[order[: len(hits)]].numpy(), atol=1e-4, rtol=0)
    assert [h.rank for h in hits] == list(range(1, len(hits) + 1))


# ------------------------------------------------------------------ correctness vs colpali-engine
def test_colqwen_text_search_matches_score_multi_vector(env):
    lm = env["col_emb"].loaded
    qs, ps = _colpali_embeddings(lm, env["images"], QUERIES)
    assert len({p.shape[0] for p in ps}) == 2  # the documents really differ in length
    ref = lm.processor.score_multi_vector(qs, ps, device="cpu")
    names = [p.name for p in env["images"]]
    idx = Index.open(env["col_store"], backend="cpu")
    results = idx.search_many(QUERIES, k=N_IMAGES)
    for qi, hits in enumerate(results):
        assert len(hits) == N_IMAGES
        _assert_same_ranking(hits, ref[qi], names)
        assert all(h.root == str(env["base"] / "imgs") and h.page == 0 for h in hits)
    # a single query and a smaller k give the same head
    top3 = idx.search(QUERIES[1], k=3)
    assert [h.path for h in top3] == [h.path for h in results[1][:3]]  # (padding in a batch moves
    np.testing.assert_allclose([h.score for h in top3], [h.score for h in results[1][:3]], atol=1e-4)  # the last bits)


def test_biqwen_text_search_matches_score_single_vector(env):
    lm = env["bi_emb"].loaded
    qs, ps = _colpali_embeddings(lm, env["images"], QUERIES)
    ref = lm.processor.score_single_vector(qs, ps, device="cpu")
    names = [p.name for p in env["images"]]
    idx = Index.open(env["bi_store"], backend="cpu")
    for qi, hits in enumerate(idx.search_many(QUERIES, k=N_IMAGES)):
        _assert_same_ranking(hits, ref[qi], names)


def test_template_is_applied(env):
    idx = Index.open(env["col_store"], backend="cpu", template="Query: {}")
    plain = Index.open(env["col_store"], backend="cpu")
    a = idx.search("red", k=N_IMAGES)
    b = plain.search("Query: red", k=N_IMAGES)
    assert [(h.path, round(h.score, 5)) for h in a] == [(h.path, round(h.score, 5)) for h in b]


@pytest.mark.parametrize("which", ["col", "bi"])
def test_image_query_ranks_itself_first(env, which):
    idx = Index.open(env[f"{which}_store"], backend="cpu")
    for p in (env["images"][4], env["images"][6]):
        for q in (p, Image.open(p)):  # a path and a PIL image
            hits = idx.search(q, k=3)
            assert hits[0].path == p.name
            assert hits[0].score > hits[1].score
    if which == "col":  # every query vector finds itself: MaxSim = number of vectors
        q = idx.embed_queries([env["images"][4]])[0]
        assert idx.search(env["images"][4], k=1)[0].score == pytest.approx(q.shape[0], abs=1e-3)


# ------------------------------------------------------------------ model checks
def test_other_seed_model_is_refused(env):
    from nomic_memory.model.tiny import build_tiny_model

    other = build_tiny_model(env["base"] / "col_seed1", "colqwen", seed=1)
    idx = Index.open(env["col_store"], backend="cpu", model_name=str(other))
    with pytest.raises(ModelMismatchError, match="fingerprint"):
        idx.search("hello")
    idx = Index.open(env["col_store"], backend="cpu", model_name=str(other), allow_mismatch=True)
    assert len(idx.search("hello", k=2)) == 2
    assert idx.warnings and "fingerprint" in idx.warnings[0]
    # the same through the CLI: exit status 1, a one-line reason
    r = CliRunner().invoke(
        app, ["search", "hello", "--store", str(env["col_store"]), "--backend", "cpu", "--model-name", str(other)]
    )
    assert r.exit_code == 1 and "--allow-mismatch" in r.output and "Traceback" not in r.output
    r = CliRunner().invoke(
        app,
        [
            "search",
            "hello",
            "--store",
            str(env["col_store"]),
            "--backend",
            "cpu",
            "--model-name",
            str(other),
            "--allow-mismatch",
            "--json",
            "-k",
            "2",
        ],
    )
    assert r.exit_code == 0, r.output
    assert json.loads(r.stdout)["warnings"]


def test_check_model_reports_revision_and_fingerprint(env):
    lm = env["col_emb"].loaded
    info = Index.open(env["col_store"]).info
    assert check_model(lm, info) == []
    assert any("revision" in p for p in check_model(lm, dataclasses.replace(info, revision="local-0000")))
    assert any("fingerprint" in p for p in check_model(lm, dataclasses.replace(info, fingerprint="0123456789abcdef")))
    assert any("biqwen" in p for p in check_model(lm, dataclasses.replace(info, kind="biqwen")))


def test_rewritten_table_revision_is_refused(env, tmp_path):
    """A table whose metadata names another revision of the model: refused, not silently used."""
    store = tmp_path / "store"
    shutil.copytree(env["col_store"], store)
    s = Store(store, create=False)
    t = s.only_table()
    new_info = dataclasses.replace(t.info, revision="local-ffffffffffffffff")
    t.table.to_lance().update_schema_metadata({"nomic_memory": new_info.to_json()}, replace=True)
    idx = Index.open(store, backend="cpu")
    assert idx.info.revision == "local-ffffffffffffffff"
    with pytest.raises(ModelMismatchError, match="revision"):
        idx.search("hello")


# ------------------------------------------------------------------ the engine
def test_chunked_streaming_equals_one_chunk(env):
    one = Index.open(env["col_store"], backend="cpu", batch_rows=100_000, tile_vectors=1 << 20)
    tiny = Index.open(env["col_store"], backend="cpu", batch_rows=1, tile_vectors=1)
    mid = Index.open(env["col_store"], backend="cpu", batch_rows=3, tile_vectors=150, workers=3)
    serial = Index.open(env["col_store"], backend="cpu", batch_rows=2, workers=1)
    embs = one.embed_queries(QUERIES + [env["images"][2]])
    a = one.search_embeddings(embs, k=7)
    for other in (tiny, mid, serial):
        b = other.search_embeddings(embs, k=7)
        for ha, hb in zip(a, b):
            assert [h.path for h in ha] == [h.path for h in hb]
            np.testing.assert_allclose([h.score for h in ha], [h.score for h in hb], rtol=1e-6)


def test_k_larger_than_store_and_validation(env):
    idx = Index.open(env["col_store"], backend="cpu")
    q = idx.embed_queries(["hello"])
    assert len(idx.search_embeddings(q, k=1000)[0]) == N_IMAGES
    with pytest.raises(ValueError):
        idx.search_embeddings(q, k=0)
    with pytest.raises(SearchError, match="128-d"):
        idx.search_embeddings([np.zeros((3, 64), np.float32)])
    assert idx.search_many([]) == []


def test_float16_store_scores_in_float32(tmp_path):
    """Stored float16, scored float32: products far beyond float16's range (65504) stay exact."""
    rng = np.random.default_rng(3)
    info = TableInfo("synthetic", "r1", "colqwen", 128, "", "float16", 0)
    store = Store(tmp_path / "s")
    t = store.create_or_open("syn", info)
    docs = [rng.uniform(-300, 300, size=(n, 128)).astype(np.float16) for n in (5, 9, 1, 12, 7, 7)]
    t.upsert([Record("/r", f"d{i}.png", f"h{i}", 1, 0.0, 1, 1, d, "float16") for i, d in enumerate(docs)])
    assert t.table.schema.field("embedding").type.value_type.value_type == pa.float16()
    q = rng.uniform(-300, 300, size=(4, 128)).astype(np.float32)
    ref = np.array([(q.astype(np.float64) @ d.astype(np.float64).T).max(axis=1).sum() for d in docs])
    assert np.abs(ref).max() > 1e6
    hits = Index.open(tmp_path / "s").search_embeddings([q], k=len(docs))[0]
    order = np.argsort(-ref)
    assert [h.path for h in hits] == [f"d{i}.png" for i in order]
    np.testing.assert_allclose([h.score for h in hits], ref[order], rtol=1e-6)
    # the 16-bit path through the engine itself
    scores = Scorer([q], "colqwen", 128).score(np.concatenate(docs), np.cumsum([0] + [len(d) for d in docs]))
    assert scores.dtype == np.float32 and np.isfinite(scores).all()


def test_arrow_views_are_zero_copy_and_honour_slices():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((30, 4)).astype(np.float16)
    inner = pa.FixedSizeListArray.from_arrays(pa.array(x.reshape(-1)), 4)
    arr = pa.ListArray.from_arrays(pa.array(np.array([0, 3, 3, 10, 30], np.int32)), inner)
    v, o = multivector_matrix(arr.slice(2, 2))
    assert np.array_equal(v, x[3:30]) and o.tolist() == [0, 7, 27]
    assert np.shares_memory(v, inner.values.to_numpy(zero_copy_only=True))
    m = fixed_size_list_matrix(inner.slice(5, 3))
    assert np.array_equal(m, x[5:8])


# ------------------------------------------------------------------ approximate search
def test_pooled_index_recall_and_staleness(env, tmp_path):
    store = tmp_path / "store"
    shutil.copytree(env["col_store"], store)
    idx = Index.open(store, backend="cpu")
    with pytest.raises(SearchError, match="--build-index"):
        idx.search("hello", approx=True)
    desc = idx.build_approx_index("pooled", pool_factor=4)
    assert desc["pooled_vectors"] < desc["vectors"] / 3
    assert Store(store, create=False).table_names() == [idx.table.name]  # no extra table in the store
    embs = idx.embed_queries(QUERIES + [env["images"][5]])
    exact = idx.search_embeddings(embs, k=5)
    full = idx.search_embeddings(embs, k=5, approx=True, rerank=N_IMAGES)
    assert recall_at_k(full, exact, 5) == 1.0
    for f, e in zip(full, exact):  # exact re-ranking: the same scores
        assert [h.path for h in f] == [h.path for h in e]
        np.testing.assert_allclose([h.score for h in f], [h.score for h in e], rtol=1e-6)
    few = idx.search_embeddings(embs, k=5, approx=True, rerank=5)
    assert few[-1][0].path == env["images"][5].name  # the image finds itself through the pooled copy
    # a changed table makes the index stale: refused, not silently incomplete
    extra = tmp_path / "more"
    extra.mkdir()
    Image.new("RGB", (224, 224), (200, 10, 10)).save(extra / "red.png")
    env["col_emb"].embed_directory(extra, store=store, workers=0)
    with pytest.raises(SearchError, match="out of date"):
        Index.open(store, backend="cpu").search_embeddings(embs, approx=True)


def test_lance_index(env, tmp_path):
    store = tmp_path / "store"
    shutil.copytree(env["col_store"], store)
    idx = Index.open(store, backend="cpu")
    idx.build_approx_index("lance", num_partitions=2, num_sub_vectors=8)
    embs = idx.embed_queries(QUERIES)
    exact = idx.search_embeddings(embs, k=5)
    approx = idx.search_embeddings(embs, k=5, approx=True, rerank=N_IMAGES, method="lance")
    assert recall_at_k(approx, exact, 5) == 1.0
    np.testing.assert_allclose([h.score for h in approx[0]], [h.score for h in exact[0]], atol=1e-5)


def test_biqwen_has_no_pooled_index(env):
    with pytest.raises(SearchError, match="ColQwen"):
        Index.open(env["bi_store"]).build_approx_index("pooled")


# ------------------------------------------------------------------ CLI
def test_cli_json_and_table(env, tmp_path):
    runner = CliRunner()
    args = ["search", "a red bicycle", "--store", str(env["col_store"]), "--backend", "cpu", "-k", "3"]
    r = runner.invoke(app, args + ["--json"])
    assert r.exit_code == 0, r.output
    out = json.loads(r.stdout)
    assert [h["rank"] for h in out["results"][0]] == [1, 2, 3]
    assert set(out["results"][0][0]) >= {"rank", "score", "path", "root", "page", "file", "id"}
    api = Index.open(env["col_store"], backend="cpu").search("a red bicycle", k=3)
    assert [h["path"] for h in out["results"][0]] == [h.path for h in api]
    assert [h["id"] for h in out["results"][0]] == [h.id for h in api]
    # image query, several queries in one scan
    img = env["images"][7]
    r = runner.invoke(
        app,
        [
            "search",
            "one",
            "two",
            "--image",
            str(img),
            "--store",
            str(env["col_store"]),
            "--backend",
            "cpu",
            "-k",
            "2",
            "--json",
        ],
    )
    out = json.loads(r.stdout)
    assert [q["kind"] for q in out["queries"]] == ["text", "text", "image"]
    assert out["queries"][2]["results"][0]["path"] == img.name
    # the rich table
    r = runner.invoke(app, args)
    assert r.exit_code == 0 and "rank" in r.stdout and "score" in r.stdout and api[0].path in r.stdout
    # usage errors and a missing store
    assert runner.invoke(app, ["search", "--store", str(env["col_store"])]).exit_code == 2
    r = runner.invoke(app, ["search", "x", "--store", str(tmp_path / "nowhere")])
    assert r.exit_code == 1 and "no store" in r.output


def test_cli_build_index_then_approx(env, tmp_path):
    store = tmp_path / "store"
    shutil.copytree(env["col_store"], store)
    runner = CliRunner()
    r = runner.invoke(app, ["search", "--store", str(store), "--build-index", "--json"])
    assert r.exit_code == 0, r.output
    assert json.loads(r.stdout)["index"]["method"] == "pooled"
    r = runner.invoke(
        app,
        [
            "search",
            "--image",
            str(env["images"][1]),
            "--store",
            str(store),
            "--backend",
            "cpu",
            "--approx",
            "--rerank",
            "3",
            "-k",
            "2",
            "--json",
        ],
    )
    assert r.exit_code == 0, r.output
    out = json.loads(r.stdout)
    assert out["approx"] and out["results"][0][0]["path"] == env["images"][1].name


# ------------------------------------------------------------------ where filters
def _widths(env) -> dict[str, int]:
    return {p.name: Image.open(p).size[0] for p in env["images"]}


# each predicate with the same test in Python, over the row columns a filter may use
FILTERS = [
    ("width = 168", lambda name, w: w == 168),
    ("path LIKE 'img0%' AND width > 170", lambda name, w: name.startswith("img0") and w > 170),
    (
        "path IN ('img01.png', 'img05.png') OR width < 200",
        lambda name, w: name in ("img01.png", "img05.png") or w < 200,
    ),
    ("page = 0 AND size > 0 AND mtime > 0 AND height = 224 AND root LIKE '%imgs'", lambda name, w: True),
    ("path = 'nothing.png'", lambda name, w: False),
]


def _filtered(full: list[Hit], keep, widths) -> list[tuple[str, float]]:
    return [(h.path, h.score) for h in full if keep(h.path, widths[h.path])]


def _assert_same(hits: list[Hit], want: list[tuple[str, float]]):
    assert [h.path for h in hits] == [p for p, _ in want]
    np.testing.assert_allclose([h.score for h in hits], [s for _, s in want], rtol=1e-6)
    assert [h.rank for h in hits] == list(range(1, len(hits) + 1))


@pytest.mark.parametrize("which", ["col", "bi"])
def test_where_equals_filtered_brute_force_ranking(env, which):
    idx = Index.open(env[f"{which}_store"], backend="cpu", batch_rows=3)
    embs = idx.embed_queries(QUERIES + [env["images"][3]])
    full = idx.search_embeddings(embs, k=N_IMAGES)  # every row, ranked
    widths = _widths(env)
    for where, keep in FILTERS:
        got = idx.search_embeddings(embs, k=N_IMAGES, where=where)
        for g, f in zip(got, full):
            _assert_same(g, _filtered(f, keep, widths))
        head = idx.search_embeddings(embs, k=2, where=where)  # the filtered top 2
        for g, f in zip(head, full):
            _assert_same(g, _filtered(f, keep, widths)[:2])
    # the text-query entry points take it too
    a = idx.search(QUERIES[0], k=3, where="width = 168")
    assert [h.path for h in a] == [h.path for h in idx.search_many([QUERIES[0]], k=3, where="width = 168")[0]]
    assert all(widths[h.path] == 168 for h in a)


@pytest.mark.parametrize("method", ["pooled", "lance"])
def test_where_with_approximate_search(env, tmp_path, method):
    store = tmp_path / "store"
    shutil.copytree(env["col_store"], store)
    idx = Index.open(store, backend="cpu")
    idx.build_approx_index(method, **({"num_partitions": 2, "num_sub_vectors": 8} if method == "lance" else {}))
    embs = idx.embed_queries(QUERIES + [env["images"][3]])
    full = idx.search_embeddings(embs, k=N_IMAGES)
    widths = _widths(env)
    for where, keep in FILTERS:
        # every candidate re-ranked: exactly the filtered exact ranking
        got = idx.search_embeddings(embs, k=5, where=where, approx=True, rerank=N_IMAGES, method=method)
        for g, f in zip(got, full):
            _assert_same(g, _filtered(f, keep, widths)[:5])
        # few candidates: they are drawn from the matching rows, and scored exactly
        few = idx.search_embeddings(embs, k=2, where=where, approx=True, rerank=2, method=method)
        n_match = sum(keep(n, w) for n, w in widths.items())
        for g, f in zip(few, full):
            exact = dict(_filtered(f, keep, widths))
            assert {h.path for h in g} <= set(exact)
            if method == "pooled":  # the pooled copy is scanned whole: always k candidates
                assert len(g) == min(2, n_match)
            np.testing.assert_allclose([h.score for h in g], [exact[h.path] for h in g], rtol=1e-6)


def test_invalid_where_is_a_search_error(env):
    idx = Index.open(env["col_store"], backend="cpu")
    q = idx.embed_queries(["hello"])
    cases = {
        "content_hash = 'x'": "unknown column 'content_hash'",  # a real column, not a filter column
        "embedding IS NULL": "unknown column 'embedding'",
        "nosuch > 1 AND page = 0": "unknown column 'nosuch'",
        "\"model_id\" = 'm'": "unknown column 'model_id'",
        "page >": "invalid where",
        "page > 'abc'": "invalid where",
        "path = 'unterminated": "invalid where",
    }
    for where, msg in cases.items():
        for approx in (False, True):
            with pytest.raises(SearchError, match=re.escape(msg)) as e:
                idx.search_embeddings(q, where=where, approx=approx)
            assert ".rs:" not in str(e.value) and "\n" not in str(e.value), str(e.value)
            assert "path, root, page" in str(e.value) or "unknown column" not in msg
    # names inside strings, function names, keywords and case are not columns
    for where in (
        "path = 'content_hash'",
        "lower(path) LIKE '%img0%'",
        "PAGE = 0 and Width > 1",
        "page IS NOT NULL",
        "CAST(page AS BIGINT) < 1e3",
        "\"path\" <> 'it''s'",
        "  ",
    ):
        idx.search_embeddings(q, where=where)


# ------------------------------------------------------------------ row ids
def test_row_ids_are_stable_and_rows_match_the_store(env, tmp_path):
    import hashlib

    from nomic_memory.search.index import row_id
    from nomic_memory.store.table import embedding_to_numpy

    store = tmp_path / "store"
    shutil.copytree(env["col_store"], store)
    idx = Index.open(store, backend="cpu")
    hits = idx.search("a red bicycle", k=N_IMAGES)
    root = str(env["base"] / "imgs")
    for h in hits:
        assert h.id == hashlib.sha256(f"{root}\0{h.path}\0{0}".encode()).hexdigest()[:16] == row_id(root, h.path, 0)
        assert h.to_dict()["id"] == h.id
    assert len({h.id for h in hits}) == N_IMAGES
    again = Index.open(store, backend="cpu").search("a red bicycle", k=N_IMAGES)  # reopened from disk
    assert [(h.path, h.id) for h in again] == [(h.path, h.id) for h in hits]

    stored = Store(store, create=False).only_table().to_arrow().to_pylist()
    assert len(stored) == N_IMAGES
    reopened = Index.open(store)
    for r in stored:
        rid = row_id(r["root"], r["path"], r["page"])
        row = reopened.row(rid)
        for key in ("root", "path", "page", "width", "height", "n_vectors", "size", "mtime", "content_hash"):
            assert row[key] == r[key], key
        assert row["id"] == rid and row["file"] == str(Path(r["root"]) / r["path"])
        json.dumps(row)  # JSON-ready
        emb = reopened.row_embedding(rid)
        assert emb.dtype == np.float32 and emb.shape == (r["n_vectors"], 128)
        np.testing.assert_array_equal(emb, np.asarray(r["embedding"], dtype=np.float32))
    assert reopened.row("0123456789abcdef") is None and reopened.row_embedding("0123456789abcdef") is None

    # the id map follows the table: a new row is found, a deleted one is gone
    src = stored[0]
    new = Record(
        src["root"],
        "new.png",
        "h-new",
        1,
        1.0,
        7,
        9,
        embedding_to_numpy(np.asarray(src["embedding"]), "colqwen", 128)[:5],
        "float32",
    )
    reopened.table.upsert([new])
    new_row = reopened.row(row_id(src["root"], "new.png", 0))
    assert (new_row["width"], new_row["height"], new_row["n_vectors"]) == (7, 9, 5)
    stored_dtype = np.float16 if reopened.info.storage_dtype == "float16" else np.float32
    np.testing.assert_array_equal(
        reopened.row_embedding(new_row["id"]), new.embedding.astype(stored_dtype).astype(np.float32)
    )
    reopened.table.delete_paths(src["root"], [src["path"]])
    assert reopened.row(row_id(src["root"], src["path"], src["page"])) is None


# ------------------------------------------------------------------ a shared model
def test_index_reuses_an_embedders_model(env, monkeypatch):
    import nomic_memory.model.loading
    from nomic_memory.api import Embedder

    own = Index.open(env["col_store"], backend="cpu")
    want = own.search_many(QUERIES + [env["images"][2]], k=N_IMAGES)
    # an Embedder that loads on first use: not loaded by opening the Index, loaded once by the search
    lazy = Embedder(str(env["col"]), backend="cpu", lazy=True)
    idx = Index.open(env["col_store"], model=lazy)
    assert not lazy.is_loaded
    got = idx.search_many(QUERIES, k=N_IMAGES)
    assert lazy.is_loaded and idx.model is lazy.loaded
    assert [[h.path for h in g] for g in got] == [[h.path for h in w] for w in want[: len(QUERIES)]]

    def no_second_model(*a, **k):
        raise AssertionError("the Index loaded a model of its own")

    monkeypatch.setattr(nomic_memory.model.loading, "load_model", no_second_model)
    for given in (env["col_emb"], env["col_emb"].loaded):
        idx = Index.open(env["col_store"], model=given)
        got = idx.search_many(QUERIES + [env["images"][2]], k=N_IMAGES)
        assert idx.model is env["col_emb"].loaded
        for g, w in zip(got, want):
            assert [(h.path, h.score) for h in g] == [(h.path, h.score) for h in w]
        e = idx.embed_queries("a red bicycle")  # a single query
        assert len(e) == 1 and e[0].dtype == np.float32
    # the checks apply to a given model too
    with pytest.raises(ModelMismatchError, match="biqwen"):
        Index.open(env["col_store"], model=env["bi_emb"]).search("hello")
    with pytest.raises(TypeError):
        Index.open(env["col_store"], model="not a model")


def test_single_queries_are_not_split(env):
    idx = Index.open(env["col_store"], backend="cpu")
    img = env["images"][4]
    for q in ("a red bicycle", img, Image.open(img)):
        many = idx.search_many(q, k=3)
        assert len(many) == 1 and [h.path for h in many[0]] == [h.path for h in idx.search(q, k=3)]
    one = idx.embed_queries([img])[0]
    assert len(idx.search_embeddings(one, k=2)) == 1  # one (tokens, dim) array is one query
    assert idx.search_embeddings(one, k=1)[0][0].path == img.name


# ------------------------------------------------------------------ CLI: filters, several queries, usage
def test_cli_where_and_one_result_list_per_query(env):
    runner = CliRunner()
    base = ["--store", str(env["col_store"]), "--backend", "cpu"]
    r = runner.invoke(
        app,
        ["search", "a red bicycle", "the cat sat on the mat", *base, "-k", "10", "--json", "--where", "width = 168"],
    )
    assert r.exit_code == 0, r.output
    out = json.loads(r.stdout)  # stdout is the one JSON document
    assert out["where"] == "width = 168"
    api = Index.open(env["col_store"], backend="cpu").search_many(
        ["a red bicycle", "the cat sat on the mat"], k=10, where="width = 168"
    )
    assert len(out["results"]) == 2
    for i, hits in enumerate(api):
        assert [h["path"] for h in out["results"][i]] == [h.path for h in hits]
        assert [h["id"] for h in out["results"][i]] == [h.id for h in hits]
        assert out["queries"][i]["results"] == out["results"][i]
    assert len(api[0]) == 4 and {h.path for h in api[0]} == {"img00.png", "img03.png", "img06.png", "img09.png"}
    assert [h.path for h in api[0]] != [h.path for h in api[1]]  # really one list per query
    # piped: one plain line per hit, the full path last
    r = runner.invoke(app, ["search", "a red bicycle", *base, "-k", "3", "--where", "width = 168"])
    assert r.exit_code == 0 and "where width = 168" in r.stdout
    assert [line.split(None, 3)[3] for line in r.stdout.splitlines()[2:5]] == [h.file for h in api[0][:3]]
    # refused, exit status 2, one line each
    for args, msg in (
        (["--where", "content_hash = 'x'"], "unknown column 'content_hash'"),
        (["--where", "page >"], "invalid where"),
        (["--index-method", "lance"], "--approx or --build-index"),
        (["--template", "Query:"], "{}"),
    ):
        r = runner.invoke(app, ["search", "x", *base, *args])
        assert r.exit_code == 2, (args, r.output)
        assert msg in r.output and "Traceback" not in r.output


@pytest.mark.slow
def test_cli_approx_prints_no_library_warnings(env, tmp_path):
    """In a fresh process (Lance reads its log level once): build the Lance index, search with it."""
    import sys

    sys.path.insert(0, str(Path(__file__).parent))
    from conftest import cli_env, run_cli

    store = tmp_path / "store"
    shutil.copytree(env["col_store"], store)
    r = run_cli(
        "search",
        "a red bicycle",
        "--store",
        store,
        "--backend",
        "cpu",
        "--build-index",
        "--index-method",
        "lance",
        "--approx",
        "--where",
        "width > 0",
        "-k",
        "3",
        "--json",
        env=cli_env(tmp_path),
    )
    assert r.returncode == 0, r
    out = json.loads(r.stdout)  # nothing but the document on stdout
    assert len(out["results"][0]) == 3 and out["approx"]
    assert "WARN" not in r.stderr and "lance::" not in r.stderr, r.stderr


def test_concurrent_searches_share_one_index(env):
    """A server searches from several threads at once: same results as one at a time, and torch's
    thread count is what it was once they are done."""
    from concurrent.futures import ThreadPoolExecutor

    idx = Index.open(env["col_store"], backend="cpu", batch_rows=1, workers=2)
    embs = idx.embed_queries(QUERIES)
    want = [idx.search_embeddings([e], k=5)[0] for e in embs]
    before = torch.get_num_threads()
    jobs = [(i % len(embs), ["width = 168", None][i % 2]) for i in range(48)]
    with ThreadPoolExecutor(4) as ex:
        got = list(ex.map(lambda j: idx.search_embeddings([embs[j[0]]], k=5, where=j[1])[0], jobs))
    for (qi, where), hits in zip(jobs, got):
        ref = (
            want[qi]
            if where is None
            else [
                h
                for h in idx.search_embeddings([embs[qi]], k=N_IMAGES)[0]
                if h.path in {"img00.png", "img03.png", "img06.png", "img09.png"}
            ][:5]
        )
        assert [(h.path, h.id) for h in hits] == [(h.path, h.id) for h in ref]
        np.testing.assert_allclose([h.score for h in hits], [h.score for h in ref], rtol=1e-6)
    ids = [h.id for h in want[0]]
    with ThreadPoolExecutor(4) as ex:  # rows by id from several threads: one map, built once
        rows = list(ex.map(idx.row, ids * 4))
    assert [r["id"] for r in rows] == ids * 4
    assert torch.get_num_threads() == before
    with ThreadPoolExecutor(1) as ex:  # what a new thread (the next request) starts with
        assert ex.submit(torch.get_num_threads).result() == before


class _Gated:
    """A real Lance dataset whose scan announces it has started, then waits for ``gate``."""

    def __init__(self, ds):
        import threading

        self.ds, self.started, self.gate = ds, threading.Event(), threading.Event()

    def to_batches(self, **kw):
        for b in self.ds.to_batches(**kw):
            self.started.set()
            assert self.gate.wait(60)
            yield b


def test_overlapping_scans_restore_torch_threads(env):
    """Scan B starts while scan A runs and ends after it: every thread started afterwards (a
    server's next request, a model forward) still gets torch's full thread count."""
    from concurrent.futures import ThreadPoolExecutor

    from nomic_memory.search.scoring import default_workers, exact_scan

    idx = Index.open(env["col_store"], backend="cpu")
    q = idx.embed_queries(["hello"])
    before = torch.get_num_threads()
    a, b = _Gated(idx.table.table.to_lance()), _Gated(idx.table.table.to_lance())
    with ThreadPoolExecutor(2) as ex:
        fa = ex.submit(exact_scan, a, idx.info, q, 3, workers=2)
        assert a.started.wait(60)
        fb = ex.submit(exact_scan, b, idx.info, q, 3, workers=2)
        assert b.started.wait(60)
        assert default_workers() == before  # what a scan starting now would use
        a.gate.set()
        ra = fa.result(60)
        b.gate.set()
        rb = fb.result(60)
    assert ra.results() == rb.results()
    with ThreadPoolExecutor(1) as ex:
        assert ex.submit(torch.get_num_threads).result() == before
    assert torch.get_num_threads() == before


def test_document_pages_have_their_own_ids_and_filter_by_page(env, tmp_path):
    """A PDF's pages are rows (page 1..N) with their own ids; ``page`` filters them."""
    from nomic_memory.search.index import row_id

    folder = tmp_path / "docs"
    folder.mkdir()
    first = Image.new("RGB", (200, 300), (200, 20, 20))
    first.save(
        folder / "doc.pdf",
        save_all=True,
        resolution=72.0,
        append_images=[Image.new("RGB", (300, 200), (20, 20, 200)), Image.new("RGB", (150, 150), (0, 160, 0))],
    )
    shutil.copy(env["images"][0], folder / "photo.png")
    env["col_emb"].embed_directory(folder, store=tmp_path / "store", workers=0)
    idx = Index.open(tmp_path / "store", model=env["col_emb"])
    hits = idx.search("a green square", k=10)
    root = str(folder.resolve())
    assert sorted((h.path, h.page) for h in hits) == [("doc.pdf", 1), ("doc.pdf", 2), ("doc.pdf", 3), ("photo.png", 0)]
    assert {h.id for h in hits} == {row_id(root, h.path, h.page) for h in hits} and len({h.id for h in hits}) == 4
    later = idx.search("a green square", k=10, where="page >= 2")
    assert [(h.path, h.page, h.score) for h in later] == [(h.path, h.page, h.score) for h in hits if h.page >= 2]
    for h in hits:
        row = idx.row(h.id)
        assert (row["path"], row["page"]) == (h.path, h.page)
        assert idx.row_embedding(h.id).shape == (row["n_vectors"], 128)


def test_rows_together_equal_one_by_one(env):
    idx = Index.open(env["col_store"], backend="cpu")
    ids = [h.id for h in idx.search("a page", 5)]
    assert len(ids) == 5
    wanted = [ids[3], "0" * 16, ids[0], ids[3]]  # out of order, one missing, one twice
    got = idx.rows(wanted)
    assert got == [idx.row(i) for i in wanted]
    assert got[1] is None and got[0] is not None and got[0]["id"] == ids[3]
    assert idx.rows([]) == []
