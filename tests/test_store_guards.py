"""Store-side guarantees: batch commits that never read what is stored, prunes that never delete
what could not be seen, exports that never replace a device, stores a user cannot write, and the
library's own errors for bad arguments.  Real stores, real files, real unprivileged processes."""

from __future__ import annotations

import json
import os
import shutil
import stat
import subprocess
import tempfile
import threading
from pathlib import Path

import numpy as np
import pytest

from conftest import REPO, cli_cmd, cli_env, make_image
from nomic_memory.errors import FolderNotFoundError, NomicMemoryError, UsageError
from nomic_memory.store.export import ExportError, export_store
from nomic_memory.store.table import Record, Store, TableInfo

INFO = TableInfo("m", "r", "colqwen", 8, "fp", "float16")


def _pages(root: str, pages, rng) -> list[Record]:
    return [
        Record(root, "big.pdf", "h" * 64, 1, 0.0, 10, 10, rng.standard_normal((3, 8)), "float32", page=p) for p in pages
    ]


# ---------------------------------------------------------------- commit cost
def test_batch_commit_reads_none_of_the_rows_already_stored(tmp_path):
    """After the run read the table, a batch of new pages commits without reading any stored row:
    with the data file of the first pages gone, the next batches still commit."""
    rng = np.random.default_rng(0)
    t = Store(tmp_path / "s").create_or_open("t", INFO)
    t.upsert(_pages("/r", range(1, 9), rng), known_new={("big.pdf", p) for p in range(1, 9)})
    t = Store(tmp_path / "s").open_table("t")
    t.stored_keys("/r")  # the run's one read of what is stored
    for f in (tmp_path / "s" / "t.lance" / "data").glob("*.lance"):
        f.unlink()  # any read of a stored row would fail
    for b in range(3):
        pages = range(9 + 8 * b, 17 + 8 * b)
        assert t.upsert(_pages("/r", pages, rng), known_new={("big.pdf", p) for p in pages}) == []
    assert t.count() == 32  # from the manifest alone


def test_batch_lookup_still_sees_what_other_writers_committed(tmp_path):
    rng = np.random.default_rng(1)
    Store(tmp_path / "s").create_or_open("t", INFO)
    mine, other = Store(tmp_path / "s").open_table("t"), Store(tmp_path / "s").open_table("t")
    mine.stored_keys("/r")
    other.upsert(_pages("/r", [1, 2, 3], rng), known_new={("big.pdf", p) for p in (1, 2, 3)})
    mine.upsert(_pages("/r", [2, 3, 4, 5], rng), known_new={("big.pdf", p) for p in (2, 3, 4, 5)})
    other.upsert(_pages("/r", [6], rng), known_new={("big.pdf", 6)})
    mine.upsert(_pages("/r", [6, 7], rng), known_new={("big.pdf", 6), ("big.pdf", 7)})
    t = Store(tmp_path / "s").open_table("t")
    assert t.count() == 7 and t.duplicate_count() == 0


# ---------------------------------------------------------------- small API errors
def test_embed_directory_on_a_missing_folder_is_the_librarys_error(tiny_colqwen, tmp_path):
    from nomic_memory import Embedder

    emb = Embedder(str(tiny_colqwen), backend="cpu", lazy=True)
    with pytest.raises(FolderNotFoundError, match="no such directory") as e:
        emb.embed_directory(tmp_path / "nope", store=tmp_path / "s")
    assert isinstance(e.value, NomicMemoryError) and isinstance(e.value, FileNotFoundError)


@pytest.mark.parametrize("k", [1.5, "3", True, 0, -2, None])
def test_search_k_must_be_a_positive_whole_number(tmp_path, k):
    from nomic_memory.search.index import Index

    t = Store(tmp_path / "s").create_or_open("t", INFO)
    t.upsert([Record("/r", "a.png", "h", 1, 0.0, 1, 1, np.ones((2, 8)), "float32")])
    idx = Index.open(tmp_path / "s", "t", backend="cpu")
    with pytest.raises(UsageError, match="k must be"):
        idx.search_embeddings([np.ones((2, 8), np.float32)], k=k)
    with pytest.raises(UsageError, match="k must be"):
        idx.search("anything", k=k)  # refused before any model is needed
    assert len(idx.search_embeddings([np.ones((2, 8), np.float32)], k=np.int64(1))[0]) == 1


# ---------------------------------------------------------------- export
def _two_root_store(path: Path) -> Path:
    t = Store(path).create_or_open("t", TableInfo("m", "r", "biqwen", 4, "fp", "float32"))
    t.upsert(
        [
            Record("/one", "a.png", "h", 1, 0.0, 1, 1, np.ones(4), "float32"),
            Record("/two", "b.png", "h", 1, 0.0, 1, 1, np.ones(4), "float32"),
        ]
    )
    return path


def _device(path: Path, major: int, minor: int) -> Path:
    """A character device node of the test's own (never the machine's /dev: an export that
    replaced its --out would replace that one)."""
    try:
        os.mknod(path, 0o666 | stat.S_IFCHR, os.makedev(major, minor))
    except PermissionError:
        pytest.skip("cannot make device nodes here (needs CAP_MKNOD)")
    return path


