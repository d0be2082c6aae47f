"""``nomic-memory mcp``: the MCP server through the SDK's own client, on real stores (tiny models).

In-process through the SDK's in-memory transport (``Client(server, mode="legacy")``: the JSON-RPC
stream loop, as over stdio), and as real subprocesses: ``nomic-memory mcp`` over stdio
(``StdioServerParameters``) and over Streamable HTTP with a bearer token.
"""

from __future__ import annotations

import base64
import io
import json
import os
import re
import sys
import warnings
from pathlib import Path

import anyio
import numpy as np
import pytest
from mcp import Client, StdioServerParameters
from mcp.shared.exceptions import MCPError
from PIL import Image

from conftest import REPO, assert_same_hits, cli_env, make_image, run_cli, start_cli

QUERIES = ["a red bicycle", "quarterly revenue table", "blue sky"]


def _pages(folder: Path, n: int, seed: int = 0) -> Path:
    for i in range(n):
        make_image(folder / ("sub" if i % 3 == 0 else "") / f"page{i:02d}.png", 200 + 8 * i, 160, seed=seed + i)
    return folder


@pytest.fixture(scope="module")
def env(tmp_path_factory, tiny_colqwen):
    from nomic_memory import Embedder, Index

    base = tmp_path_factory.mktemp("mcp")
    pages = _pages(base / "pages", 12)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        Embedder(str(tiny_colqwen), backend="cpu").embed_directory(pages, store=base / "store", workers=0)
    return {
        "base": base,
        "pages": pages,
        "store": base / "store",
        "model": tiny_colqwen,
        "idx": Index.open(base / "store", backend="cpu"),
    }


def server_for(store, **kw):
    from nomic_memory.serve.mcp import create_mcp_server, open_page_store

    return create_mcp_server(open_page_store(store, backend="cpu", **kw))


def call(server_or_params, fn):
    """Run ``await fn(client)`` against a connected SDK client; returns its result."""
    out = {}

    async def main():
        async with Client(server_or_params, mode="legacy") as c:
            out["r"] = await fn(c)

    try:
        anyio.run(main)
    except BaseExceptionGroup as eg:  # the client's task group wraps what the call raised
        while isinstance(eg, BaseExceptionGroup) and len(eg.exceptions) == 1:
            eg = eg.exceptions[0]
        raise eg from None
    return out["r"]


def hits_of(result) -> list[dict]:
    assert not result.is_error, result.content[0].text
    payload = json.loads(result.content[0].text)
    assert payload == result.structured_content
    return payload["results"]


def jpeg(block) -> Image.Image:
    assert block.type == "image" and block.mime_type == "image/jpeg"
    img = Image.open(io.BytesIO(base64.b64decode(block.data)))
    assert img.format == "JPEG"
    return img


def error_text(result) -> str:
    assert result.is_error
    text = result.content[0].text
    assert "Traceback" not in text and 'File "' not in text
    return text


# ------------------------------------------------------------------ in-process
def test_search_equals_index_search_with_page_images(env):
    srv = server_for(env["store"])

    async def go(c):
        tools = {t.name: t for t in (await c.list_tools()).tools}
        assert set(tools) == {"search", "get_page", "stats"}  # no add_folder without allow_write
        assert tools["search"].input_schema["properties"]["k"]["maximum"] == 50
        bare = await c.call_tool("search", {"query": QUERIES[0], "k": 12, "images": False})
        return [await c.call_tool("search", {"query": q, "k": 12}) for q in QUERIES], bare

    results, bare = call(srv, go)
    assert len(bare.content) == 1 and hits_of(bare) == [
        {k: v for k, v in h.items() if k != "image"} for h in hits_of(results[0])
    ]
    for q, r in zip(QUERIES, results):
        hits = hits_of(r)
        assert_same_hits(hits, env["idx"].search(q, k=12), exact=True)  # one query, one forward: bit-identical
        images = r.content[1:]
        assert len(images) == 10  # the first ten hits carry their page image
        for h, block in zip(hits, images):
            img = jpeg(block)
            src = Image.open(Path(h["root"]) / h["path"])
            assert img.size == src.size  # small pages are not enlarged
        assert all(h["image"].startswith("attached") for h in hits[:10])
        assert all("page://" in h["image"] for h in hits[10:])


