"""The run driver's promises, through the public API on real stores: the model is loaded only
when there is work, an unchanged bad file is not retried, and pruning works on a folder that
is now empty."""

from __future__ import annotations

import shutil

from conftest import add_bad_files, copy_tree, make_image
from nomic_memory import Embedder, Store


def test_nothing_to_do_loads_no_model(tiny_colqwen, image_dir, tmp_path):
    store = tmp_path / "store"
    first = Embedder(str(tiny_colqwen), backend="cpu", lazy=True)
    rep = first.embed_directory(image_dir, store, workers=0)
    assert rep.model_loaded and rep.embedded == 10 and first.is_loaded

    again = Embedder(str(tiny_colqwen), backend="cpu", lazy=True)
    events = []
    rep2 = again.embed_directory(image_dir, store, workers=0, on_event=lambda k, d: events.append(k))
    assert rep2.skipped_unchanged == 10 and rep2.embedded == 0
    assert not rep2.model_loaded and not again.is_loaded  # learned from the store, no weights loaded
    assert "model_loading" not in events

    # One changed file: now the model is needed, and only that file is embedded.
    folder = copy_tree(image_dir, tmp_path / "copy")
    rep3 = again.embed_directory(folder, store, workers=0)
    assert rep3.embedded == 10  # another root: its own rows
    make_image(folder / "a_wide.jpg", 320, 120, seed=77)
    rep4 = Embedder(str(tiny_colqwen), backend="cpu", lazy=True).embed_directory(folder, store, workers=0)
    assert rep4.model_loaded and rep4.embedded == 1 and rep4.skipped_unchanged == 9


def test_unchanged_bad_file_is_not_retried(tiny_colqwen, image_dir, tmp_path):
    folder = copy_tree(image_dir, tmp_path / "photos")
    add_bad_files(folder)
    store = tmp_path / "store"
    rep = Embedder(str(tiny_colqwen), backend="cpu", lazy=True).embed_directory(folder, store, workers=0)
    bad = {p for p, _ in rep.failed}
    assert {"bad/truncated.jpg", "bad/text.png"} <= bad and rep.embedded == 10

    emb = Embedder(str(tiny_colqwen), backend="cpu", lazy=True)
    rep2 = emb.embed_directory(folder, store, workers=0)
    assert {p for p, _ in rep2.failed} == bad  # still reported, with the reason
    assert all("failed before" in r or "empty" in r for p, r in rep2.failed)
    assert not rep2.model_loaded and rep2.embedded == 0  # nothing retried: no model needed
    assert "_failures" not in Store(store).table_names()  # bookkeeping stays hidden

    # The broken file is fixed: it is retried (its hash changed) and embedded; its entry goes.
    make_image(folder / "bad/truncated.jpg", 300, 200, seed=5)
    rep3 = Embedder(str(tiny_colqwen), backend="cpu", lazy=True).embed_directory(folder, store, workers=0)
    assert rep3.embedded == 1 and "bad/truncated.jpg" not in {p for p, _ in rep3.failed}
    rep4 = Embedder(str(tiny_colqwen), backend="cpu", lazy=True).embed_directory(folder, store, workers=0)
    assert rep4.embedded == 0 and "bad/truncated.jpg" not in {p for p, _ in rep4.failed}


def test_prune_on_a_folder_now_empty(tiny_colqwen, image_dir, tmp_path):
    folder = copy_tree(image_dir, tmp_path / "photos")
    store = tmp_path / "store"
    emb = Embedder(str(tiny_colqwen), backend="cpu", lazy=True)
    assert emb.embed_directory(folder, store, workers=0).embedded == 10
    for p in list(folder.iterdir()):
        shutil.rmtree(p) if p.is_dir() else p.unlink()
    rep = Embedder(str(tiny_colqwen), backend="cpu", lazy=True).embed_directory(folder, store, prune=True)
    assert rep.pruned == 10 and not rep.model_loaded
    assert Store(store).only_table().count() == 0


def test_too_many_decode_workers_are_capped(tiny_colqwen, image_dir, tmp_path, caplog):
    import logging

    from nomic_memory.threads import available_cpus

    emb = Embedder(str(tiny_colqwen), backend="cpu")
    with caplog.at_level(logging.WARNING, logger="nomic_memory"):
        rep = emb.embed_directory(image_dir, tmp_path / "store", workers=64)
    assert rep.embedded == 10 and rep.decode_workers <= available_cpus()
    assert any("more than the" in r.getMessage() and "CPU cores" in r.getMessage() for r in caplog.records)


def test_file_replaced_between_listing_and_decoding(tiny_colqwen, image_dir, tmp_path):
    """The stored hash is the hash of the bytes decoded: a file rewritten after the run hashed it
    is reported, not stored under its old hash, and the next run embeds its new content."""
    import hashlib

    from nomic_memory.store.table import embedding_to_numpy

    folder = copy_tree(image_dir, tmp_path / "photos")
    store = tmp_path / "store"
    target = folder / "sub/f_photo.jpg"

    def swap(kind, data):
        if kind == "plan":  # listed and hashed; nothing decoded yet
            make_image(target, 400, 300, seed=1234)

    emb = Embedder(str(tiny_colqwen), backend="cpu")
    rep = emb.embed_directory(folder, store, workers=0, on_event=swap)
    reasons = dict(rep.failed)
    assert "changed while the run was in progress" in reasons["sub/f_photo.jpg"] and rep.embedded == 9
    assert "sub/f_photo.jpg" not in {r["path"] for r in Store(store).only_table().to_arrow(["path"]).to_pylist()}

    rep2 = emb.embed_directory(folder, store, workers=0)
    assert rep2.embedded == 1 and not rep2.failed  # not remembered as a bad file: it was fine
    row = [
        r
        for r in Store(store).only_table().to_arrow(["path", "content_hash", "embedding"]).to_pylist()
        if r["path"] == "sub/f_photo.jpg"
    ][0]
    assert row["content_hash"] == hashlib.sha256(target.read_bytes()).hexdigest()
    want = emb.embed_images(target)
    np_ = embedding_to_numpy(row["embedding"], "colqwen", 128)
    assert abs(np_ - want).max() < 1e-4