@pytest.mark.parametrize("fmt", ["npz", "parquet"])
def test_export_writes_through_special_files_and_never_replaces_them(tmp_path, fmt):
    store = _two_root_store(tmp_path / "s")
    null, full = _device(tmp_path / "null", 1, 3), _device(tmp_path / "full", 1, 7)  # as /dev/null, /dev/full
    assert export_store(store, fmt, null, root="/one") == 1
    with pytest.raises(ExportError, match="No space left on device"):
        export_store(store, fmt, full, root="/one")
    for dev in (null, full):
        assert stat.S_ISCHR(os.stat(dev).st_mode), f"{dev} was replaced"
    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    got: list[bytes] = []
    reader = threading.Thread(target=lambda: got.append(fifo.read_bytes()))
    reader.start()
    assert export_store(store, fmt, fifo, root="/one") == 1
    reader.join(30)
    assert stat.S_ISFIFO(os.stat(fifo).st_mode) and len(got[0]) > 100


def test_export_files_get_the_users_umask_and_name_the_roots(tmp_path):
    store = _two_root_store(tmp_path / "s")
    old = os.umask(0o022)
    try:
        export_store(store, "npz", tmp_path / "e.npz", root="/one")
    finally:
        os.umask(old)
    assert stat.S_IMODE(os.stat(tmp_path / "e.npz").st_mode) == 0o644
    with pytest.raises(UsageError, match=r"\(/one, /two\); pass --root"):
        export_store(store, "npz", tmp_path / "f.npz")


# ---------------------------------------------------------------- as a user without rights
def _nobody() -> list[str]:
    """A command prefix running as the unprivileged user ``nobody`` (skip where that cannot be)."""
    pre = ["setpriv", "--reuid=nobody", "--regid=nogroup", "--clear-groups"]
    if shutil.which("setpriv") is None or os.geteuid() != 0:
        pytest.skip("needs root and setpriv to run a command as an unprivileged user")
    if subprocess.run([*pre, "true"], capture_output=True).returncode != 0:
        pytest.skip("cannot drop privileges here")
    return pre


def _shared_dir() -> Path:
    """A folder every user can traverse (pytest's own temporary folders are private to root)."""
    d = Path(tempfile.mkdtemp(prefix="nomic-memory-test-"))
    d.chmod(0o755)
    return d


def _run_as(pre: list[str], *args, env=None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [*pre, *cli_cmd(*map(str, args))], cwd=REPO, env=env or cli_env(), capture_output=True, text=True, timeout=300
    )


@pytest.mark.slow
def test_store_drop_and_compact_on_a_store_the_user_cannot_write(tmp_path):
    pre = _nobody()
    shared = _shared_dir()
    try:
        store = _two_root_store(shared / "store")
        t = Store(store).open_table("t")
        t.upsert([Record("/one", "c.png", "h", 1, 0.0, 1, 1, np.ones(4), "float32")])  # two fragments
        for p in [store, *store.rglob("*")]:
            p.chmod(0o755 if p.is_dir() else 0o644)
        for args in (["store", "drop", "t", "--yes"], ["store", "compact"]):
            r = _run_as(pre, *args, "--store", store)
            lines = r.stderr.strip().splitlines()
            assert r.returncode == 1, (args, r.stdout, r.stderr)
            assert len(lines) == 1 and lines[0].startswith("Error: ") and "Traceback" not in r.stderr, r.stderr
            assert "fragments ->" not in r.stdout
        assert Store(store).open_table("t").count() == 3
    finally:
        shutil.rmtree(shared, ignore_errors=True)


@pytest.mark.slow
def test_prune_never_deletes_rows_under_a_folder_that_could_not_be_listed(tiny_colqwen, loaded):
    pre = _nobody()
    shared = _shared_dir()
    try:
        photos, store = shared / "photos", shared / "store"
        for rel in ("top.png", "private/a.png", "private/b.png", "gone.png"):
            make_image(photos / rel, 40, 30, seed=len(rel))
        model = Path(shutil.copytree(tiny_colqwen, shared / "model"))
        from nomic_memory import Embedder

        Embedder(str(model), backend="cpu").embed_directory(photos, store=store, workers=0)
        (photos / "gone.png").unlink()
        for p in [shared, *shared.rglob("*")]:
            os.chown(p, 65534, 65534)  # nobody owns everything but the folder it cannot list
        os.chown(photos / "private", 0, 0)
        (photos / "private").chmod(0o700)
        r = _run_as(
            pre, "embed", photos, "--store", store, "--model-name", model, "--backend", "cpu", "--prune", "--json"
        )
        assert r.returncode == 3, r.stderr  # the folder is reported
        assert "cannot list directory" in r.stderr
        rep = json.loads(r.stdout)
        assert rep["pruned"] == 1  # gone.png only
        d = Store(store).only_table().to_arrow(["path"]).to_pydict()
        assert sorted(d["path"]) == ["private/a.png", "private/b.png", "top.png"]
    finally:
        shutil.rmtree(shared, ignore_errors=True)