def test_page_images_are_progressive_jpegs_with_the_pixels_of_a_baseline_one(env):
    """Images are written optimised and progressive: fewer bytes, the very pixels that a baseline
    JPEG of the same quality decodes to."""
    from nomic_memory.serve.mcp import IMAGE_SIDE
    from nomic_memory.serve.thumbs import load_page, thumbnail

    idx = env["idx"]
    for hit in idx.search("blue sky", k=3):
        row = idx.row(hit.id)
        data = thumbnail(idx.store, idx.table.name, hit.id, row, side=IMAGE_SIDE)
        got = Image.open(io.BytesIO(data))
        assert got.format == "JPEG" and got.info.get("progressive") and got.info.get("progression")
        page = load_page(row, side=IMAGE_SIDE)
        page.thumbnail((IMAGE_SIDE, IMAGE_SIDE), Image.Resampling.LANCZOS)
        buf = io.BytesIO()
        page.convert("RGB").save(buf, "JPEG", quality=85)
        assert len(data) < len(buf.getvalue())
        assert np.array_equal(np.asarray(got.convert("RGB")), np.asarray(Image.open(buf).convert("RGB")))


def test_where_filter_and_large_pages_are_bounded(env, tmp_path):
    from nomic_memory import Embedder, Index

    big = tmp_path / "big"
    make_image(big / "poster.png", 2400, 1200, seed=3)
    make_image(big / "a.png", 300, 200, seed=4)
    store = tmp_path / "store"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        Embedder(str(env["model"]), backend="cpu").embed_directory(big, store=store, workers=0)
    r = call(server_for(store), lambda c: c.call_tool("search", {"query": "poster", "k": 2, "where": "width > 1000"}))
    hits = hits_of(r)
    assert [h["path"] for h in hits] == ["poster.png"]
    assert_same_hits(hits, Index.open(store, backend="cpu").search("poster", k=2, where="width > 1000"), exact=True)
    assert jpeg(r.content[1]).size == (768, 384)  # long side bounded


def test_get_page_stats_and_page_resource(env):
    srv = server_for(env["store"])
    want = env["idx"].search("blue sky", k=1)[0]

    async def go(c):
        page = await c.call_tool("get_page", {"id": want.id})
        stats = await c.call_tool("stats", {})
        res = await c.read_resource(f"page://{want.id}")
        templates = await c.list_resource_templates()
        return page, stats, res, templates

    page, stats, res, templates = call(srv, go)
    meta = json.loads(page.content[0].text)["page"]
    assert (meta["id"], meta["path"], meta["root"], meta["page"]) == (want.id, want.path, want.root, want.page)
    assert meta["content_hash"] == env["idx"].row(want.id)["content_hash"]
    assert jpeg(page.content[1]).size == Image.open(want.file).size
    s = json.loads(stats.content[0].text)
    assert (s["rows"], s["table"], s["kind"]) == (12, env["idx"].table.name, "colqwen")
    assert s["model_id"] == str(env["model"]) and s["allow_write"] is False
    blob = res.contents[0]
    assert blob.mime_type == "image/jpeg"
    assert Image.open(io.BytesIO(base64.b64decode(blob.blob))).size == Image.open(want.file).size
    assert [t.uri_template for t in templates.resource_templates] == ["page://{id}"]


HOSTILE_CALLS = [
    ("search", {"query": "x", "k": 10**9}, "less than or equal to 50"),
    ("search", {"query": "x", "k": 0}, "greater than or equal to 1"),
    ("search", {"query": "x", "k": "5"}, "valid integer"),
    ("search", {"query": "x", "k": True}, "valid integer"),
    ("search", {"query": "x", "k": 2.5}, "valid integer"),
    ("search", {"query": "x", "images": "no"}, "valid boolean"),
    ("search", {"k": 3}, "query"),
    ("search", {"query": ["/etc/passwd"]}, "valid string"),
    ("search", {"query": "   "}, "query is empty"),
    ("search", {"query": "x" * 5000}, "at most 2000"),
    ("search", {"query": "x", "where": "content_hash = 'a'"}, "unknown column 'content_hash'"),
    ("search", {"query": "x", "where": "path = 'a"}, "invalid where"),
    ("search", {"query": "x", "where": "1=1; DROP TABLE t"}, "invalid where"),
    ("get_page", {"id": "../../../etc/passwd"}, "16 hex digits"),
    ("get_page", {"id": "/etc/passwd"}, "16 hex digits"),
    ("get_page", {"id": "0123456789abcdef"}, "no page with id 0123456789abcdef"),
    ("get_page", {"id": 12}, "valid string"),
    ("add_folder", {"folder": "/etc"}, "Unknown tool"),
    ("no_such_tool", {}, "Unknown tool"),
]


def test_hostile_calls_are_clear_tool_errors(env):
    srv = server_for(env["store"])

    async def go(c):
        out = [await c.call_tool(name, args) for name, args, _ in HOSTILE_CALLS]
        out.append(await c.call_tool("search", {"query": "still fine", "k": 2}))  # the server goes on
        return out

    results = call(srv, go)
    for (name, args, expect), r in zip(HOSTILE_CALLS, results):
        assert expect in error_text(r), (name, args, r.content[0].text)
    assert len(hits_of(results[-1])) == 2


