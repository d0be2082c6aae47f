"""The server against hostile and unlucky requests: foreign Host names (DNS rebinding), JSON
sent as something else, one bad query among many, overlong and deeply nested bodies, a table
dropped while it is served, a file swapped after embedding, many large pages decoded at once.

Real uvicorn servers on loopback ports over real stores made with the tiny models."""

from __future__ import annotations

import asyncio
import os
import shutil
import time
import warnings

import httpx
import numpy as np
import pytest
from PIL import Image

from conftest import cli_env, run_cli
from test_serve import Running, make_pages

pytestmark = pytest.mark.slow  # starts web servers


@pytest.fixture(scope="module")
def served(tmp_path_factory, tiny_colqwen):
    """A store of ``pages`` served with a short refresh interval (the table is looked for often)."""
    from nomic_memory import Embedder
    from nomic_memory.search.index import Index
    from nomic_memory.serve.app import create_app
    from nomic_memory.serve.service import SearchService, ServeConfig

    base = tmp_path_factory.mktemp("guards")
    make_pages(base / "pages")
    emb = Embedder(str(tiny_colqwen), backend="cpu")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        emb.embed_directory(base / "pages", store=base / "store", workers=0)
    cfg = ServeConfig(batch_window_ms=60, refresh_seconds=0.2, max_query_tokens=64)
    service = SearchService(Index.open(base / "store", backend="cpu", model=emb), cfg)
    running = Running(create_app(service))
    yield {"url": running.url, "base": base, "service": service, "emb": emb, "port": running.url.rsplit(":", 1)[1]}
    running.stop()


def _post(url, path, body, **kw):
    return httpx.post(url + path, json=body, timeout=120, **kw)


def _hit(served, q="blue sky"):
    return _post(served["url"], "/search", {"queries": [q], "k": 1}).json()["results"][0][0]


# ------------------------------------------------------------------ DNS rebinding, content types
def test_foreign_host_names_are_refused(served):
    url, port = served["url"], served["port"]
    hit = _hit(served)
    for host in ("evil.example", f"evil.example:{port}", "127.0.0.1.evil.example", "localhost.evil.example"):
        for method, path in (("GET", "/"), ("POST", "/search"), ("GET", f"/thumb/{hit['id']}"), ("GET", "/stats")):
            r = httpx.request(method, url + path, headers={"Host": host}, json={"queries": ["x"]})
            assert r.status_code == 400, (host, path, r.status_code)
            assert "host name" in r.json()["error"] and "--allow-host" in r.json()["error"]
    for host in (f"127.0.0.1:{port}", f"localhost:{port}", f"[::1]:{port}", "LOCALHOST", "app.localhost"):
        r = httpx.post(url + "/search", headers={"Host": host}, json={"queries": ["x"], "k": 1})
        assert r.status_code == 200, (host, r.text)


def test_allowed_names_and_wildcard_binds():
    """--host NAME and --allow-host NAME are accepted; a wildcard bind accepts IP addresses only."""
    from nomic_memory.serve.config import ServeConfig
    from nomic_memory.serve.guards import HostCheck, host_name

    assert host_name("[::1]:8000") == "::1" and host_name("Search.LAN.:80") == "search.lan"
    named = HostCheck(None, ServeConfig(host="search.lan", allow_hosts=["photos.example"]))
    assert named.accepts("search.lan") and named.accepts("photos.example") and named.accepts("127.0.0.1")
    assert not named.accepts("evil.example") and not named.accepts("192.168.1.5")
    wild = HostCheck(None, ServeConfig(host="0.0.0.0", token="t"))
    assert wild.accepts("192.168.1.5") and wild.accepts("fe80::1") and not wild.accepts("evil.example")
    assert HostCheck(None, ServeConfig(allow_hosts=["*"])).accepts("anything.example")


def test_json_only_as_application_json(served):
    """A cross-origin page can POST text/plain (or no type at all) without a preflight: refused."""
    url = served["url"]
    hit = _hit(served)
    body = b'{"queries": ["blue sky"], "k": 1}'
    for path in ("/search", f"/heatmap/{hit['id']}", "/embed"):
        for ctype in ("text/plain", "text/plain;charset=UTF-8", "application/x-www-form-urlencoded", None):
            headers = {"Content-Type": ctype} if ctype else {}
            r = httpx.post(url + path, content=body, headers=headers, timeout=60)
            assert r.status_code == 415, (path, ctype, r.status_code, r.text)
            assert "application/json" in r.json()["error"]
    r = httpx.post(url + "/search", content=body, headers={"Content-Type": "application/json; charset=utf-8"})
    assert r.status_code == 200, r.text


