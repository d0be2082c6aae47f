"""check and --repair never lose what they were asked to mend: damaged data files, missing pages,
repairs killed with SIGKILL.  Real files, real LanceDB stores (damaged on disk), real processes."""

from __future__ import annotations

import hashlib
import shutil
from pathlib import Path

import numpy as np
import pytest

from conftest import cli_env, finish, kill_when_rows, make_image, run_cli, start_cli
from nomic_memory.api import repair
from nomic_memory.store.check import verify_table
from nomic_memory.store.export import export_store
from nomic_memory.store.table import Store

pytestmark = pytest.mark.slow  # embeds with the model, starts CLI processes, kills them


def _two_roots(tmp_path: Path, emb) -> tuple[Path, Path, Path]:
    a, b, store = tmp_path / "a", tmp_path / "b", tmp_path / "store"
    for i in range(4):
        make_image(a / f"a{i}.png", 40 + 4 * i, 32, seed=i)
        make_image(b / f"b{i}.png", 32, 40 + 4 * i, seed=10 + i)
    emb.embed_directory(a, store=store, workers=0, batch_size=8)  # one batch: one data file per root
    emb.embed_directory(b, store=store, workers=0, batch_size=8)
    return a, b, store


def _data_file(store: Path, root: Path) -> Path:
    """The data file holding every row of ``root``."""
    t = Store(store).only_table()
    for frag in t.table.to_lance().get_fragments():
        if set(frag.to_table(columns=["root"]).column("root").to_pylist()) == {str(root)}:
            return store / f"{t.name}.lance" / "data" / frag.data_files()[0].path
    raise AssertionError("no data file of its own")


def _damage_hashes(f: Path, root: Path) -> None:
    """Overwrite 100 bytes of the ``content_hash`` column (found by a stored hash's text)."""
    data = bytearray(f.read_bytes())
    h = hashlib.sha256((root / "a0.png").read_bytes()).hexdigest().encode()
    pos = data.find(h)
    assert pos >= 0
    data[pos : pos + 100] = b"\xff" * 100
    f.write_bytes(bytes(data))


def _damage_tail(f: Path) -> None:
    """Overwrite the last 100 bytes (the file's metadata): not even the rows' names can be read."""
    data = bytearray(f.read_bytes())
    data[-100:] = b"\x5a" * 100
    f.write_bytes(bytes(data))


def _keys(store: Path) -> list[tuple]:
    d = Store(store).only_table().to_arrow(["root", "path", "page"]).to_pydict()
    return sorted(zip(d["root"], d["path"], d["page"]))


@pytest.mark.parametrize("damage", ["hashes", "names"])
def test_repair_keeps_the_rows_of_a_folder_it_cannot_reembed(loaded, tmp_path, damage):
    a, b, store = _two_roots(tmp_path, loaded["colqwen"])
    f = _data_file(store, a)
    _damage_hashes(f, a) if damage == "hashes" else _damage_tail(f)
    shutil.rmtree(a)  # the folder is gone: its rows cannot be re-embedded
    env = cli_env(tmp_path)
    r = run_cli("check", "--store", store, "--repair", "--backend", "cpu", "--json", env=env)
    assert r.returncode == 1, str(r)  # something could not be restored
    assert r.json()["repair"]["kept"], str(r)
    assert Store(store).only_table().count() == 8  # nothing deleted
    r = run_cli("check", "--store", store, env=env)
    assert r.returncode == 1 and "No problems found" not in r.stdout, str(r)


@pytest.mark.parametrize("damage", ["hashes", "names"])
def test_damaged_data_file_is_reembedded_then_replaced(loaded, tmp_path, damage):
    emb = loaded["colqwen"]
    a, b, store = _two_roots(tmp_path, emb)
    keys = _keys(store)
    f = _data_file(store, a)
    _damage_hashes(f, a) if damage == "hashes" else _damage_tail(f)
    env = cli_env(tmp_path)
    r = run_cli("check", "--store", store, "--json", env=env)
    assert r.returncode == 1 and r.json()["bad"], str(r)
    if damage == "hashes":  # a column other than the vectors: named in the reason
        assert all("content_hash" in b["reason"] for b in r.json()["bad"]), str(r)
    r = run_cli("check", "--store", store, "--repair", "--backend", "cpu", "--json", env=env)
    assert r.returncode == 0, str(r)
    assert r.json()["after_repair"]["ok"] and r.json()["repair"]["reembedded"] == 4
    assert _keys(store) == keys
    rep = emb.embed_directory(a, store=store, workers=0)  # a run works again, with nothing to do
    assert rep.embedded == 0 and rep.skipped_unchanged == 4
    assert export_store(store, "npz", tmp_path / "e.npz", root=str(a)) == 4