@pytest.mark.parametrize(
    "uri",
    [
        "page://../../etc/passwd",
        "page://0123456789abcdef",
        "page:///etc/passwd",
        "file:///etc/passwd",
        "page://%2e%2e%2f%2e%2e%2fetc%2fpasswd",
    ],
)
def test_hostile_resource_reads_are_protocol_errors(env, uri):
    srv = server_for(env["store"])
    with pytest.raises(MCPError) as e:
        call(srv, lambda c: c.read_resource(uri))
    assert "Traceback" not in e.value.message and "root:" not in e.value.message


def test_only_files_inside_their_root_are_served(env, tmp_path):
    """A page whose file was deleted, or replaced by a symlink leading out of its root, has no image:
    the hit says why, the resource read fails, and nothing outside the root is read."""
    from nomic_memory import Embedder, Index

    folder = _pages(tmp_path / "pages", 3, seed=50)
    store = tmp_path / "store"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        Embedder(str(env["model"]), backend="cpu").embed_directory(folder, store=store, workers=0)
    idx = Index.open(store, backend="cpu")
    ids = {h.path: h.id for h in idx.search("x", k=3)}
    (folder / "page01.png").unlink()
    secret = make_image(tmp_path / "outside" / "secret.png", 64, 64, seed=9)
    (folder / "page02.png").unlink()
    (folder / "page02.png").symlink_to(secret)

    async def go(c):
        r = await c.call_tool("search", {"query": "x", "k": 3})
        errs = []
        for p in ("page01.png", "page02.png"):
            try:
                await c.read_resource(f"page://{ids[p]}")
            except MCPError as e:
                errs.append(e.message)
        return r, errs

    r, errs = call(server_for(store), go)
    by_path = {h["path"]: h for h in hits_of(r)}
    assert "no longer there" in by_path["page01.png"]["image"]
    assert "outside its root" in by_path["page02.png"]["image"]
    assert by_path["sub/page00.png"]["image"].startswith("attached")
    assert len(r.content) == 2  # one image: the page still inside its root
    assert len(errs) == 2 and "no longer there" in errs[0] and "outside its root" in errs[1]


def test_images_kept_in_memory_are_not_served_once_their_file_changes(env, tmp_path, monkeypatch):
    """The server keeps the images it sent: the same page again is the same image, but not once
    its file is deleted, swapped for a symlink leading out of its root, or rewritten and embedded
    again."""
    from nomic_memory import Embedder

    folder = _pages(tmp_path / "pages", 3, seed=60)
    store = tmp_path / "store"
    embedder = Embedder(str(env["model"]), backend="cpu")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        embedder.embed_directory(folder, store=store, workers=0)
    secret = make_image(tmp_path / "outside" / "secret.png", 64, 64, seed=9)
    monkeypatch.setattr("nomic_memory.serve.mcp.REFRESH_SECONDS", 0.0)  # each search sees the latest commit

    def images_by_path(r) -> dict:
        hits = hits_of(r)
        blocks = iter(r.content[1:])
        return {h["path"]: (jpeg(next(blocks)) if h["image"].startswith("attached") else h["image"]) for h in hits}

    async def go(c):
        first = images_by_path(await c.call_tool("search", {"query": "x", "k": 3}))
        again = images_by_path(await c.call_tool("search", {"query": "x", "k": 3}))
        (folder / "page01.png").unlink()
        (folder / "page02.png").unlink()
        (folder / "page02.png").symlink_to(secret)
        gone = images_by_path(await c.call_tool("search", {"query": "x", "k": 3}))
        make_image(folder / "sub" / "page00.png", 120, 90, seed=61)  # rewritten, then embedded again
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            embedder.embed_directory(folder, store=store, workers=0)
        after = images_by_path(await c.call_tool("search", {"query": "x", "k": 3}))
        return first, again, gone, after

    first, again, gone, after = call(server_for(store), go)
    assert all(isinstance(v, Image.Image) for v in first.values()) and len(first) == 3
    assert {p: v.tobytes() for p, v in first.items()} == {p: v.tobytes() for p, v in again.items()}
    assert "no longer there" in gone["page01.png"]
    assert "outside its root" in gone["page02.png"]
    assert gone["sub/page00.png"].tobytes() == first["sub/page00.png"].tobytes()
    assert first["sub/page00.png"].size == (200, 160)
    assert after["sub/page00.png"].size == (120, 90)  # the new file's image, not the one kept


