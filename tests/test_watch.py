"""Watching folders: real watchdog events on real folders, the tiny model, real LanceDB stores.

Each test changes files the way people and programs do (create, rewrite in place, atomic
rename-over, move, delete, a file written slowly) and checks the store itself (one row per file,
the content hash of the file as it is now) and :meth:`Index.search` (what a search can find).
The watcher runs in a thread of the test process, or as the real CLI in a subprocess for the
kill -9, two-watcher and ``serve --watch`` tests.
"""

from __future__ import annotations

import hashlib
import io
import os
import re
import shutil
import signal
import subprocess
import threading
import time
from pathlib import Path

import httpx
import numpy as np
import pytest
from PIL import Image

from conftest import cli_env, finish, kill_when_rows, make_image, on_cpu, start_cli
from nomic_memory import Index, Store
from nomic_memory.ingest.documents import is_input_path
from nomic_memory.ingest.images import discover
from nomic_memory.run.watch import Watcher, WatchListener, WatchOptions

TIMEOUT = 90.0  # generous: two cores are shared with other test runs


# ---------------------------------------------------------------- helpers
def wait_until(pred, timeout: float = TIMEOUT, what: str = "condition"):
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        last = pred()
        if last:
            return last
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what} (last: {last!r})")


def sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def on_disk(folder: Path) -> dict[str, str]:
    """``relative path -> sha256`` of every input under ``folder``: what the store must hold."""
    return {p.relative_to(folder).as_posix(): sha(p) for p in discover(folder, match=is_input_path)[0]}


def stored(store: Path) -> dict[str, str]:
    """``path -> content_hash`` of the store's rows; fails if any (root, path, page) is stored twice."""
    s = Store(store)
    if not s.table_names():
        return {}
    d = s.only_table().to_arrow(["root", "path", "page", "content_hash"]).to_pydict()
    keys = list(zip(d["root"], d["path"], d["page"]))
    assert len(keys) == len(set(keys)), f"duplicate rows: {sorted(k for k in keys if keys.count(k) > 1)}"
    return dict(zip(d["path"], d["content_hash"]))


def in_sync(store: Path, folder: Path):
    want = on_disk(folder)
    return stored(store) == want and (want or True)


def searchable(store: Path, emb) -> set[str]:
    """Every path a search can return (k = all rows)."""
    idx = Index.open(store, model=emb)
    n = idx.table.count()
    return {h.path for h in idx.search("a page", k=max(n, 1))} if n else set()


def png_bytes(w: int, h: int, seed: int) -> bytes:
    rng = np.random.default_rng(seed)
    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8)).save(buf, "PNG")
    return buf.getvalue()


class Recorder(WatchListener):
    """Every run: when it started and ended, its paths, what it embedded and what failed."""

    def __init__(self):
        self.runs: list[dict] = []
        self.lock = threading.Lock()

    def run_started(self, root, trigger, paths):
        run = {
            "start": time.monotonic(),
            "trigger": trigger,
            "paths": None if paths is None else list(paths),
            "failed": [],
            "embedded": 0,
            "end": None,
        }
        with self.lock:
            self.runs.append(run)

        def progress(kind, data):
            if kind == "failed":
                run["failed"].append(data["path"])

        return progress

    def run_finished(self, report, trigger, paths):
        with self.lock:
            self.runs[-1].update(end=time.monotonic(), embedded=report.embedded, pruned=report.pruned)

    def embedded(self) -> int:
        with self.lock:
            return sum(r["embedded"] for r in self.runs)


class Running:
    """A watcher in a thread of this process."""

    def __init__(self, emb, folders, store, **opts):
        self.rec = Recorder()
        self.watcher = Watcher(
            emb, folders, store, WatchOptions(**{"debounce": 0.3, "max_wait": 1.0, **opts}), self.rec
        )
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()
        wait_until(lambda: any(r["end"] for r in self.rec.runs) or self.error, what="the catch-up run")
        wait_until(lambda: self.watcher.embedder.is_loaded or self.error, what="the model")

    def _run(self):
        try:
            self.watcher.run()
        except BaseException as e:  # surfaced by stop()
            self.error = e

    def stop(self):
        self.watcher.stop()
        self.thread.join(60)
        assert not self.thread.is_alive()
        if self.error:
            raise self.error


@pytest.fixture
def emb(tiny_colqwen):
    """A lazy Embedder per test (the watcher loads it once, after the catch-up)."""
    from nomic_memory import Embedder

    return Embedder(str(tiny_colqwen), backend="cpu", lazy=True)


