"""``nomic-memory import``: embeddings made elsewhere into a store, through the real code path.

Stores are real LanceDB stores written by ``embed`` (the tiny random models) or by the import,
reopened from disk; sources are real parquet and npz files (this tool's own export, or written
with pyarrow/numpy as another tool would); searches run through ``Index``.  Tests that start the
CLI as a subprocess (kill -9, the one-line errors) are marked slow.
"""

from __future__ import annotations

import datetime as dt
import gzip
import json
import pickle
import shutil
import signal

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from conftest import cli_env, finish, kill_when_rows, run_cli_many, start_cli
from nomic_memory import Index, Store
from nomic_memory.errors import ModelLoadError, UsageError
from nomic_memory.model.files import model_facts
from nomic_memory.model.loading import ModelSpec
from nomic_memory.run.importing import ImportRefused, import_embeddings
from nomic_memory.store import embedding_to_numpy
from nomic_memory.store.export import export_store

QUERIES = ["a red bicycle", "quarterly revenue", "x"]
COMMIT = "0123456789abcdef0123456789abcdef01234567"


# ---------------------------------------------------------------- helpers
def _table(store):
    return Store(store, create=False).only_table()


def _rows(store) -> dict[tuple, dict]:
    t = _table(store)
    out = {}
    for r in t.to_arrow().to_pylist():
        r["embedding"] = embedding_to_numpy(r["embedding"], t.info.kind, t.info.dim)
        out[(r["root"], r["path"], r["page"])] = r
    return out


def _nothing_written(store) -> bool:
    """No store made (a new one is made only once the sources pass their check)."""
    return not store.exists()


def _hits(hits) -> list[list[tuple]]:
    return [[(h.rank, h.score, h.root, h.path, h.page) for h in q] for q in hits]


def _vectors(rng, kind: str, dim: int, n: int) -> list[np.ndarray]:
    """Page-like vectors: a few shared topics plus noise (so search has neighbours to find)."""
    topics = rng.normal(size=(6, dim)).astype(np.float32)
    out = []
    for i in range(n):
        if kind == "colqwen":
            k = int(rng.integers(3, 12))
            v = topics[rng.integers(0, 6, size=k)] + 0.3 * rng.normal(size=(k, dim))
        else:
            v = topics[i % 6] + 0.3 * rng.normal(size=dim)
        out.append((v / np.linalg.norm(v, axis=-1, keepdims=True)).astype(np.float32))
    return out


def _write_parquet(path, vecs, vtype, kind: str, paths=None, pages=None, **extra):
    vt = pa.float16() if vtype == "float16" else pa.float32()
    t = pa.list_(pa.list_(vt)) if kind == "colqwen" else pa.list_(vt)
    cols = {
        "path": paths or [f"doc{i // 3}.pdf" for i in range(len(vecs))],
        "page": pages or [i % 3 + 1 for i in range(len(vecs))],
        "embedding": pa.array([v.astype(vtype).tolist() for v in vecs], type=t),
        **extra,
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.table(cols), path)
    return path


def _maxsim(q: np.ndarray, d: np.ndarray, kind: str) -> float:
    return float((q @ d.T).max(axis=1).sum()) if kind == "colqwen" else float(q @ d)


# ---------------------------------------------------------------- fixtures
@pytest.fixture(scope="module")
def embedded(tmp_path_factory, loaded, image_dir):
    """Per kind: a store embedded with the tiny model, and its npz and parquet exports."""
    tmp = tmp_path_factory.mktemp("import-src")
    out = {}
    for kind, emb in loaded.items():
        store = tmp / f"store-{kind}"
        emb.embed_directory(image_dir, store=store, workers=0)
        npz, parquet = tmp / f"{kind}.npz", tmp / f"{kind}.parquet"
        export_store(store, "npz", npz)
        export_store(store, "parquet", parquet)
        out[kind] = {"store": store, "npz": npz, "parquet": parquet}
    return out