def test_add_folder_with_progress_only_when_allowed(env, tmp_path):
    from nomic_memory import Index

    store = tmp_path / "store"
    import shutil

    shutil.copytree(env["store"], store)
    new = _pages(tmp_path / "new", 5, seed=100)
    srv = server_for(store, allow_write=True)
    progress = []

    async def go(c):
        names = {t.name for t in (await c.list_tools()).tools}
        bad = await c.call_tool("add_folder", {"folder": "relative/dir"})
        missing = await c.call_tool("add_folder", {"folder": str(tmp_path / "nope")})

        async def on_progress(done, total, message):
            progress.append((done, total, message))

        ok = await c.call_tool("add_folder", {"folder": str(new)}, progress_callback=on_progress)
        again = await c.call_tool("add_folder", {"folder": str(new)})
        found = await c.call_tool("search", {"query": "blue sky", "k": 17})
        return names, bad, missing, ok, again, found

    names, bad, missing, ok, again, found = call(srv, go)
    assert "add_folder" in names
    assert "absolute path" in error_text(bad) and "no such folder" in error_text(missing)
    rep = json.loads(ok.content[0].text)
    assert (rep["embedded"], rep["rows"], rep["failed"]) == (5, 17, [])
    assert progress and progress[0][1] == 5 and progress[-1][0] == 5
    assert json.loads(again.content[0].text)["skipped_unchanged"] == 5
    hits = hits_of(found)
    assert {h["root"] for h in hits} == {str(env["pages"]), str(new)}
    assert_same_hits(hits, Index.open(store, backend="cpu").search("blue sky", k=17), exact=True)


# ------------------------------------------------------------------ real subprocesses
def stdio_params(*args: str) -> StdioServerParameters:
    return StdioServerParameters(
        command=sys.executable, args=["-m", "nomic_memory.cli", "mcp", *args], env=cli_env(), cwd=str(REPO)
    )


@pytest.mark.slow
def test_stdio_subprocess_search_and_hostile_client(env):
    params = stdio_params("--store", str(env["store"]), "--backend", "cpu")

    async def go(c):
        tools = sorted(t.name for t in (await c.list_tools()).tools)
        results = [await c.call_tool("search", {"query": q, "k": 5}) for q in QUERIES]
        bad = [await c.call_tool(name, args) for name, args, _ in HOSTILE_CALLS]
        try:
            await c.read_resource("page://../../etc/passwd")
            res_err = None
        except MCPError as e:
            res_err = e.message
        after = await c.call_tool("search", {"query": QUERIES[0], "k": 5})
        return tools, results, bad, res_err, after

    tools, results, bad, res_err, after = call(params, go)
    assert tools == ["get_page", "search", "stats"]
    for q, r in zip(QUERIES, results):
        assert_same_hits(hits_of(r), env["idx"].search(q, k=5))  # another process: to float32 rounding
        assert len(r.content) == 6
    for (name, args, expect), r in zip(HOSTILE_CALLS, bad):
        assert expect in error_text(r), (name, args)
    assert res_err and "Traceback" not in res_err
    assert hits_of(after) == hits_of(results[0])


@pytest.mark.slow
def test_stdio_bad_store_exits_with_one_line(tmp_path):
    r = run_cli("mcp", "--store", str(tmp_path / "none"), env=cli_env(tmp_path), timeout=120)
    assert r.returncode == 1 and "Traceback" not in r.stderr
    assert r.stderr.strip().splitlines()[-1].startswith("Error: no store at")
    r = run_cli("mcp", "--transport", "http", "--host", "0.0.0.0", env=cli_env(tmp_path), timeout=120)
    assert r.returncode == 2 and "--token" in r.stderr


@pytest.mark.slow
def test_http_transport_requires_the_token(env):
    import httpx2
    from mcp.client.streamable_http import streamable_http_client

    proc = start_cli(
        "mcp",
        "--store",
        str(env["store"]),
        "--backend",
        "cpu",
        "--transport",
        "http",
        "--port",
        "0",
        "--token",
        "tok-123",
    )
    try:
        url = None
        for line in proc.stderr:
            m = re.search(r"(http://127\.0\.0\.1:\d+/mcp)", line)
            if m:
                url = m.group(1)
                break
        assert url, "no URL announced"
        r = httpx2.post(url, json={"jsonrpc": "2.0", "id": 1, "method": "tools/list"}, timeout=30)
        assert r.status_code == 401

        async def go(c):
            return await c.call_tool("search", {"query": QUERIES[1], "k": 3})

        def transport():
            client = httpx2.AsyncClient(headers={"Authorization": "Bearer tok-123"}, timeout=120)
            return streamable_http_client(url, http_client=client)

        r = call(transport(), go)
        assert_same_hits(hits_of(r), env["idx"].search(QUERIES[1], k=3))  # another process: to float32 rounding
    finally:
        proc.terminate()
        proc.wait(30)
    assert proc.returncode is not None and os.name == "posix"
    assert np.isfinite(hits_of(r)[0]["score"])