@pytest.fixture
def folder(tmp_path) -> Path:
    f = tmp_path / "photos"
    for i in range(4):
        make_image(f / f"p{i}.png", 64, 48, seed=i)
    make_image(f / "sub/deep/q.jpg", 80, 60, seed=10)
    return f


# ---------------------------------------------------------------- in-process watcher
def test_create_modify_in_place_delete(emb, folder, tmp_path):
    store = tmp_path / "store"
    w = Running(emb, [folder], store)
    try:
        assert stored(store) == on_disk(folder) and len(on_disk(folder)) == 5  # the catch-up
        make_image(folder / "new.png", 70, 50, seed=20)
        wait_until(lambda: in_sync(store, folder), what="the new file")
        assert "new.png" in searchable(store, emb)

        with open(folder / "p0.png", "r+b") as f:  # rewritten in place: same name, same inode
            data = png_bytes(64, 48, seed=99)
            f.write(data)
            f.truncate(len(data))
        wait_until(lambda: stored(store).get("p0.png") == sha(folder / "p0.png"), what="the rewritten file")
        assert in_sync(store, folder)

        (folder / "p1.png").unlink()
        wait_until(lambda: "p1.png" not in stored(store), what="the deleted file's row to go")
        assert in_sync(store, folder)
        assert searchable(store, emb) == set(on_disk(folder))
    finally:
        w.stop()
    assert w.rec.embedded() == 5 + 1 + 1  # each content embedded once: nothing twice


def test_atomic_rename_over(emb, folder, tmp_path):
    """Editors and downloaders write a temporary file and rename it over the old one."""
    store = tmp_path / "store"
    w = Running(emb, [folder], store)
    try:
        for i, tmp in enumerate([".p2.png.part", "p2.tmp.png"]):  # a name that is not an input, and one that is
            (folder / tmp).write_bytes(png_bytes(64, 48, seed=200 + i))
            os.replace(folder / tmp, folder / "p2.png")
            wait_until(lambda: stored(store).get("p2.png") == sha(folder / "p2.png"), what="the replaced file")
            wait_until(lambda: in_sync(store, folder), what="no row for the temporary name")
    finally:
        w.stop()
    assert searchable(store, emb) == set(on_disk(folder))


def test_move_between_folders_and_rename_a_folder(emb, folder, tmp_path):
    store = tmp_path / "store"
    w = Running(emb, [folder], store)
    try:
        before = stored(store)
        (folder / "other").mkdir()
        os.rename(folder / "p3.png", folder / "other/p3.png")
        wait_until(lambda: in_sync(store, folder), what="the moved file")
        assert stored(store)["other/p3.png"] == before["p3.png"]

        os.rename(folder / "sub", folder / "renamed")  # a folder moved: its files' rows re-keyed
        wait_until(lambda: in_sync(store, folder), what="the renamed folder")
        assert stored(store)["renamed/deep/q.jpg"] == before["sub/deep/q.jpg"]
        assert not any(p.startswith("sub/") for p in stored(store))

        outside = tmp_path / "elsewhere"
        shutil.move(str(folder / "renamed"), str(outside))  # moved out of the watched folder
        wait_until(lambda: in_sync(store, folder), what="rows of the folder moved away")
        shutil.move(str(outside), str(folder / "back"))  # and a folder moved in
        wait_until(lambda: in_sync(store, folder), what="the folder moved in")
        assert searchable(store, emb) == set(on_disk(folder))
    finally:
        w.stop()


def test_delete_a_folder(emb, folder, tmp_path):
    store = tmp_path / "store"
    for i in range(6):
        make_image(folder / f"sub/x{i}.png", 40, 40, seed=30 + i)
    w = Running(emb, [folder], store)
    try:
        assert sum(p.startswith("sub/") for p in stored(store)) == 7
        shutil.rmtree(folder / "sub")
        wait_until(lambda: in_sync(store, folder), what="the deleted folder's rows to go")
        assert searchable(store, emb) == {f"p{i}.png" for i in range(4)}
    finally:
        w.stop()