# ------------------------------------------------------------------ one bad request fails alone
def test_a_lone_surrogate_fails_alone(served):
    bad = b'{"queries": ["\\ud800"], "k": 2}'  # valid JSON; not encodable text

    async def many():
        async with httpx.AsyncClient(base_url=served["url"], timeout=120) as c:
            good = [c.post("/search", json={"queries": [f"scanned page {i}"], "k": 2}) for i in range(5)]
            worse = c.post("/search", content=bad, headers={"Content-Type": "application/json"})
            return await asyncio.gather(worse, *good)

    r_bad, *rs = asyncio.run(many())
    assert r_bad.status_code == 422 and "surrogate" in r_bad.json()["error"], r_bad.text
    assert [r.status_code for r in rs] == [200] * 5, [r.text for r in rs]


def test_a_failing_forward_fails_only_its_request(served, tmp_path):
    """If the shared forward fails, each request is embedded alone: only the failing one fails."""
    from nomic_memory.search.index import Index
    from nomic_memory.serve.service import SearchService, ServeConfig

    service = SearchService(
        Index.open(served["base"] / "store", backend="cpu", model=served["emb"]), ServeConfig(batch_window_ms=200)
    )
    broken = tmp_path / "notes.png"
    broken.write_text("not an image")  # decoding it fails inside the shared forward

    async def many():
        service.start()
        try:
            return await asyncio.gather(
                service.search(["blue sky"], 2, None),
                service.search([broken], 2, None),
                service.search(["a red bicycle"], 3, None),
                return_exceptions=True,
            )
        finally:
            await service.stop()

    good1, failed, good2 = asyncio.run(many())
    assert len(good1[0]) == 2 and len(good2[0]) == 3, (good1, good2)
    assert getattr(failed, "status", None) == 422 and "cannot be embedded" in str(failed), failed
    assert service.counters["batches"] == 1  # they did share a batch


def test_query_length_is_capped_in_tokens(served):
    url = served["url"]
    hit = _hit(served)
    huge = "invoice " * 12_500  # 100 kB: refused before the tokenizer sees it
    long = " ".join(f"w{i}" for i in range(150))  # under the character bound, over 64 tokens
    for q, words in ((huge, "characters"), (long, "tokens")):
        r = _post(url, "/search", {"queries": [q]})
        assert r.status_code == 422 and words in r.json()["error"] and "64 tokens" in r.json()["error"], r.text
        q = q[:20_000]  # within a URL's length
        r = httpx.get(url + "/tokens", params={"q": q}, timeout=60)
        assert r.status_code == 422 and words in r.json()["error"], r.text
        r = httpx.get(url + f"/heatmap/{hit['id']}", params={"q": q}, timeout=60)
        assert r.status_code == 422 and words in r.json()["error"], r.text
    assert _post(url, "/search", {"queries": ["blue sky"]}).status_code == 200
    assert httpx.get(url + "/stats").json()["max_query_tokens"] == 64


def test_deeply_nested_json_is_a_clear_4xx(served):
    for depth in (1_000, 100_000):
        nested = b'{"queries": ' + b"[" * depth + b"]" * depth + b"}"
        for path in ("/search", "/embed"):
            r = httpx.post(served["url"] + path, content=nested, headers={"Content-Type": "application/json"})
            assert 400 <= r.status_code < 500, (depth, path, r.status_code, r.text)
            assert "Traceback" not in r.text
    assert httpx.get(served["url"] + "/health").json() == {"status": "ok"}


def test_empty_query_one_rule_for_cli_and_server(served, tmp_path):
    from nomic_memory.search.queries import QueryError, check_text_query

    with pytest.raises(QueryError, match="empty text query"):
        check_text_query("  ")
    r = _post(served["url"], "/search", {"queries": [""]})
    assert r.status_code == 422 and "empty text query" in r.json()["error"]
    cli = run_cli("search", "", "--store", str(served["base"] / "store"), env=cli_env(tmp_path))
    assert cli.returncode == 2 and "empty text query" in cli.stderr and "Traceback" not in cli.stderr


