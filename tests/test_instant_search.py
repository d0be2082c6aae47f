"""``nomic-memory search`` through a running ``nomic-memory serve`` of the same store.

The server leaves its address (and token) in a per-user file (:mod:`nomic_memory.registry`); the
command finds it, asks the server, and falls back to searching in-process whenever the server
could not give the in-process answer (gone, stale file, another table or template).
"""

from __future__ import annotations

import json
import os
import re
import signal
import stat
import subprocess
import time
import warnings
from pathlib import Path

import pytest

from conftest import assert_same_answers, cli_env, make_image, run_cli, start_cli


# ------------------------------------------------------------------ the registry itself
@pytest.fixture
def runtime_dir(tmp_path, monkeypatch):
    d = tmp_path / "run"
    d.mkdir(mode=0o700)
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(d))
    return d


def test_registry_files_are_private_and_dead_servers_forgotten(runtime_dir, tmp_path):
    from nomic_memory.serve import registry

    store = tmp_path / "store"
    store.mkdir()
    path = registry.register(store, {"url": "http://127.0.0.1:1", "token": "t", "table": "x"})
    assert path.parent == runtime_dir / "nomic-memory"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    found = registry.find(str(store) + "/")  # the same store, written differently
    assert [(e["url"], e["token"], e["pid"]) for e in found] == [("http://127.0.0.1:1", "t", os.getpid())]
    assert registry.find(tmp_path / "other") == []

    # a file others could read is ignored; a dead server's file is removed
    os.chmod(path, 0o644)
    assert registry.find(store) == []
    os.chmod(path, 0o600)
    dead = subprocess.Popen(["true"])
    dead.wait()
    stale = path.with_name(path.name.replace(f"-{os.getpid()}.json", f"-{dead.pid}.json"))
    stale.write_text(json.dumps({**json.loads(path.read_text()), "pid": dead.pid}))
    os.chmod(stale, 0o600)
    assert [e["pid"] for e in registry.find(store)] == [os.getpid()]
    assert not stale.exists()
    registry.unregister(path)
    assert registry.find(store) == []


# ------------------------------------------------------------------ a real server and the real CLI
@pytest.fixture(scope="module")
def served(tmp_path_factory, tiny_colqwen):
    from nomic_memory import Embedder

    base = tmp_path_factory.mktemp("instant")
    for i in range(8):
        make_image(base / "pages" / f"p{i}.png", 180 + 10 * i, 150, seed=i)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        Embedder(str(tiny_colqwen), backend="cpu").embed_directory(base / "pages", store=base / "store", workers=0)
    env = cli_env(base)
    (base / "run").mkdir(mode=0o700)
    env["XDG_RUNTIME_DIR"] = str(base / "run")
    proc = start_cli("serve", "--store", base / "store", "--backend", "cpu", "--port", "0", "--token", "tok", env=env)
    files: list[Path] = []
    deadline = time.time() + 180
    while not files and time.time() < deadline and proc.poll() is None:
        time.sleep(0.1)
        files = list((base / "run" / "nomic-memory").glob("*.json")) if (base / "run" / "nomic-memory").is_dir() else []
    assert files, f"the server left no address file (exit {proc.poll()})"
    yield {"base": base, "store": base / "store", "env": env, "proc": proc, "file": files[0]}
    if proc.poll() is None:
        proc.kill()
        proc.wait(30)


def search_json(served, *args: str) -> dict:
    r = run_cli("search", *args, "--store", str(served["store"]), "--json", env=served["env"], timeout=300)
    assert r.returncode == 0, str(r)
    return r.json()


@pytest.mark.slow
def test_cli_search_through_the_server_equals_in_process(served):
    from nomic_memory import Index

    entry = json.loads(served["file"].read_text())
    assert stat.S_IMODE(served["file"].stat().st_mode) == 0o600
    assert entry["token"] == "tok" and re.fullmatch(r"http://127\.0\.0\.1:\d+", entry["url"])
    idx = Index.open(served["store"], backend="cpu")
    for args in (
        ["a red bicycle", "-k", "5"],
        ["blue sky", "invoice", "-k", "3"],
        ["chart", "-k", "8", "--where", "width > 200"],
    ):
        via = search_json(served, *args)
        local = search_json(served, *args, "--no-server")
        assert via["server"] == entry["url"] and "server" not in local
        assert_same_answers(via["results"], local["results"])
        assert [{**q, "results": None} for q in via["queries"]] == [{**q, "results": None} for q in local["queries"]]
        assert (via["table"], via["model"], via["kind"], via["store"]) == (
            local["table"],
            local["model"],
            local["kind"],
            local["store"],
        )
        texts = [a for a in args if not a.startswith("-") and not a[0].isdigit() and "width" not in a]
        k = int(args[args.index("-k") + 1])
        where = args[args.index("--where") + 1] if "--where" in args else None
        want = [[h.to_dict() for h in hs] for hs in idx.search_many(texts, k, where=where)]
        assert_same_answers(via["results"], want)


@pytest.mark.slow
def test_cli_falls_back_when_the_server_cannot_answer_the_same(served):
    # another query template, a bad filter: searched (and reported) in-process
    r = search_json(served, "a red bicycle", "--template", "Query: {}")
    assert "server" not in r and "load_seconds" in r
    bad = run_cli("search", "x", "--store", str(served["store"]), "--where", "nope > 1", env=served["env"])
    assert bad.returncode == 2 and "unknown column 'nope'" in bad.stderr and "Traceback" not in bad.stderr
    missing = run_cli("search", "x", "--store", str(served["store"]), "--table", "other", env=served["env"])
    assert missing.returncode == 1 and "Traceback" not in missing.stderr


@pytest.mark.slow
def test_server_removes_its_file_and_a_killed_servers_file_is_ignored(served):
    path, proc = served["file"], served["proc"]
    entry = json.loads(path.read_text())
    proc.send_signal(signal.SIGTERM)
    proc.wait(60)
    assert not path.exists()
    # a file left by a server killed with SIGKILL: its process is gone, the command searches alone
    path.write_text(json.dumps(entry))
    os.chmod(path, 0o600)
    r = search_json(served, "a red bicycle")
    assert "server" not in r and len(r["results"][0]) == 8
    assert not path.exists()