@pytest.mark.slow  # 3 s of writing, then a second of quiet
def test_file_still_being_written_is_embedded_once_when_stable(emb, folder, tmp_path):
    """A file growing for 3 s (a copy, a download) is embedded once, after its last write."""
    store = tmp_path / "store"
    w = Running(emb, [folder], store, debounce=1.0)
    data = png_bytes(400, 300, seed=5)
    target = folder / "slow.png"
    try:
        n = 15
        with open(target, "wb") as f:
            for i in range(n):  # 15 writes, 0.2 s apart: 3 s
                f.write(data[i * len(data) // n : (i + 1) * len(data) // n])
                f.flush()
                time.sleep(0.2)
        written = time.monotonic()
        wait_until(lambda: stored(store).get("slow.png") == sha(target), what="the slow file")
        time.sleep(1.5)  # nothing more happens to it
    finally:
        w.stop()
    runs = [r for r in w.rec.runs if r["paths"] and target in r["paths"]]
    assert len(runs) == 1 and runs[0]["embedded"] == 1 and not runs[0]["failed"], w.rec.runs
    assert runs[0]["start"] >= written  # not before its last write
    assert not any("slow.png" in p for r in w.rec.runs for p in r["failed"])


def test_burst_is_batched_like_a_run(emb, tmp_path):
    folder = tmp_path / "burst"
    folder.mkdir()
    store = tmp_path / "store"
    w = Running(emb, [folder], store, batch_size=16)
    try:
        payload = [png_bytes(48, 40, seed=1000 + i) for i in range(20)]
        for i in range(300):
            (folder / f"d{i // 100}").mkdir(exist_ok=True)
            (folder / f"d{i // 100}/f{i:04d}.png").write_bytes(payload[i % 20] + i.to_bytes(4, "little"))
        wait_until(lambda: len(stored(store)) == 300, what="300 rows")
        assert in_sync(store, folder)
    finally:
        w.stop()
    change_runs = [r for r in w.rec.runs if r["trigger"] == "changes" and r["embedded"]]
    assert w.rec.embedded() == 300  # every file once, none twice
    assert len(change_runs) <= 6, [len(r["paths"]) for r in change_runs]  # a few large runs, not 300 small ones


def test_stop_commits_and_restart_catches_up(emb, tmp_path):
    """stop() during a large run returns after the batch in flight; a new watcher embeds the rest."""
    folder = tmp_path / "many"
    folder.mkdir()
    store = tmp_path / "store"
    w = Running(emb, [folder], store, batch_size=2)
    for i in range(200):
        (folder / f"f{i:04d}.png").write_bytes(png_bytes(48, 40, seed=i))
    wait_until(lambda: 0 < len(stored(store)) < 200 or None, what="a run under way")
    t = time.monotonic()
    w.stop()
    assert time.monotonic() - t < 10
    first = stored(store)
    assert 0 < len(first) < 200 and all(first[p] == sha(folder / p) for p in first)
    (folder / "f0199.png").unlink()
    w2 = Running(emb, [folder], store)
    try:
        wait_until(lambda: in_sync(store, folder), what="the catch-up")
    finally:
        w2.stop()
    catch_up = w2.rec.runs[0]
    kept = set(first) - {"f0199.png"}
    assert catch_up["trigger"] == "catch-up" and catch_up["embedded"] == 199 - len(kept)  # nothing twice


# ---------------------------------------------------------------- the CLI
def start_watch(folder: Path, store: Path, model: Path, tmp_path: Path, *extra: str) -> subprocess.Popen:
    return start_cli(
        "watch", folder, *on_cpu(model, store), "--debounce", "0.3", "--json", *extra, env=cli_env(tmp_path)
    )


def wait_for_line(proc: subprocess.Popen, pattern: str, timeout: float = 180) -> str:
    """Read stdout until a line matches (the JSON report of a run)."""
    lines: list[str] = []

    def read():
        for line in proc.stdout:
            lines.append(line)
            if re.search(pattern, line):
                return

    t = threading.Thread(target=read, daemon=True)
    t.start()
    t.join(timeout)
    assert lines and re.search(pattern, lines[-1]), "".join(lines) + (proc.stderr.read() if proc.poll() else "")
    return lines[-1]


@pytest.mark.slow
def test_cli_watcher_killed_and_restarted(tiny_colqwen, tmp_path):
    folder = tmp_path / "photos"
    folder.mkdir()
    store = tmp_path / "store"
    proc = start_watch(folder, store, tiny_colqwen, tmp_path, "--batch-size", "1")
    try:
        wait_for_line(proc, r'"trigger": "catch-up"')
        for i in range(80):
            (folder / f"f{i:03d}.png").write_bytes(png_bytes(48, 40, seed=i))
        killer, seen = kill_when_rows(proc, store, 5, 75)
        killer.join(TIMEOUT)
        assert seen, "the watcher was not caught mid-run"
        proc.wait(30)
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.communicate()
    committed = stored(store)
    assert 5 <= len(committed) < 80 and all(committed[p] == sha(folder / p) for p in committed)
    # While no watcher runs: files added, changed and deleted.
    (folder / "f000.png").unlink()
    (folder / "f079.png").write_bytes(png_bytes(50, 40, seed=500))
    make_image(folder / "sub/late.jpg", 64, 64, seed=7)

    proc = start_watch(folder, store, tiny_colqwen, tmp_path)
    try:
        line = wait_for_line(proc, r'"trigger": "catch-up"')
        assert in_sync(store, folder)
        import json

        report = json.loads(line)
        still = {p for p in committed if p != "f000.png" and p != "f079.png"}
        assert report["embedded"] == len(on_disk(folder)) - len(still)  # nothing embedded twice
        make_image(folder / "after.png", 30, 30, seed=8)
        wait_until(lambda: in_sync(store, folder), what="a change after the restart")
        proc.send_signal(signal.SIGINT)
        res = finish(proc, 60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert res.returncode == 0, res
    assert "Stopped: every batch embedded so far is committed" in res.stderr
    assert "Traceback" not in res.stderr


@pytest.mark.slow
def test_two_watchers_share_a_store(tiny_colqwen, tmp_path):
    folder = tmp_path / "photos"
    for i in range(3):
        make_image(folder / f"p{i}.png", 64, 48, seed=i)
    store = tmp_path / "store"
    procs = [start_watch(folder, store, tiny_colqwen, tmp_path, "--batch-size", "2") for _ in range(2)]
    try:
        for p in procs:
            wait_for_line(p, r'"trigger": "catch-up"')
        for i in range(40):
            (folder / f"new{i:02d}.png").write_bytes(png_bytes(40, 40, seed=100 + i))
        (folder / "p0.png").unlink()
        os.replace(folder / "new00.png", folder / "p1.png")
        wait_until(lambda: in_sync(store, folder), what="both watchers to settle")
        time.sleep(2)
        assert in_sync(store, folder)  # and stays so: no duplicate, no stale row
    finally:
        for p in procs:
            p.send_signal(signal.SIGTERM)
        results = [finish(p, 60) for p in procs]
    assert all(r.returncode == 0 and "Traceback" not in r.stderr for r in results), results


@pytest.mark.slow
def test_cli_watch_bad_folder_is_one_line(tiny_colqwen, tmp_path):
    res = finish(start_watch(tmp_path / "nowhere", tmp_path / "store", tiny_colqwen, tmp_path))
    assert res.returncode == 1 and "no such directory" in res.stderr and "Traceback" not in res.stderr


@pytest.mark.slow
def test_serve_watch_sees_new_rows(emb, folder, tmp_path):
    store = tmp_path / "store"
    emb.embed_directory(folder, store)
    proc = start_cli(
        "serve", "--store", str(store), "--port", "0", "--backend", "cpu", "--watch", str(folder), env=cli_env(tmp_path)
    )
    try:
        url = None
        deadline = time.monotonic() + 180
        while url is None and time.monotonic() < deadline:
            line = proc.stderr.readline()
            m = re.search(r"http://127\.0\.0\.1:(\d+)/", line)
            url = f"http://127.0.0.1:{m.group(1)}" if m else url
            assert line, proc.stderr.read()

        def paths() -> set[str]:
            r = httpx.post(url + "/search", json={"queries": ["a page"], "k": 50}, timeout=60)
            assert r.status_code == 200, r.text
            return {h["path"] for h in r.json()["results"][0]}

        assert paths() == set(on_disk(folder))
        make_image(folder / "fresh.png", 60, 60, seed=77)
        wait_until(lambda: "fresh.png" in paths(), what="the server to find the new file")
        (folder / "p0.png").unlink()
        wait_until(lambda: "p0.png" not in paths(), what="the server to drop the deleted file")
        assert in_sync(store, folder)
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(60)
        finally:
            if proc.poll() is None:
                proc.kill()


def test_nested_folders_each_keep_their_rows(emb, folder, tmp_path):
    """Watching a folder and one inside it: a change there updates the rows of both roots."""
    store = tmp_path / "store"
    inner = folder / "sub"
    w = Running(emb, [folder, inner], store)

    def rows() -> set[tuple[str, str, str]]:
        d = Store(store).only_table().to_arrow(["root", "path", "content_hash"]).to_pydict()
        return set(zip(d["root"], d["path"], d["content_hash"]))

    try:
        make_image(inner / "n.png", 50, 50, seed=40)
        h = sha(inner / "n.png")
        wait_until(lambda: {(str(folder), "sub/n.png", h), (str(inner), "n.png", h)} <= rows(), what="both roots' rows")
        (inner / "n.png").unlink()
        wait_until(lambda: not any(p.endswith("n.png") for _, p, _ in rows()), what="both rows to go")
    finally:
        w.stop()
