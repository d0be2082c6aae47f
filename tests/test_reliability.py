"""Reliability: no input, race or fault crashes a run, hangs it, or leaves a wrong row.

Real files, real LanceDB stores, real processes racing; nothing mocked.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from conftest import REPO, cli_env, make_image
from nomic_memory.errors import ModelLoadError, StoreError
from nomic_memory.ingest.images import ImageError, discover, hash_bytes, hash_file, load_image, read_file_bounded
from nomic_memory.store.table import Record, Store, TableInfo, key_to_path, path_to_key


def _py(code: str, timeout: float = 120, env: dict | None = None) -> subprocess.CompletedProcess:
    """Run ``code`` in a fresh interpreter (its own memory accounting, limits and crashes)."""
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        cwd=REPO,
        env=env or cli_env(),
        capture_output=True,
        text=True,
        timeout=timeout,
    )


# ---------------------------------------------------------------- 9. dtype-independent fingerprint
def _strip_proj(src: Path, dst: Path) -> Path:
    """A copy of a tiny checkpoint without custom_text_proj: it is initialised from the seed."""
    from safetensors.torch import load_file, save_file

    shutil.copytree(src, dst)
    for f in dst.glob("*.safetensors"):
        sd = load_file(str(f))
        save_file({k: v for k, v in sd.items() if "custom_text_proj" not in k}, str(f), metadata={"format": "pt"})
    return dst


@pytest.mark.parametrize("random_proj", [False, True])
def test_fingerprint_independent_of_compute_dtype(tiny_colqwen, tmp_path, random_proj):
    from nomic_memory.model.backends import select_backend
    from nomic_memory.model.loading import fingerprint_variants, load_model

    src = _strip_proj(tiny_colqwen, tmp_path / "m") if random_proj else tiny_colqwen
    fp32 = load_model(str(src), backend=select_backend("cpu", dtype="float32"), seed=3)
    bf16 = load_model(str(src), backend=select_backend("cpu", dtype="bfloat16"), seed=3)
    if random_proj:
        assert any("seed" in n for n in fp32.notes)
    assert fp32.fingerprint == bf16.fingerprint != ""
    # Old tables recorded the exact float32 digest: still recognised.
    assert fp32.fingerprint in fingerprint_variants(bf16.model)
    assert fp32.fingerprints >= {fp32.fingerprint} and len(fp32.fingerprints) == 3
    other = load_model(str(src), backend=select_backend("cpu", dtype="float32"), seed=4)
    if random_proj:  # another seed is another projection
        assert other.fingerprint != fp32.fingerprint


def test_pickled_weights_refused_before_loading(tiny_colqwen, tmp_path):
    from nomic_memory.model.backends import select_backend
    from nomic_memory.model.loading import load_model

    d = shutil.copytree(tiny_colqwen, tmp_path / "pickled")
    for f in d.glob("*.safetensors"):
        f.unlink()
    marker = tmp_path / "ran"
    # A pickle that would create ``marker`` if it were ever unpickled.
    import pickle

    class Evil:
        def __reduce__(self):
            return (os.mkdir, (str(marker),))

    (d / "pytorch_model.bin").write_bytes(pickle.dumps(Evil()))
    with pytest.raises(ModelLoadError, match=r"only safetensors weights are loaded \(found pytorch_model.bin"):
        load_model(str(d), backend=select_backend("cpu"))
    assert not marker.exists()


# ---------------------------------------------------------------- 1. names that are not UTF-8
def test_path_keys_round_trip_and_stay_readable():
    import random

    rng = random.Random(0)
    alphabet = ["\\", "x", "8", "f", "a", "/", "\udcff", "\udc80", "é", "z", "1", "'"]
    for _ in range(20000):
        s = "".join(rng.choice(alphabet) for _ in range(rng.randint(0, 9)))
        k = path_to_key(s)
        k.encode("utf-8")  # storable
        assert key_to_path(k) == s, (s, k)
    assert path_to_key("plain/ä ö.png") == "plain/ä ö.png"  # valid UTF-8: its own key
    assert path_to_key(os.fsdecode(b"bad\xff.png")) == "bad\\xff.png"
    assert os.fsencode(key_to_path("bad\\xff.png")) == b"bad\xff.png"


def test_non_utf8_file_names_embed_skip_prune(loaded, tmp_path):
    emb = loaded["colqwen"]
    root = tmp_path / "photos"
    root.mkdir()
    broot = os.fsencode(root)
    make_image(root / "ok.png", 64, 48, seed=1)
    make_image(tmp_path / "x.png", 64, 48, seed=2)
    os.rename(tmp_path / "x.png", broot + b"/bad\xff.png")
    os.mkdir(broot + b"/dir\xfe")
    make_image(tmp_path / "y.png", 50, 60, seed=3)
    os.rename(tmp_path / "y.png", broot + b"/dir\xfe/in.png")
    store = tmp_path / "store"

    first = emb.embed_directory(root, store=store, workers=0)
    assert (first.embedded, first.failed) == (3, [])
    t = Store(store).only_table()
    keys = sorted(t.to_arrow(["path"]).column("path").to_pylist())
    assert keys == ["bad\\xff.png", "dir\\xfe/in.png", "ok.png"]
    assert {os.fsencode(key_to_path(k)) for k in keys} == {b"bad\xff.png", b"dir\xfe/in.png", b"ok.png"}

    again = emb.embed_directory(root, store=store, workers=0)
    assert (again.embedded, again.skipped_unchanged) == (0, 3)

    os.unlink(broot + b"/bad\xff.png")
    pruned = emb.embed_directory(root, store=store, workers=0, prune=True)
    assert pruned.pruned == 1
    assert sorted(Store(store).only_table().to_arrow(["path"]).column("path").to_pylist()) == [
        "dir\\xfe/in.png",
        "ok.png",
    ]

    # Export shows the readable key.
    from nomic_memory.store.export import export_store

    export_store(store, "npz", tmp_path / "e.npz")
    assert sorted(np.load(tmp_path / "e.npz").files) == ["dir\\xfe/in.png", "ok.png"]


# ---------------------------------------------------------------- 2. every allocation bounded
@pytest.mark.parametrize("height", [600_000, 5_000_000])
def test_extreme_strip_decodes_in_bounded_memory(tmp_path, height):
    from PIL import Image

    path = tmp_path / "strip.png"
    Image.new("L", (1, height), 0).save(path, optimize=True)
    assert path.stat().st_size < 20_000
    # A fresh process with a 1.5 GiB address-space cap: the old padding needed an 8-67 GB canvas.
    r = _py(f"""
        import resource, json
        resource.setrlimit(resource.RLIMIT_AS, (1536 * 2**20, 1536 * 2**20))
        from nomic_memory.ingest.images import load_image, DEFAULT_MAX_PADDED_PIXELS
        img = load_image({str(path)!r})
        w, h = img.size
        assert w * h <= DEFAULT_MAX_PADDED_PIXELS, (w, h)
        assert max(w, h) / min(w, h) <= 180.01, (w, h)
        # VmHWM: this process's peak RSS (ru_maxrss would include the forking parent's).
        hwm = next(int(l.split()[1]) for l in open("/proc/self/status") if l.startswith("VmHWM"))
        print(json.dumps({{"size": [w, h], "rss_mb": hwm / 1024}}))
    """)
    assert r.returncode == 0, r.stderr[-2000:]
    out = json.loads(r.stdout.strip().splitlines()[-1])
    assert out["rss_mb"] < 400, out


def test_padding_keeps_small_strips_exact():
    from PIL import Image

    from nomic_memory.ingest.images import pad_extreme_aspect

    img = Image.new("L", (1, 600), 0)
    padded = pad_extreme_aspect(img)
    assert padded.size == (28, 600)  # no shrinking below the budget


# ---------------------------------------------------------------- 3. non-regular files
def test_discover_reports_non_regular_entries(tmp_path):
    import socket

    root = tmp_path / "r"
    root.mkdir()
    make_image(root / "ok.png", 40, 40)
    os.mkfifo(root / "pipe.png")
    s = socket.socket(socket.AF_UNIX)
    s.bind(str(root / "sock.png"))
    os.symlink(root / "missing.png", root / "broken.png")
    os.symlink("/proc/self/pagemap", root / "pagemap.png")
    os.symlink("/dev/zero", root / "zero.jpg")
    os.symlink(root / "ok.png", root / "link.png")  # a symlinked file: followed
    (tmp_path / "outside").mkdir()
    os.symlink(tmp_path / "outside", root / "linkdir")
    files, skipped = discover(root)
    s.close()
    assert [p.name for p in files] == ["link.png", "ok.png"]
    reasons = dict(skipped)
    assert set(reasons) == {"pipe.png", "sock.png", "broken.png", "pagemap.png", "zero.jpg", "linkdir"}
    assert "FIFO" in reasons["pipe.png"] and "socket" in reasons["sock.png"]
    assert reasons["broken.png"] == "broken symbolic link"
    assert "/proc" in reasons["pagemap.png"] and "device" in reasons["zero.jpg"]
    with pytest.raises(ImageError, match="character device"):
        read_file_bounded(root / "zero.jpg")
    assert "not followed" in reasons["linkdir"]


def test_fifo_and_proc_never_read(tmp_path):
    """A FIFO swapped in after the scan, and /proc files, fail at once (a fresh process: on a hang
    the test fails by timeout instead of hanging the suite)."""
    fifo = tmp_path / "late.png"
    os.mkfifo(fifo)
    link = tmp_path / "pm.png"
    os.symlink("/proc/self/pagemap", link)
    r = _py(
        f"""
        from nomic_memory.ingest.images import ImageError, load_image, read_file_bounded, hash_file
        for f in (load_image, read_file_bounded, hash_file):
            for p in ({str(fifo)!r}, {str(link)!r}):
                try:
                    f(p)
                except ImageError as e:
                    print(f.__name__, e.reason)
                else:
                    raise SystemExit("read " + p)
    """,
        timeout=60,
    )
    assert r.returncode == 0, r.stderr[-2000:]
    lines = r.stdout.strip().splitlines()
    assert len(lines) == 6
    assert all("FIFO" in ln or "/proc" in ln for ln in lines), lines


def test_run_with_non_regular_files_completes(loaded, tmp_path):
    import threading

    root = tmp_path / "r"
    make_image(root / "ok.png", 64, 64)
    os.mkfifo(root / "pipe.png")
    os.symlink("/proc/self/pagemap", root / "pagemap.png")
    result = {}
    th = threading.Thread(
        target=lambda: result.update(r=loaded["biqwen"].embed_directory(root, store=tmp_path / "s", workers=0)),
        daemon=True,
    )
    th.start()
    th.join(120)
    assert not th.is_alive(), "the run hung on a FIFO or /proc file"
    assert result["r"].embedded == 1


# ---------------------------------------------------------------- 5. hash of the bytes decoded
def test_hash_of_bytes_decoded(tmp_path):
    p = make_image(tmp_path / "a.jpg", 120, 80)
    data = read_file_bounded(p)
    assert hash_bytes(data) == hash_file(p)[0]
    img = load_image(p, data=data)
    assert img.size == (120, 80)
    from nomic_memory.ingest.images import load_image_hashed

    img2, digest, size = load_image_hashed(p)
    assert (digest, size) == (hash_bytes(data), len(data)) and img2.tobytes() == img.tobytes()
    # Decoding uses the bytes given, not the file (which may have changed since).
    p.write_bytes(b"garbage")
    assert load_image(p, data=data).size == (120, 80)
    with pytest.raises(ImageError, match="not an image"):
        load_image(p)


# ---------------------------------------------------------------- 4. concurrent writers
_RACER = """
import sys, numpy as np
from nomic_memory.store.table import Record, Store, TableInfo
store, seed = sys.argv[1], int(sys.argv[2])
rng = np.random.default_rng(seed)
t = Store(store).create_or_open("t", TableInfo("m", "r", "biqwen", 8, "fp", "float16"))
known = set()  # what this writer read at its start: nothing, so every row is 'new' to it
paths = [f"img{i:03d}.png" for i in range(120)]
for b in range(0, 120, 6):
    batch = paths[b:b + 6]
    t.upsert([Record("/photos", p, str(seed), 1, 0.0, 1, 1, rng.standard_normal(8), "float32") for p in batch],
             known_new=set(batch))