@pytest.fixture(scope="module")
def pdf_store(tmp_path_factory, loaded):
    """A 600-page PDF of small pages, embedded once; tests copy the store."""
    from PIL import Image

    d = tmp_path_factory.mktemp("pdf600")
    docs = d / "docs"
    docs.mkdir()
    pages = [Image.new("RGB", (56, 72), (i % 256, (7 * i) % 256, (13 * i) % 256)) for i in range(600)]
    pages[0].save(docs / "big.pdf", save_all=True, append_images=pages[1:], resolution=72)
    loaded["colqwen"].embed_directory(docs, store=d / "store", workers=0, batch_size=16)
    assert Store(d / "store").only_table().count() == 600
    return docs, d / "store"


def _copy_store(pdf_store, tmp_path: Path) -> tuple[Path, Path]:
    docs, store = pdf_store
    return docs, Path(shutil.copytree(store, tmp_path / "store"))


def _spoil(store: Path, pages: list[int]) -> None:
    """Make the stored vectors of ``pages`` disagree with their checksum (as a flipped bit does)."""
    t = Store(store).only_table()
    t.table.update(where=f"page IN ({', '.join(map(str, pages))})", values={"embedding_checksum": 12345})


def _stamps(store: Path) -> dict:
    d = Store(store).only_table().to_arrow(["page", "embedded_at"]).to_pydict()
    return dict(zip(d["page"], d["embedded_at"]))


def test_one_bad_page_of_600_reembeds_one_page(pdf_store, tiny_colqwen, tmp_path):
    docs, store = _copy_store(pdf_store, tmp_path)
    before = _stamps(store)
    _spoil(store, [7])
    st = Store(store)
    rep = verify_table(st.only_table())
    assert [(b.path, b.page) for b in rep.bad] == [("big.pdf", 7)] and not rep.missing
    out = repair(st, st.only_table(), rep, backend="cpu")
    assert out["reembedded"] == 1 and out["deleted"] == 1 and out["restored"], out
    after = _stamps(store)
    assert sorted(after) == list(range(1, 601))
    assert {p for p in after if after[p] != before[p]} == {7}  # only the damaged page was redone
    assert verify_table(Store(store).only_table()).ok


def test_check_finds_missing_pages_and_repair_embeds_only_them(pdf_store, tmp_path):
    docs, store = _copy_store(pdf_store, tmp_path)
    st = Store(store)
    st.only_table().delete_keys(str(docs), [("big.pdf", p) for p in (3, 300, 599)])
    env = cli_env(tmp_path)
    r = run_cli("check", "--store", store, "--json", env=env)
    assert r.returncode == 1, str(r)
    assert [m["page"] for m in r.json()["missing"]] == [3, 300, 599]
    r = run_cli("check", "--store", store, "--repair", "--backend", "cpu", "--json", env=env)
    assert r.returncode == 0 and r.json()["repair"]["reembedded"] == 3, str(r)
    assert sorted(_stamps(store)) == list(range(1, 601))


def test_repair_killed_with_sigkill_is_reported_and_completed(pdf_store, tmp_path):
    docs, store = _copy_store(pdf_store, tmp_path)
    _spoil(store, list(range(1, 601, 5)))  # 120 bad pages: several batches of repair
    env = cli_env(tmp_path)
    proc = start_cli("check", "--store", store, "--repair", "--backend", "cpu", env=env)
    watcher, seen = kill_when_rows(proc, store, 601, 10**9)  # a batch appended, its old rows not yet gone
    finish(proc)
    watcher.join()
    assert seen, "the repair finished before it could be killed"
    r = run_cli("check", "--store", store, "--json", env=env)
    assert r.returncode == 1, str(r)  # what is left to mend is reported
    r = run_cli("check", "--store", store, "--repair", "--backend", "cpu", "--json", env=env)
    assert r.returncode == 0 and r.json()["after_repair"]["ok"], str(r)
    keys = _keys(store)
    assert len(keys) == len(set(keys)) == 600
    r = run_cli("check", "--store", store, env=env)
    assert r.returncode == 0 and "No problems found" in r.stdout, str(r)


def test_embeddings_after_repair_match_the_originals(pdf_store, tmp_path):
    docs, store = _copy_store(pdf_store, tmp_path)
    t = Store(store).only_table()
    want = {
        r["page"]: np.asarray(r["embedding"], np.float32)
        for r in t.to_arrow(["page", "embedding"]).to_pylist()
        if r["page"] in (10, 20)
    }
    _spoil(store, [10, 20])
    st = Store(store)
    repair(st, st.only_table(), verify_table(st.only_table()), backend="cpu")
    got = {
        r["page"]: np.asarray(r["embedding"], np.float32)
        for r in Store(store).only_table().to_arrow(["page", "embedding"]).to_pylist()
        if r["page"] in (10, 20)
    }
    for p in want:
        np.testing.assert_allclose(got[p], want[p], atol=1e-3)
