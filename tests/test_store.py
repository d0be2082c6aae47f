"""The LanceDB store: schema, reopening, incremental re-runs, pruning, and surviving kill -9.

All of it through the real code path: ``Embedder.embed_directory`` (or the CLI as a subprocess)
writing a real LanceDB store, read back with a fresh ``Store`` object.
"""

from __future__ import annotations

import collections
import os
import signal

import numpy as np
import pytest

from conftest import CLEAN_IMAGES, cli_env, copy_tree, finish, kill_when_rows, make_image, on_cpu, start_cli
from nomic_memory.store.table import Store, embedding_to_numpy

SCHEMA_COLUMNS = [
    "path",
    "content_hash",
    "size",
    "mtime",
    "width",
    "height",
    "n_vectors",
    "model_id",
    "model_revision",
    "proj_fingerprint",
    "dtype",
    "embedding",
]


def _rows(store_path) -> list[dict]:
    """All rows, read through a brand-new Store object (nothing cached from the writer)."""
    return Store(store_path).only_table().to_arrow().to_pylist()


def _embeddings(store_path) -> dict[str, np.ndarray]:
    t = Store(store_path).only_table()
    return {
        r["path"]: embedding_to_numpy(r["embedding"], t.info.kind, t.info.dim)
        for r in t.to_arrow(["path", "embedding"]).to_pylist()
    }


def _assert_unique(rows: list[dict]) -> None:
    keys = collections.Counter((r["root"], r["path"]) for r in rows)
    dup = [k for k, n in keys.items() if n > 1]
    assert not dup, f"duplicate (root, path) rows: {dup}"


@pytest.mark.parametrize("kind", ["colqwen", "biqwen"])
def test_schema_and_reopen(loaded, image_dir, tmp_path, kind):
    emb = loaded[kind]
    store = tmp_path / "store"
    report = emb.embed_directory(image_dir, store=store, workers=0)
    assert report.embedded == len(CLEAN_IMAGES) and not report.failed
    assert report.discovered == len(CLEAN_IMAGES)  # notes.txt is not an image

    reopened = Store(store)
    assert reopened.table_names() == [report.table]
    table = reopened.only_table()
    assert table.count() == len(CLEAN_IMAGES)
    info = table.info
    assert (info.kind, info.model_id, info.storage_dtype) == (kind, emb.loaded.model_id, "float32")
    assert info.dim == (128 if kind == "colqwen" else emb.loaded.dim)
    assert info.fingerprint == emb.loaded.fingerprint

    t = table.to_arrow()
    for col in SCHEMA_COLUMNS + ["root", "embedded_at"]:
        assert col in t.column_names, f"missing column {col}"
    rows = t.to_pylist()
    _assert_unique(rows)
    root = str(image_dir.resolve())
    for r in rows:
        src = image_dir / r["path"]
        assert r["root"] == root
        assert r["size"] == src.stat().st_size
        assert r["mtime"] == pytest.approx(src.stat().st_mtime)
        w, h, _ = CLEAN_IMAGES[r["path"]]
        assert (r["width"], r["height"]) == (w, h)
        assert len(r["content_hash"]) == 64
        assert r["model_id"] == emb.loaded.model_id
        assert r["model_revision"] == emb.loaded.revision
        assert r["proj_fingerprint"] == emb.loaded.fingerprint
        assert r["dtype"] == "float32"
        e = embedding_to_numpy(r["embedding"], info.kind, info.dim)
        if kind == "colqwen":
            assert r["n_vectors"] == e.shape[0] == len(r["embedding"]) > 0
            assert e.shape[1] == 128
        else:
            assert r["n_vectors"] == 1 and e.shape == (info.dim,)
        np.testing.assert_allclose(np.linalg.norm(e, axis=-1), 1.0, atol=1e-4)
    # Arrow scalars (a slice of the column's child arrays) convert to the same arrays as lists.
    col = t.column("embedding").combine_chunks()
    for i, r in enumerate(rows):
        np.testing.assert_array_equal(
            embedding_to_numpy(col[i], info.kind, info.dim), embedding_to_numpy(r["embedding"], info.kind, info.dim)
        )