# ------------------------------------------------------------------ the table dropped and back
def test_a_dropped_table_is_503_until_it_comes_back(tiny_colqwen, tmp_path):
    from nomic_memory import Embedder
    from nomic_memory.search.index import Index
    from nomic_memory.serve.app import create_app
    from nomic_memory.serve.service import SearchService, ServeConfig
    from nomic_memory.store.table import Store

    make_pages(tmp_path / "pages")
    emb = Embedder(str(tiny_colqwen), backend="cpu")
    emb.embed_directory(tmp_path / "pages", store=tmp_path / "store", workers=0)
    server = Running(
        create_app(
            SearchService(Index.open(tmp_path / "store", backend="cpu", model=emb), ServeConfig(refresh_seconds=0.2))
        )
    )
    try:
        url = server.url
        hit = _hit({"url": url})
        name = Store(tmp_path / "store").table_names()[0]
        Store(tmp_path / "store").drop_table(name)  # what `store drop` does
        time.sleep(0.3)
        for method, path in (
            ("POST", "/search"),
            ("GET", f"/thumb/{hit['id']}"),
            ("GET", f"/heatmap/{hit['id']}?q=x"),
            ("GET", "/health"),
        ):
            r = httpx.request(method, url + path, json={"queries": ["blue sky"]}, timeout=60)
            assert r.status_code == 503, (path, r.status_code, r.text)
            assert "no longer in the store" in r.json()["error"]
        assert httpx.get(url + "/health").json()["status"] != "ok"
        assert httpx.get(url + "/stats").json()["available"] is False
        emb.embed_directory(tmp_path / "pages", store=tmp_path / "store", workers=0)  # the table is back
        time.sleep(0.3)
        assert httpx.get(url + "/health").json() == {"status": "ok"}
        r = _post(url, "/search", {"queries": ["blue sky"], "k": 1})
        assert r.status_code == 200 and r.json()["results"][0][0]["id"] == hit["id"]
        assert httpx.get(url + f"/thumb/{hit['id']}").status_code == 200
    finally:
        server.stop()


# ------------------------------------------------------------------ pages from their own bytes only
def test_a_swapped_file_is_not_served(tiny_colqwen, tmp_path):
    """A hard link to a file outside the root swapped in for an embedded page (no path check can
    see it) is refused: the bytes no longer match the stored hash."""
    from nomic_memory import Embedder
    from nomic_memory.search.index import Index
    from nomic_memory.serve.app import create_app
    from nomic_memory.serve.service import SearchService

    make_pages(tmp_path / "pages")
    secret = tmp_path / "secret.png"
    Image.new("RGB", (224, 224), "red").save(secret)
    emb = Embedder(str(tiny_colqwen), backend="cpu")
    emb.embed_directory(tmp_path / "pages", store=tmp_path / "store", workers=0)
    server = Running(create_app(SearchService(Index.open(tmp_path / "store", backend="cpu", model=emb))))
    try:
        hits = _post(server.url, "/search", {"queries": ["blue sky"], "k": 20}).json()["results"][0]
        victim = next(h for h in hits if h["path"] == "page05.png")
        target = tmp_path / "pages" / "page05.png"
        target.unlink()
        os.link(secret, target)
        for path in (f"/thumb/{victim['id']}", f"/heatmap/{victim['id']}?q=blue%20sky"):
            r = httpx.get(server.url + path, timeout=60)
            assert r.status_code == 409, (path, r.status_code)
            assert "changed since it was embedded" in r.json()["error"]
        ok = next(h for h in hits if h["path"] == "page06.png")
        assert httpx.get(server.url + f"/thumb/{ok['id']}").status_code == 200
    finally:
        server.stop()


def test_large_pages_are_decoded_a_few_at_a_time(tiny_colqwen, tmp_path):
    """Six first requests at once for large pages: at most ``max_decodes`` decode together."""
    from nomic_memory import Embedder
    from nomic_memory.search.index import Index
    from nomic_memory.serve.app import create_app
    from nomic_memory.serve.service import SearchService, ServeConfig

    pages = tmp_path / "big"
    pages.mkdir()
    rng = np.random.default_rng(3)
    for i in range(6):
        Image.fromarray(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)).resize((2400, 2400)).save(pages / f"{i}.png")
    emb = Embedder(str(tiny_colqwen), backend="cpu")
    emb.embed_directory(pages, store=tmp_path / "store", workers=0)
    service = SearchService(Index.open(tmp_path / "store", backend="cpu", model=emb), ServeConfig(max_decodes=2))
    server = Running(create_app(service))
    try:
        hits = _post(server.url, "/search", {"queries": ["x"], "k": 6}).json()["results"][0]
        assert len(hits) == 6

        async def thumbs():
            async with httpx.AsyncClient(base_url=server.url, timeout=120) as c:
                return await asyncio.gather(*[c.get(f"/thumb/{h['id']}") for h in hits])

        rs = asyncio.run(thumbs())
        assert [r.status_code for r in rs] == [200] * 6
        assert all(max(Image.open(__import__("io").BytesIO(r.content)).size) == 384 for r in rs)
        counters = httpx.get(server.url + "/stats").json()["counters"]
        assert counters["decodes"] == 6 and 1 <= counters["max_concurrent_decodes"] <= 2, counters
    finally:
        server.stop()
    shutil.rmtree(tmp_path / "store", ignore_errors=True)