"""


@pytest.mark.slow  # two writer processes
def test_two_processes_racing_on_one_store_leave_unique_keys(tmp_path):
    store = str(tmp_path / "store")
    Store(store).create_or_open("t", TableInfo("m", "r", "biqwen", 8, "fp", "float16"))
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", _RACER, store, str(s)], cwd=REPO, env=cli_env(), stderr=subprocess.PIPE, text=True
        )
        for s in (1, 2)
    ]
    for p in procs:
        assert p.wait(timeout=300) == 0, p.stderr.read()
    t = Store(store).open_table("t")
    keys = t.to_arrow(["root", "path", "page"]).to_pylist()
    assert len(keys) == 120 == len({tuple(k.values()) for k in keys})
    assert t.duplicate_count() == 0


def test_dedupe_keeps_the_newest_row(tmp_path):
    t = Store(tmp_path / "s").create_or_open("t", TableInfo("m", "r", "biqwen", 4, "fp", "float32"))
    recs = [Record("/r", f"p{i}", "old", 1, 0.0, 1, 1, np.ones(4), "float32") for i in range(5)]
    t.upsert(recs)
    import time

    time.sleep(0.01)
    newer = [Record("/r", f"p{i}", "new", 1, 0.0, 1, 1, np.full(4, 2.0), "float32") for i in range(2)]
    t.table.add(t._arrow(newer))  # what an unlocked concurrent writer could do
    assert t.duplicate_count() == 2
    assert t.dedupe() == 2
    rows = {r["path"]: r["content_hash"] for r in t.to_arrow(["path", "content_hash"]).to_pylist()}
    assert rows == {"p0": "new", "p1": "new", "p2": "old", "p3": "old", "p4": "old"}
    assert t.duplicate_count() == 0 and t.dedupe() == 0 and t.ensure_unique() == 0
    t.table.add(t._arrow(newer))
    assert t.ensure_unique() == 2 and t.count() == 5


# ---------------------------------------------------------------- 6. checksums, NaN, check
def test_nan_and_overflow_rows_refused(tmp_path):
    t = Store(tmp_path / "s").create_or_open("t", TableInfo("m", "r", "colqwen", 4, "fp", "float16"))
    good = Record("/r", "good", "h", 1, 0.0, 1, 1, np.ones((3, 4)), "float32")
    nan = Record("/r", "nan", "h", 1, 0.0, 1, 1, np.array([[np.nan, 0, 0, 0]]), "float32")
    big = Record("/r", "big", "h", 1, 0.0, 1, 1, np.array([[1e6, 0, 0, 0]]), "float32")
    empty = Record("/r", "empty", "h", 1, 0.0, 1, 1, np.zeros((0, 4)), "float32")
    refused = t.upsert([good, nan, big, empty], known_new={"good", "nan", "big", "empty"})
    assert {r.path: why for r, why in refused}.keys() == {"nan", "big", "empty"}
    assert "NaN" in dict((r.path, w) for r, w in refused)["nan"]
    assert t.to_arrow(["path"]).column("path").to_pylist() == ["good"]
    row = t.to_arrow().to_pylist()[0]
    from nomic_memory.store.table import embedding_checksum

    assert row["embedding_checksum"] == embedding_checksum(np.ones((3, 4), np.float16))


def _flip_embedding_bytes(store: Path) -> None:
    """Overwrite bytes inside the vectors of every data file (random bytes, fixed seed)."""
    rng = np.random.default_rng(7)
    for f in sorted((store).glob("*.lance/data/*.lance")):
        data = bytearray(f.read_bytes())
        # The embedding column is written last and is most of the file: the middle is vectors.
        mid = len(data) // 2
        data[mid : mid + 16] = rng.integers(0, 256, 16, dtype=np.uint8).tobytes()
        f.write_bytes(bytes(data))


@pytest.mark.slow
def test_check_finds_and_repairs_damaged_rows(loaded, tiny_colqwen, image_dir, tmp_path):
    from conftest import run_cli
    from nomic_memory.store.check import verify_table

    store = tmp_path / "store"
    emb = loaded["colqwen"]
    emb.embed_directory(image_dir, store=store, workers=0)
    before = {r["path"]: r["embedding"] for r in Store(store).only_table().to_arrow(["path", "embedding"]).to_pylist()}
    assert verify_table(Store(store).only_table()).ok

    _flip_embedding_bytes(store)
    rep = verify_table(Store(store).only_table())
    assert not rep.ok and rep.bad
    assert all(
        b.reason.startswith(("checksum mismatch", "unreadable", "embedding contains", "wrong vector")) for b in rep.bad
    )

    r = run_cli("check", "--store", store, "--json", env=cli_env(tmp_path))
    assert r.returncode == 1, str(r)
    assert r.json()["bad"]
    r = run_cli("check", "--store", store, "--repair", "--backend", "cpu", "--json", env=cli_env(tmp_path))
    assert r.returncode == 0, str(r)
    assert r.json()["after_repair"]["ok"]
    after = {r["path"]: r["embedding"] for r in Store(store).only_table().to_arrow(["path", "embedding"]).to_pylist()}
    assert after.keys() == before.keys()
    for p in before:
        np.testing.assert_allclose(np.asarray(after[p], np.float32), np.asarray(before[p], np.float32), atol=1e-4)


# ---------------------------------------------------------------- 7. one-line errors
def test_store_that_is_a_file(tmp_path):
    f = tmp_path / "store"
    f.write_text("x")
    with pytest.raises(StoreError, match="is a file, not a store directory"):
        Store(f)


def test_damaged_manifest_is_a_store_error_naming_check(tmp_path):
    store = tmp_path / "s"
    t = Store(store).create_or_open("t", TableInfo("m", "r", "biqwen", 4, "fp", "float32"))
    t.upsert([Record("/r", "a", "h", 1, 0.0, 1, 1, np.ones(4), "float32")])
    for m in (store / "t.lance" / "_versions").glob("*.manifest"):
        m.write_bytes(b"\0garbage" * 10)
    with pytest.raises(StoreError, match=r"nomic-memory check --store"):
        Store(store).open_table("t").count() if False else Store(store).open_table("t").to_arrow()


@pytest.mark.slow  # CLI subprocesses
def test_export_errors_are_one_line_and_leave_no_partial_file(loaded, image_dir, tmp_path):
    from nomic_memory.errors import UsageError
    from nomic_memory.store.export import ExportError, export_store

    store = tmp_path / "store"
    loaded["biqwen"].embed_directory(image_dir, store=store, workers=0)
    outdir = tmp_path / "out"
    outdir.mkdir()
    with pytest.raises(UsageError, match="is a directory"):
        export_store(store, "npz", outdir)
    # A full disk: the file-size limit makes every write past 4 kB fail (EFBIG), like ENOSPC.
    r = _py(f"""
        import resource, signal, sys
        from nomic_memory.store.export import export_store, ExportError
        sys.dont_write_bytecode = True  # the limit must only hit the export, never a .pyc
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (4096, 4096))
        for fmt in ("npz", "parquet"):
            try:
                export_store({str(store)!r}, fmt, {str(outdir / "e")!r} + "." + fmt)
            except ExportError as e:
                print("ExportError:", e)
    """)
    assert r.returncode == 0, r.stderr[-2000:]
    lines = r.stdout.strip().splitlines()
    assert len(lines) == 2 and all(ln.startswith("ExportError: cannot write") for ln in lines), r.stdout
    assert list(outdir.iterdir()) == []  # no truncated file, no temporary left behind
    # And a good export still lands in one piece.
    export_store(store, "parquet", outdir / "ok.parquet")
    assert [p.name for p in outdir.iterdir()] == ["ok.parquet"]
    _ = ExportError


def test_decompression_bomb_warning_never_printed(tmp_path):
    from PIL import Image

    p = tmp_path / "big.png"
    Image.new("1", (14000, 14000)).save(p)  # 196 Mpx: over Pillow's warning threshold
    r = _py(f"""
        from nomic_memory.ingest.images import image_size, load_image, ImageError
        print(image_size({str(p)!r}))
        try:
            load_image({str(p)!r})
        except ImageError as e:
            print(e.reason)
    """)
    assert r.returncode == 0 and "Warning" not in r.stderr, r.stderr
    assert "image too large" in r.stdout


# ---------------------------------------------------------------- 8. compaction and cleanup
def _disk(p: Path) -> int:
    return sum(f.stat().st_size for f in p.rglob("*") if f.is_file())


def test_maintain_compacts_and_cleans_up(tmp_path):
    import datetime as dt

    store = tmp_path / "s"
    t = Store(store).create_or_open("t", TableInfo("m", "r", "colqwen", 128, "fp", "float16"))
    rng = np.random.default_rng(0)
    for b in range(60):  # per-batch commits: 40 batches of new files, then 20 re-embedding some
        paths = [f"p{(b * 4 + i) % 160}" for i in range(4)]
        t.upsert(
            [Record("/r", p, "h", 1, 0.0, 1, 1, rng.standard_normal((16, 128)), "f") for p in paths],
            known_new=set(paths) if b < 40 else set(),
        )
    frags, disk = t.fragment_count(), _disk(store)
    assert frags > 16
    assert t.maintain(cleanup_older_than=dt.timedelta(0))
    assert t.fragment_count() <= 2 and len(t.table.list_versions()) == 1
    live = 160 * 16 * 128 * 2  # the vectors the table holds, in float16
    assert _disk(store) < min(disk / 2, 1.2 * live), (disk, _disk(store))
    assert t.count() == 160
    assert not t.maintain(cleanup_older_than=dt.timedelta(0))  # nothing to do: cheap no-op


def test_tables_made_before_checksums_still_work(tmp_path):
    """A schema-1 table (no embedding_checksum column) opens, takes new rows, and checks clean."""
    import pyarrow as pa

    from nomic_memory.store.check import verify_table
    from nomic_memory.store.table import META_KEY, schema_for

    info = TableInfo("m", "r", "colqwen", 4, "fp", "float16")
    new = schema_for(info)
    meta = json.loads(new.metadata[META_KEY])
    meta["schema_version"] = 1
    old = pa.schema([f for f in new if f.name != "embedding_checksum"], metadata={META_KEY: json.dumps(meta).encode()})
    store = Store(tmp_path / "s")
    store.db.create_table("t", schema=old)
    t = store.open_table("t")
    assert (t.schema_version, t.has_checksums) == (1, False)
    assert t.upsert([Record("/r", "a", "h", 1, 0.0, 1, 1, np.ones((2, 4)), "float32")]) == []
    rep = verify_table(Store(tmp_path / "s").open_table("t"))
    assert rep.ok and rep.rows_checked == 1 and not rep.checksummed


@pytest.mark.slow
def test_cli_errors_are_one_line(tmp_path):
    from conftest import run_cli_many

    f = tmp_path / "file-store"
    f.write_text("x")
    outdir = tmp_path / "out"
    outdir.mkdir()
    store = Store(tmp_path / "s")
    t = store.create_or_open("t", TableInfo("m", "r", "biqwen", 4, "fp", "float32"))
    t.upsert([Record("/r", "a", "h", 1, 0.0, 1, 1, np.ones(4), "float32")])
    res = run_cli_many(
        {
            "check_file": ["check", "--store", f],
            "export_file": ["export", "--store", f, "--out", tmp_path / "e.npz"],
            "export_dir": ["export", "--store", tmp_path / "s", "--out", outdir],
            "check_ok": ["check", "--store", tmp_path / "s"],
        },
        env=cli_env(tmp_path),
    )
    for name in ("check_file", "export_file", "export_dir"):
        r = res[name]
        assert r.returncode in (1, 2), str(r)
        lines = r.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("Error: ") and "Traceback" not in r.stderr, str(r)
    assert "is a file, not a store directory" in res["check_file"].stderr
    assert "is a directory" in res["export_dir"].stderr
    assert res["check_ok"].returncode == 0 and "No problems found" in res["check_ok"].stdout