def test_rerun_modify_delete_prune(loaded, image_dir, tmp_path):
    emb = loaded["colqwen"]
    photos = copy_tree(image_dir, tmp_path / "photos")
    store = tmp_path / "store"
    n = len(CLEAN_IMAGES)

    first = emb.embed_directory(photos, store=store, workers=0)
    assert first.embedded == n
    before = {r["path"]: r for r in _rows(store)}
    version = Store(store).only_table().version()

    # 1. Nothing changed (a touch alone changes no content): nothing is embedded or written.
    os.utime(photos / "b_tall.png", None)
    again = emb.embed_directory(photos, store=store, workers=0)
    assert (again.embedded, again.skipped_unchanged, again.failed) == (0, n, [])
    assert Store(store).only_table().version() == version
    rows = _rows(store)
    assert len(rows) == n
    assert {r["path"]: r["embedded_at"] for r in rows} == {p: r["embedded_at"] for p, r in before.items()}

    # 2. One file's content changes: only it is re-embedded, and it keeps exactly one row.
    changed = "sub/f_photo.jpg"
    make_image(photos / changed, 300, 400, seed=1234)
    third = emb.embed_directory(photos, store=store, workers=0)
    assert (third.embedded, third.skipped_unchanged) == (1, n - 1)
    rows = _rows(store)
    _assert_unique(rows)
    assert len(rows) == n
    after = {r["path"]: r for r in rows}
    assert after[changed]["content_hash"] != before[changed]["content_hash"]
    assert (after[changed]["width"], after[changed]["height"]) == (300, 400)
    assert after[changed]["embedded_at"] >= before[changed]["embedded_at"]
    assert after[changed]["n_vectors"] == len(after[changed]["embedding"])
    assert after[changed]["embedding"] != before[changed]["embedding"]
    for p in after:
        if p != changed:
            assert after[p]["embedded_at"] == before[p]["embedded_at"], p
            assert after[p]["content_hash"] == before[p]["content_hash"], p

    # 3. A deleted file keeps its row until --prune; then exactly that row goes.
    gone = "sub/deeper/g_rgba.png"
    (photos / gone).unlink()
    kept = emb.embed_directory(photos, store=store, workers=0)
    assert (kept.embedded, kept.pruned) == (0, 0)
    assert gone in {r["path"] for r in _rows(store)}
    pruned = emb.embed_directory(photos, store=store, workers=0, prune=True)
    assert (pruned.embedded, pruned.pruned, pruned.skipped_unchanged) == (0, 1, n - 1)
    rows = _rows(store)
    _assert_unique(rows)
    assert sorted(r["path"] for r in rows) == sorted(p for p in CLEAN_IMAGES if p != gone)

    # 4. A file that comes back is embedded again, once.
    make_image(photos / gone, 160, 240, "RGBA", seed=9)
    back = emb.embed_directory(photos, store=store, workers=0)
    assert back.embedded == 1
    rows = _rows(store)
    _assert_unique(rows)
    assert len(rows) == n


def test_two_roots_share_a_table_without_clashing(loaded, image_dir, tmp_path):
    emb = loaded["colqwen"]
    other = copy_tree(image_dir, tmp_path / "other")
    store = tmp_path / "store"
    emb.embed_directory(image_dir, store=store, workers=0)
    emb.embed_directory(other, store=store, workers=0)
    rows = _rows(store)
    _assert_unique(rows)
    assert len(rows) == 2 * len(CLEAN_IMAGES)
    assert {r["root"] for r in rows} == {str(image_dir.resolve()), str(other.resolve())}