# ---------------------------------------------------------------- the model stamp
@pytest.mark.parametrize("kind", ["colqwen", "biqwen"])
def test_model_files_tell_what_loading_tells(loaded, tiny_models, kind):
    lm = loaded[kind].loaded
    f = model_facts(ModelSpec.of(str(tiny_models[kind])))
    assert (f.model_id, f.revision, f.kind, f.dim, f.table_name) == (
        lm.model_id,
        lm.revision,
        lm.kind,
        lm.dim,
        lm.table_name,
    )
    assert f.fingerprint == lm.fingerprint and f.fingerprints == lm.fingerprints


def test_hub_model_not_on_this_machine_needs_a_commit(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ModelLoadError, match="pass --revision COMMIT"):
        model_facts(ModelSpec.of("nomic-3b"))
    f = model_facts(ModelSpec.of("nomic-3b", revision=COMMIT))
    assert (f.model_id, f.revision, f.kind, f.dim, f.fingerprint) == (
        "nomic-ai/nomic-embed-multimodal-3b",
        COMMIT,
        "biqwen",
        2048,
        "",
    )
    assert model_facts(ModelSpec.of("colnomic-7b", revision=COMMIT)).fingerprint is None  # unknown


def test_missing_source_is_named_before_the_model_is_looked_up(monkeypatch, tmp_path):
    """A mistyped source is reported as such, not as a hub model this offline machine cannot
    resolve (the revision lookup comes second); nothing is written."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ImportRefused, match="no such file or directory"):
        import_embeddings(tmp_path / "typo.parquet", tmp_path / "store", "nomic-3b")
    assert not (tmp_path / "store").exists()


# ---------------------------------------------------------------- round trips
@pytest.mark.parametrize("fmt", ["npz", "parquet"])
@pytest.mark.parametrize("kind", ["colqwen", "biqwen"])
def test_export_import_round_trip_is_lossless(embedded, loaded, tiny_models, image_dir, tmp_path, kind, fmt):
    src = embedded[kind]
    store = tmp_path / "imported"
    report = import_embeddings(src[fmt], store, str(tiny_models[kind]), root=image_dir if fmt == "npz" else None)
    assert report.imported == report.rows == len(_rows(src["store"])) and report.warnings == []

    a, b = _table(src["store"]), _table(store)
    assert b.name == a.name and b.info == a.info  # model, revision, kind, dim, fingerprint, storage dtype, seed
    before, after = _rows(src["store"]), _rows(store)
    assert after.keys() == before.keys()
    same = ["n_vectors", "model_id", "model_revision", "proj_fingerprint", "embedding_checksum"]
    if fmt == "parquet":  # the parquet export carries every column
        same += ["content_hash", "size", "mtime", "width", "height", "dtype"]
    for key, row in before.items():
        assert np.array_equal(after[key]["embedding"], row["embedding"]), key
        assert {c: after[key][c] for c in same} == {c: row[c] for c in same}, key

    # The imported table opens with the model it records (loaded from its model id and checked
    # against the table), and gives the same hits and scores as the original for the same queries.
    index = Index.open(store)
    q = index.embed_queries(QUERIES)
    want = _hits(Index.open(src["store"], model=loaded[kind]).search_embeddings(q, k=5))
    got = _hits(index.search_embeddings(q, k=5))
    assert [[(h[0], *h[2:]) for h in qh] for qh in got] == [[(h[0], *h[2:]) for h in wh] for wh in want]
    # Scores agree to float32 rounding: a scan's matrix products sum in an order that depends on
    # how rows fall into data files.  Laid out alike (each table compacted), they are bit-identical.
    np.testing.assert_allclose([h[1] for qh in got for h in qh], [h[1] for qh in want for h in qh], rtol=1e-6)
    orig = shutil.copytree(src["store"], tmp_path / "original")
    for s in (orig, store):
        _table(s).optimize(dt.timedelta(0))
    assert _hits(Index.open(store, model=index.model).search_embeddings(q, k=5)) == _hits(
        Index.open(orig, model=index.model).search_embeddings(q, k=5)
    )


def test_rerun_writes_nothing(embedded, tiny_colqwen, tmp_path):
    store = tmp_path / "s"
    first = import_embeddings(embedded["colqwen"]["parquet"], store, str(tiny_colqwen))
    version = _table(store).version()
    again = import_embeddings(embedded["colqwen"]["parquet"], store, str(tiny_colqwen))
    assert (again.imported, again.unchanged, again.commits) == (0, first.imported, 0)
    assert _table(store).version() == version  # not one commit


def test_import_beside_embedded_rows_shares_the_table(embedded, loaded, tiny_colqwen, image_dir, tmp_path):
    """Rows imported under another root join the table ``embed`` made with the same model."""
    store = tmp_path / "s"
    shutil.copytree(embedded["colqwen"]["store"], store)
    n = _table(store).count()
    report = import_embeddings(embedded["colqwen"]["npz"], store, str(tiny_colqwen), root=tmp_path / "elsewhere")
    assert report.imported == n and _table(store).count() == 2 * n
    assert set(_table(store).roots()) == {str(image_dir.resolve()), str((tmp_path / "elsewhere").resolve())}
    hits = Index.open(store, model=loaded["colqwen"]).search("a red bicycle", k=2 * n)
    assert {h.root for h in hits} == set(_table(store).roots())


def test_root_option_moves_rows_of_a_source_with_a_root_column(embedded, tiny_colqwen, tmp_path):
    store = tmp_path / "s"
    import_embeddings(embedded["colqwen"]["parquet"], store, str(tiny_colqwen), root=tmp_path / "moved")
    assert set(_table(store).roots()) == {str((tmp_path / "moved").resolve())}


# ---------------------------------------------------------------- plain parquet
@pytest.mark.parametrize("dtype", ["float16", "float32"])
@pytest.mark.parametrize("kind", ["colqwen", "biqwen"])
def test_plain_parquet(tiny_models, loaded, tmp_path, kind, dtype):
    dim = loaded[kind].loaded.dim
    rng = np.random.default_rng(7)
    vecs = _vectors(rng, kind, dim, 30)
    src = _write_parquet(tmp_path / "vecs.parquet", vecs, dtype, kind)
    store = tmp_path / "s"
    report = import_embeddings(src, store, str(tiny_models[kind]), root=tmp_path / "docs")
    assert (report.imported, report.storage_dtype) == (30, dtype)
    table = _table(store)
    assert table.info.storage_dtype == dtype
    rows = _rows(store)
    root = str((tmp_path / "docs").resolve())
    for i, v in enumerate(vecs):
        r = rows[(root, f"doc{i // 3}.pdf", i % 3 + 1)]
        assert np.array_equal(r["embedding"], v.astype(dtype).astype(np.float32))
        assert r["n_vectors"] == (len(v) if kind == "colqwen" else 1) and r["dtype"] == dtype
        assert r["content_hash"] is None and r["width"] is None  # not in the source: not made up
    q = vecs[4][:2] if kind == "colqwen" else vecs[4]
    hits = Index.open(store).search_embeddings(q, k=5)[0]
    scores = sorted((_maxsim(q, v.astype(dtype).astype(np.float32), kind) for v in vecs), reverse=True)[:5]
    np.testing.assert_allclose([h.score for h in hits], scores, rtol=1e-5)


def test_folder_of_parquets(tiny_colqwen, tmp_path):
    rng = np.random.default_rng(3)
    vecs = _vectors(rng, "colqwen", 128, 24)
    src = tmp_path / "src"
    for part in range(3):
        chunk = vecs[part * 8 : (part + 1) * 8]
        _write_parquet(
            src / f"sub{part % 2}" / f"part{part}.parquet",
            chunk,
            "float16",
            "colqwen",
            paths=[f"p{part}/img{i}.png" for i in range(8)],
            pages=[0] * 8,
        )
    (src / "README.txt").write_text("made by another tool\n")
    report = import_embeddings(src, tmp_path / "s", str(tiny_colqwen), root=tmp_path / "imgs")
    assert (report.files, report.imported, report.ignored) == (3, 24, [str(src / "README.txt")])
    assert {k[1] for k in _rows(tmp_path / "s")} == {f"p{p}/img{i}.png" for p in range(3) for i in range(8)}


# ---------------------------------------------------------------- bad input
def _good(tmp_path, name="good.parquet", n=6, **kw):
    return _write_parquet(
        tmp_path / name, _vectors(np.random.default_rng(1), "colqwen", 128, n), "float32", "colqwen", **kw
    )


class _Boom:
    """Unpickling this writes a file: proof that a pickle was (or was not) loaded."""

    def __init__(self, sentinel):
        self.sentinel = sentinel

    def __reduce__(self):
        return (open, (str(self.sentinel), "w"))


def _bad_source(tmp_path, case: str):
    """A bad source file for ``case``, and what its one-line reason must say."""
    rng = np.random.default_rng(2)
    vecs = _vectors(rng, "colqwen", 128, 5)
    sentinel = tmp_path / "UNPICKLED"
    if case == "wrong_dim":
        return _write_parquet(tmp_path / "x.parquet", [v[:, :64] for v in vecs], "float32", "colqwen"), "64-d vector"
    if case == "one_vector_per_row":
        return _write_parquet(tmp_path / "x.parquet", [v[0] for v in vecs], "float32", "biqwen"), "one vector per row"
    if case in ("nan", "inf"):
        vecs[3][1, 5] = np.nan if case == "nan" else np.inf
        return _write_parquet(tmp_path / "x.parquet", vecs, "float32", "colqwen"), "row 3 (doc1.pdf, page 1): " + (
            "NaN" if case == "nan" else "infinite"
        )
    if case == "beyond_float16":
        vecs[2][0, 0] = 1e6
        return _write_parquet(
            tmp_path / "x.parquet", vecs, "float32", "colqwen", dtype=["bfloat16"] * 5
        ), "beyond float16's range"
    if case == "no_embedding":
        pq.write_table(pa.table({"path": ["a.png"], "vectors": [[[0.1] * 128]]}), tmp_path / "x.parquet")
        return tmp_path / "x.parquet", "no 'embedding' column"
    if case == "no_path":
        pq.write_table(pa.table({"file": ["a.png"], "embedding": [[[0.1] * 128]]}), tmp_path / "x.parquet")
        return tmp_path / "x.parquet", "no 'path' column"
    if case == "duplicate":
        return _write_parquet(
            tmp_path / "x.parquet", vecs[:2], "float32", "colqwen", paths=["a.png"] * 2, pages=[0, 0]
        ), "'a.png' (page 0) appears twice in this file"
    if case == "escaping_path":
        return _write_parquet(
            tmp_path / "x.parquet", vecs[:1], "float32", "colqwen", paths=["../a.png"], pages=[0]
        ), "not a plain relative path"
    if case in ("pkl", "pt", "bin"):
        (tmp_path / f"x.{case}").write_bytes(pickle.dumps({"a.png": _Boom(sentinel)}))
        return tmp_path / f"x.{case}", "a Python pickle"
    if case == "pickle_named_parquet":
        (tmp_path / "x.parquet").write_bytes(pickle.dumps(_Boom(sentinel)))
        return tmp_path / "x.parquet", "a Python pickle"
    if case == "npz_objects":
        np.savez(tmp_path / "x.npz", **{"a.png": np.array([_Boom(sentinel)], dtype=object)})
        return tmp_path / "x.npz", "holds Python objects"
    if case == "truncated":
        data = _good(tmp_path, "full.parquet", n=50).read_bytes()
        (tmp_path / "x.parquet").write_bytes(data[: len(data) // 2])
        (tmp_path / "full.parquet").unlink()
        return tmp_path / "x.parquet", "not a readable parquet file"
    if case == "garbage":
        (tmp_path / "x.parquet").write_bytes(b"\x00\x01 not parquet" * 50)
        return tmp_path / "x.parquet", "neither a parquet nor an npz file"
    raise AssertionError(case)


BAD_CASES = [
    "wrong_dim",
    "one_vector_per_row",
    "nan",
    "inf",
    "beyond_float16",
    "no_embedding",
    "no_path",
    "duplicate",
    "escaping_path",
    "pkl",
    "pt",
    "bin",
    "pickle_named_parquet",
    "npz_objects",
    "truncated",
    "garbage",
]


@pytest.mark.parametrize("case", BAD_CASES)
def test_bad_source_is_refused_naming_file_and_reason(tiny_colqwen, tmp_path, case):
    src, reason = _bad_source(tmp_path, case)
    store = tmp_path / "s"
    with pytest.raises(ImportRefused) as e:
        import_embeddings(src, store, str(tiny_colqwen), root=tmp_path)
    assert len(e.value.problems) == 1
    line = str(e.value)
    assert "\n" not in line and line.startswith(f"{src}: ") and reason in line, line
    assert _nothing_written(store)
    assert not (tmp_path / "UNPICKLED").exists()  # no pickle was ever loaded


def test_folder_with_a_bad_file_imports_nothing(embedded, tiny_colqwen, tmp_path):
    """Every file is checked before anything is written: one bad file refuses the folder, each
    bad file named on its own line; a store that already had rows is left as it was."""
    src = tmp_path / "src"
    _good(src, "a.parquet", paths=[f"a{i}.png" for i in range(6)], pages=[0] * 6)
    _good(src, "c.parquet", paths=[f"c{i}.png" for i in range(6)], pages=[0] * 6)
    bad, _ = _bad_source(tmp_path, "nan")
    shutil.move(bad, src / "b.parquet")
    (src / "weights.pt").write_bytes(b"\x80\x04N.")
    store = tmp_path / "s"
    shutil.copytree(embedded["colqwen"]["store"], store)
    version, n = _table(store).version(), _table(store).count()
    with pytest.raises(ImportRefused) as e:
        import_embeddings(src, store, str(tiny_colqwen), root=tmp_path)
    assert sorted(str(p.path) for p in e.value.problems) == [str(src / "b.parquet"), str(src / "weights.pt")]
    assert (_table(store).version(), _table(store).count()) == (version, n)


def test_source_without_root_needs_the_root_option(embedded, tiny_colqwen, tmp_path):
    with pytest.raises(UsageError, match="has no root column: pass --root DIR"):
        import_embeddings(embedded["colqwen"]["npz"], tmp_path / "s", str(tiny_colqwen))
    assert _nothing_written(tmp_path / "s")


def test_rows_of_another_model_are_refused(embedded, tmp_path):
    from nomic_memory.model.tiny import build_tiny_model

    # other weights (a local directory's revision digests its configs and tensor layout, the
    # same here: the projection tells them apart)
    other = build_tiny_model(tmp_path / "other-colqwen", "colqwen", seed=5)
    with pytest.raises(
        ImportRefused,
        match="its rows were made with projection [0-9a-f]{16}, but .*other-colqwen has projection [0-9a-f]{16}",
    ):
        import_embeddings(embedded["colqwen"]["parquet"], tmp_path / "s", str(other))
    t = pq.read_table(embedded["colqwen"]["parquet"])  # rows another revision made
    t = t.set_column(
        t.schema.get_field_index("model_revision"), "model_revision", pa.array(["local-0123456789abcdef"] * t.num_rows)
    )
    pq.write_table(t, tmp_path / "other-revision.parquet")
    with pytest.raises(
        ImportRefused,
        match="its rows were made by .* at revision local-0123456789abcdef, but "
        ".* is revision local-.*import them with the model that made them",
    ):
        import_embeddings(tmp_path / "other-revision.parquet", tmp_path / "s", str(other))
    with pytest.raises(ImportRefused, match="one vector per row"):  # a Nomic export is not ColNomic's
        import_embeddings(embedded["biqwen"]["parquet"], tmp_path / "s", str(other))
    assert _nothing_written(tmp_path / "s")


def test_rows_of_other_weights_do_not_join_a_table(embedded, tmp_path):
    """Search embeds queries with the weights a table records: rows another projection made
    (here: a model directory whose files were replaced by other weights) would be scored
    meaninglessly, so they are refused and the table is left as it was."""
    import dataclasses

    from nomic_memory.errors import StoreError
    from nomic_memory.model.tiny import build_tiny_model
    from nomic_memory.run.importing import resolve_stamp

    store = tmp_path / "s"
    shutil.copytree(embedded["colqwen"]["store"], store)
    table = _table(store)
    other = resolve_stamp(str(build_tiny_model(tmp_path / "other", "colqwen", seed=5)))
    stamp = dataclasses.replace(other, model_id=table.info.model_id, table_name=table.name)
    with pytest.raises(StoreError, match="was made by .* at projection [0-9a-f]{16}, the rows projection"):
        import_embeddings(_good(tmp_path, n=3), store, stamp, root=tmp_path)
    assert (_table(store).count(), _table(store).version()) == (table.count(), table.version())


def test_variant_width_is_checked(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    vecs = _vectors(np.random.default_rng(4), "biqwen", 2048, 4)
    src = _write_parquet(tmp_path / "n3b.parquet", vecs, "float16", "biqwen")
    with pytest.raises(ImportRefused, match="2048-d vector, but nomic-ai/nomic-embed-multimodal-7b makes one 3584-d"):
        import_embeddings(src, tmp_path / "s", "nomic-7b", revision=COMMIT, root=tmp_path)
    report = import_embeddings(src, tmp_path / "s", "nomic-3b", revision=COMMIT, root=tmp_path)
    info = _table(tmp_path / "s").info
    assert report.imported == 4 and (info.model_id, info.revision, info.dim) == (
        "nomic-ai/nomic-embed-multimodal-3b",
        COMMIT,
        2048,
    )


# ---------------------------------------------------------------- unknown projection
@pytest.fixture(scope="module")
def headless(tmp_path_factory, tiny_colqwen):
    """The tiny ColQwen without custom_text_proj in its checkpoint: loading initialises it from
    the seed, so only loading can tell its fingerprint."""
    from safetensors.torch import load_file, save_file

    d = shutil.copytree(tiny_colqwen, tmp_path_factory.mktemp("headless") / "tiny-headless")
    weights = load_file(d / "model.safetensors")
    save_file(
        {k: v for k, v in weights.items() if "custom_text_proj" not in k},
        d / "model.safetensors",
        metadata={"format": "pt"},
    )
    return d


def test_unknown_projection_is_recorded_as_unknown_and_searchable(headless, tmp_path):
    vecs = _vectors(np.random.default_rng(5), "colqwen", 128, 12)
    src = _write_parquet(tmp_path / "v.parquet", vecs, "float32", "colqwen")
    report = import_embeddings(src, tmp_path / "s", str(headless), root=tmp_path)
    assert report.fingerprint == "" and "projection fingerprint" in report.warnings[0]
    info = _table(tmp_path / "s").info
    assert info.fingerprint == ""
    index = Index.open(tmp_path / "s")
    hits = index.search("a red bicycle", k=3)  # the model loads; its revision is checked, not its projection
    assert len(hits) == 3 and index.model.fingerprint != ""


def test_export_says_which_projection_made_the_rows(headless, image_dir, tmp_path):
    """Where the model's files cannot tell the projection, this tool's export can."""
    from nomic_memory import Embedder

    emb = Embedder(str(headless), backend="cpu")
    emb.embed_directory(image_dir, store=tmp_path / "a", workers=0)
    export_store(tmp_path / "a", "parquet", tmp_path / "a.parquet")
    report = import_embeddings(tmp_path / "a.parquet", tmp_path / "b", str(headless))
    assert report.fingerprint == emb.loaded.fingerprint and report.warnings == []
    assert _table(tmp_path / "b").info == _table(tmp_path / "a").info
    want = Index.open(tmp_path / "a", model=emb).search_many(QUERIES, k=4)
    assert _hits(Index.open(tmp_path / "b", model=emb).search_many(QUERIES, k=4)) == _hits(want)


# ---------------------------------------------------------------- byaldi
def _byaldi_index(folder):
    import torch

    (folder / "embeddings").mkdir(parents=True)
    torch.save([torch.zeros(3, 128), torch.zeros(4, 128)], folder / "embeddings" / "embeddings_0.pt")
    for name, obj in {
        "index_config.json.gz": {"model_name": "vidore/colqwen2-v1.0", "library_version": "0.0.7"},
        "embed_id_to_doc_id.json.gz": {"0": {"doc_id": 0, "page_id": 1}},
        "doc_ids_to_file_names.json.gz": {"0": "report.pdf"},
    }.items():
        with gzip.open(folder / name, "wt") as f:
            json.dump(obj, f)
    return folder


@pytest.mark.parametrize("nested", [False, True])
def test_byaldi_index_is_refused_with_the_reason(tiny_colqwen, tmp_path, nested):
    index = _byaldi_index(tmp_path / ".byaldi" / "my-index")
    src = index.parent if nested else index
    with pytest.raises(ImportRefused) as e:
        import_embeddings(src, tmp_path / "s", str(tiny_colqwen), root=tmp_path)
    assert len(e.value.problems) == 1  # the index, not each of its files
    msg = str(e.value)
    assert msg.startswith(f"{index}: a byaldi index (made with vidore/colqwen2-v1.0)") and "torch.save" in msg
    assert _nothing_written(tmp_path / "s")


# ---------------------------------------------------------------- the CLI
N_KILL = 3000


@pytest.mark.slow
def test_kill9_mid_import_then_resume(tiny_colqwen, tmp_path):
    vecs = _vectors(np.random.default_rng(9), "colqwen", 128, N_KILL)
    src = _write_parquet(
        tmp_path / "big.parquet",
        vecs,
        "float16",
        "colqwen",
        paths=[f"d{i // 100}/img{i}.png" for i in range(N_KILL)],
        pages=[0] * N_KILL,
    )
    store, env = tmp_path / "s", cli_env(tmp_path)
    args = [
        "import",
        src,
        "--model-name",
        tiny_colqwen,
        "--store",
        store,
        "--root",
        tmp_path / "imgs",
        "--batch-rows",
        "20",
        "--json",
    ]
    proc = start_cli(*args, env=env)
    watcher, seen = kill_when_rows(proc, store, 200, N_KILL - 200)
    clean = import_embeddings(src, tmp_path / "clean", str(tiny_colqwen), root=tmp_path / "imgs")  # reference
    watcher.join()
    result = finish(proc)
    assert result.returncode == -signal.SIGKILL, f"not killed mid-way (rows seen: {seen})\n{result}"
    before = _table(store).count()
    assert 0 < before < N_KILL and before % 20 == 0  # whole batches only

    second = finish(start_cli(*args, env=env))
    assert second.returncode == 0, str(second)
    report = second.json()
    assert second.stdout.strip().count("\n") == 0  # --json: the document alone on stdout
    assert (report["unchanged"], report["imported"]) == (before, N_KILL - before)
    got, want = _rows(store), _rows(tmp_path / "clean")
    assert got.keys() == want.keys() and clean.imported == N_KILL == _table(store).count()
    for k in want:
        assert np.array_equal(got[k]["embedding"], want[k]["embedding"]), k


@pytest.mark.slow
def test_cli_bad_inputs_one_line_exit_1(tiny_colqwen, embedded, tmp_path):
    env = cli_env(tmp_path)
    cases = {}
    for case in ("nan", "pkl", "truncated"):  # each CLI process pays the torch and LanceDB imports
        d = tmp_path / case
        d.mkdir()
        src, reason = _bad_source(d, case)
        cases[case] = (src, reason, d / "s")
    commands = {
        c: ["import", src, "--model-name", tiny_colqwen, "--store", s, "--root", tmp_path]
        for c, (src, _, s) in cases.items()
    }
    commands["no_model"] = ["import", embedded["colqwen"]["npz"], "--store", tmp_path / "s0"]
    commands["both_models"] = [
        "import",
        embedded["colqwen"]["npz"],
        "--model-variant",
        "nomic-3b",
        "--model-name",
        tiny_colqwen,
        "--store",
        tmp_path / "s0",
    ]
    commands["no_root"] = [
        "import",
        embedded["colqwen"]["npz"],
        "--model-name",
        tiny_colqwen,
        "--store",
        tmp_path / "s0",
    ]
    runs = run_cli_many(commands, env=env, parallel=3)
    for case, (src, reason, store) in cases.items():
        r = runs[case]
        lines = r.stderr.strip().splitlines()
        assert r.returncode == 1 and lines == [lines[0], "Nothing was imported."], str(r)
        assert lines[0].startswith(f"Error: {src}: ") and reason in lines[0] and "Traceback" not in r.stderr
        assert _nothing_written(store)
    for case in ("no_model", "both_models", "no_root"):
        r = runs[case]
        assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1, str(r)
    assert "--root DIR" in runs["no_root"].stderr and _nothing_written(tmp_path / "s0")


def test_heatmap_of_a_row_without_its_page_size_is_unavailable():
    """A plain source may not record width and height: the server answers 409, not a crash."""
    from nomic_memory.serve.heatmap import HeatmapUnavailable, layout

    with pytest.raises(HeatmapUnavailable, match="size was not recorded"):
        layout(None, None, None)