def test_bad_files_reported_rest_stored(loaded, messy_dir, tmp_path):
    from conftest import BAD_FILES

    emb = loaded["colqwen"]
    events = []
    report = emb.embed_directory(
        messy_dir, store=tmp_path / "store", workers=0, on_event=lambda kind, data: events.append((kind, data))
    )
    failed = dict(report.failed)
    assert set(failed) == set(BAD_FILES)
    for path, reason in BAD_FILES.items():
        assert failed[path].startswith(reason), (path, failed[path])
    assert {d["path"] for k, d in events if k == "failed"} == set(BAD_FILES)
    assert report.embedded == len(CLEAN_IMAGES)
    rows = _rows(tmp_path / "store")
    assert sorted(r["path"] for r in rows) == sorted(CLEAN_IMAGES)
    strip = next(r for r in rows if r["path"] == "strip.png")
    assert (strip["width"], strip["height"]) == (1, 600) and strip["n_vectors"] > 0
    # Bad files are retried on the next run (they have no row), good ones are not.
    again = emb.embed_directory(messy_dir, store=tmp_path / "store", workers=0)
    assert (again.embedded, again.skipped_unchanged, len(again.failed)) == (0, len(CLEAN_IMAGES), len(BAD_FILES))


# ---------------------------------------------------------------- kill -9 and resume
N_KILL = 40


@pytest.fixture(scope="module")
def kill_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("kill") / "scans"
    for i in range(N_KILL):
        ext = ("jpg", "png", "webp")[i % 3]
        make_image(root / f"part{i % 2}" / f"img{i:02d}.{ext}", 300 + 7 * i, 420 - 3 * i, seed=1000 + i)
    return root


@pytest.mark.slow  # a CLI run killed with SIGKILL, then resumed
def test_kill9_then_resume(loaded, tiny_colqwen, kill_dir, tmp_path):
    store = tmp_path / "store"
    env = cli_env(tmp_path)
    args = [kill_dir, *on_cpu(tiny_colqwen, store), "--batch-size", "2", "--workers", "0", "--no-progress"]
    proc = start_cli(*args, legacy=True, env=env)  # the original `python main.py DIR ...` entry
    watcher, seen = kill_when_rows(proc, store, N_KILL // 4, N_KILL)  # several batches committed, not all
    # While the subprocess imports torch, make the reference: a clean, uninterrupted run.
    clean = loaded["colqwen"].embed_directory(kill_dir, store=tmp_path / "clean", workers=0, batch_size=4)
    assert clean.embedded == N_KILL
    watcher.join()
    result = finish(proc)
    assert result.returncode == -signal.SIGKILL, (
        f"the run was not killed mid-way (rows seen: {seen}/{N_KILL})\n{result}"
    )

    before = {r["path"]: r for r in _rows(store)}  # what survived: whole batches only
    assert 0 < len(before) < N_KILL, (seen, len(before))
    _assert_unique(list(before.values()))

    second = finish(start_cli("embed", *args, "--json", env=env))  # resumed with the new CLI
    assert second.returncode == 0, str(second)
    report = second.json()
    assert report["skipped_unchanged"] == len(before)
    assert report["embedded"] == N_KILL - len(before)
    assert report["failed"] == []

    rows = _rows(store)
    _assert_unique(rows)
    assert sorted(r["path"] for r in rows) == sorted(p.relative_to(kill_dir).as_posix() for p in kill_dir.rglob("*.*"))
    after = {r["path"]: r for r in rows}
    for p, r in before.items():  # rows written before the kill were not re-embedded
        assert after[p]["embedded_at"] == r["embedded_at"], p

    got, ref = _embeddings(store), _embeddings(tmp_path / "clean")
    assert got.keys() == ref.keys()
    for p in ref:
        np.testing.assert_allclose(got[p], ref[p], atol=1e-4, rtol=0, err_msg=p)


def test_new_tables_use_the_search_friendly_lance_format(loaded, image_dir, tmp_path):
    from nomic_memory.store.table import LANCE_FORMAT

    report = loaded["biqwen"].embed_directory(image_dir, store=tmp_path / "store", workers=0)
    ds = Store(tmp_path / "store").open_table(report.table).table.to_lance()
    assert ds.data_storage_version == LANCE_FORMAT == "2.0"
