"""``nomic-memory serve``: a real uvicorn server on a loopback port, real stores, tiny models.

The servers run in this process (``uvicorn.Server`` in a thread) so results can be compared with
:class:`Index` on the same store; the CLI's own start-up (option checks, URL announcement) is
tested as a subprocess.
"""

from __future__ import annotations

import asyncio
import base64
import io
import re
import threading
import time
import warnings
from pathlib import Path

import httpx
import numpy as np
import pytest
from PIL import Image

from conftest import assert_same_hits, cli_env, run_cli, start_cli
from test_object_store import BUCKET, s3  # noqa: F401  (the moto S3 server fixture)

pytestmark = pytest.mark.slow  # starts CLI processes, servers or clusters

TOKEN = "s3cret-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
TEXTS = ["a red bicycle", "quarterly revenue table", "x", "the cat sat on the mat", "invoice 2024", "blue sky"]
PAGE = 224  # the tiny model's largest page: an 8 x 8 grid of 28-pixel patches


def query_image() -> Image.Image:
    """A smooth gradient (nothing like the noise pages): the planted region."""
    yy, xx = np.mgrid[0 : PAGE // 2, 0 : PAGE // 2]
    arr = np.stack([xx * 255 // (PAGE // 2), yy * 255 // (PAGE // 2), np.full_like(xx, 128)], -1)
    return Image.fromarray(arr.astype(np.uint8))


def make_pages(folder: Path) -> dict[str, int]:
    """Noise pages, four of them with the query image planted in one quadrant: name -> quadrant."""
    folder.mkdir(parents=True)
    rng = np.random.default_rng(7)
    planted = {}
    for i in range(10):
        page = Image.fromarray(rng.integers(0, 256, (PAGE, PAGE if i < 4 or i % 3 else 168, 3), dtype=np.uint8))
        name = f"page{i:02d}.png"
        if i < 4:
            quad = i % 4
            page.paste(query_image(), ((quad % 2) * PAGE // 2, (quad // 2) * PAGE // 2))
            planted[name] = quad
        page.save(folder / name)
    (folder / "sub").mkdir()
    Image.fromarray(rng.integers(0, 256, (120, 200, 3), dtype=np.uint8)).save(folder / "sub" / "wide.jpg")
    return planted


def png_b64(img: Image.Image) -> str:
    buf = io.BytesIO()
    img.save(buf, "PNG")
    return base64.b64encode(buf.getvalue()).decode()


class Running:
    """A uvicorn server in a thread on a free loopback port."""

    def __init__(self, app):
        import uvicorn

        self.server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning"))
        self.thread = threading.Thread(target=self.server.run, daemon=True)
        self.thread.start()
        deadline = time.time() + 60
        while not self.server.started:
            if time.time() > deadline or not self.thread.is_alive():
                raise RuntimeError("uvicorn did not start")
            time.sleep(0.02)
        port = self.server.servers[0].sockets[0].getsockname()[1]
        self.url = f"http://127.0.0.1:{port}"

    def stop(self):
        self.server.should_exit = True
        self.thread.join(30)


@pytest.fixture(scope="module")
def env(tmp_path_factory, tiny_colqwen, tiny_biqwen):
    from nomic_memory import Embedder
    from nomic_memory.search.index import Index
    from nomic_memory.serve.app import create_app
    from nomic_memory.serve.service import SearchService, ServeConfig

    base = tmp_path_factory.mktemp("serve")
    planted = make_pages(base / "pages")
    out = {"base": base, "planted": planted, "pages": base / "pages"}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for kind, model in (("col", tiny_colqwen), ("bi", tiny_biqwen)):
            emb = Embedder(str(model), backend="cpu")
            emb.embed_directory(base / "pages", store=base / f"{kind}_store", workers=0)
            out[f"{kind}_emb"] = emb
            out[f"{kind}_idx"] = Index.open(base / f"{kind}_store", backend="cpu")  # the reference
    cfg = ServeConfig(token=TOKEN, batch_window_ms=40, max_body_bytes=2 << 20, max_image_pixels=1_000_000)
    out["col_service"] = SearchService(Index.open(base / "col_store", backend="cpu"), cfg)
    servers = {
        "col": Running(create_app(out["col_service"])),
        "bi": Running(create_app(SearchService(Index.open(base / "bi_store", backend="cpu"), ServeConfig()))),
    }
    out.update(col=servers["col"].url, bi=servers["bi"].url)
    yield out
    for s in servers.values():
        s.stop()


def post(url, path, json=None, **kw):
    return httpx.post(url + path, json=json, headers=kw.pop("headers", AUTH), timeout=120, **kw)


# ------------------------------------------------------------------ search
def test_search_equals_index_search(env):
    r = post(env["col"], "/search", {"queries": TEXTS[:2], "k": 5})
    assert r.status_code == 200, r.text
    res = r.json()["results"]
    assert len(res) == 2 and all(len(hs) == 5 for hs in res)
    for q, got in zip(TEXTS[:2], res):
        assert_same_hits(got, env["col_idx"].search(q, k=5))
    # Nomic (single-vector) table too
    r = httpx.post(env["bi"] + "/search", json={"queries": ["blue sky"], "k": 4}, timeout=120)
    assert_same_hits(r.json()["results"][0], env["bi_idx"].search("blue sky", k=4))


def test_image_query_json_and_multipart(env):
    q = query_image()
    want = env["col_idx"].search(q, k=4)
    assert want[0].path in env["planted"]  # the planted pages rank first
    r = post(env["col"], "/search", {"images": [png_b64(q)], "k": 4})
    assert r.status_code == 200, r.text
    assert_same_hits(r.json()["results"][0], want)
    buf = io.BytesIO()
    q.save(buf, "PNG")
    r = httpx.post(
        env["col"] + "/search",
        headers=AUTH,
        timeout=120,
        data={"k": "4", "queries": ["blue sky"]},
        files={"images": ("q.png", buf.getvalue(), "image/png")},
    )
    assert r.status_code == 200, r.text
    text_hits, image_hits = r.json()["results"]  # texts first, then images
    assert_same_hits(text_hits, env["col_idx"].search("blue sky", k=4))
    assert_same_hits(image_hits, want)


def test_where_filter(env):
    r = post(env["col"], "/search", {"queries": ["blue sky"], "k": 20, "where": "path LIKE 'sub/%'"})
    assert r.status_code == 200, r.text
    assert [h["path"] for h in r.json()["results"][0]] == ["sub/wide.jpg"]
    r = post(env["col"], "/search", {"queries": ["blue sky"], "where": "no_such_column >>> 3"})
    assert r.status_code == 400 and "error" in r.json() and "Traceback" not in r.text


def test_concurrent_requests_share_one_forward_and_scan(env):
    before = httpx.get(env["col"] + "/stats", headers=AUTH).json()["counters"]
    ks = [3, 5, 2, 7, 4, 6]
    texts = [f"scanned page {c}" for c in "abcdef"]  # equal token counts: one forward can take them all

    async def many():
        async with httpx.AsyncClient(base_url=env["col"], headers=AUTH, timeout=120) as c:
            return await asyncio.gather(*[c.post("/search", json={"queries": [t], "k": k}) for t, k in zip(texts, ks)])

    rs = asyncio.run(many())
    after = httpx.get(env["col"] + "/stats", headers=AUTH).json()["counters"]
    for r, t, k in zip(rs, texts, ks):
        assert r.status_code == 200, r.text
        assert_same_hits(r.json()["results"][0], env["col_idx"].search(t, k=k))  # each its own k
    assert after["requests"] - before["requests"] == len(texts)
    batches = after["batches"] - before["batches"]
    assert batches < len(texts), after  # requests shared batches...
    assert after["scans"] - before["scans"] == batches  # ...one scan per batch (one filter)...
    assert after["forwards"] - before["forwards"] == batches  # ...and one text forward per batch
    assert after["max_batch_requests"] >= 2


@pytest.mark.parametrize("exact", [False, True])
def test_mixed_lengths_and_filters_in_one_batch(env, exact):
    """Different lengths, k and filters arriving together: each gets its own answer (bit-identical
    scores with exact batching, where each query length gets its own forward)."""
    env["col_service"].config.exact_batching = exact
    reqs = [({"queries": [t], "k": 3}, t, None) for t in TEXTS]
    reqs += [
        ({"queries": ["blue sky"], "k": 2, "where": "page = 0 AND width < 200"}, "blue sky", "page = 0 AND width < 200")
    ]

    async def many():
        async with httpx.AsyncClient(base_url=env["col"], headers=AUTH, timeout=120) as c:
            return await asyncio.gather(*[c.post("/search", json=b) for b, _, _ in reqs])

    before = httpx.get(env["col"] + "/stats", headers=AUTH).json()["counters"]
    try:
        rs = asyncio.run(many())
    finally:
        env["col_service"].config.exact_batching = False
    after = httpx.get(env["col"] + "/stats", headers=AUTH).json()["counters"]
    assert after["batches"] - before["batches"] < len(reqs)
    for r, (b, t, where) in zip(rs, reqs):
        assert r.status_code == 200, r.text
        want = env["col_idx"].search(t, k=b["k"], where=where)
        assert_same_hits(r.json()["results"][0], want, exact=exact)
        if where:
            assert all(env["col_idx"].row(h.id)["width"] < 200 for h in want) and want


def test_a_slow_client_blocks_no_one(env):
    """A client that sends half a body and stalls holds only its own connection."""
    import socket

    host, port = env["col"].removeprefix("http://").split(":")
    slow = socket.create_connection((host, int(port)))
    try:
        body = b'{"queries": ["blue sky"], "k": 3}'
        slow.sendall(
            b"POST /search HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
            b"Authorization: Bearer "
            + TOKEN.encode()
            + b"\r\nContent-Length: "
            + str(len(body)).encode()
            + b"\r\n\r\n"
            + body[:10]
        )
        t = time.perf_counter()
        r = post(env["col"], "/search", {"queries": ["blue sky"], "k": 3})
        assert r.status_code == 200 and time.perf_counter() - t < 20
        slow.sendall(body[10:])  # the slow one still gets its answer
        slow.settimeout(60)
        reply = b""
        while b'"results"' not in reply:
            chunk = slow.recv(1 << 16)
            assert chunk, reply
            reply += chunk
        assert reply.startswith(b"HTTP/1.1 200")
    finally:
        slow.close()


# ------------------------------------------------------------------ embed (vLLM /pooling shape)
def test_embed_matches_embedder(env):
    img = Image.open(env["pages"] / "page01.png")
    body = {
        "input": ["a red bicycle", {"type": "image_url", "image_url": {"url": "data:image/png;base64," + png_b64(img)}}]
    }
    for kind in ("col", "bi"):
        headers = AUTH if kind == "col" else {}
        r = httpx.post(env[kind] + "/embed", json=body, headers=headers, timeout=120)
        assert r.status_code == 200, r.text
        d = r.json()
        assert d["object"] == "list" and d["model"] and d["usage"]["prompt_tokens"] > 0
        assert [x["index"] for x in d["data"]] == [0, 1] and all(x["object"] == "pooling" for x in d["data"])
        emb = env[f"{kind}_emb"]
        want_t = emb.embed_queries(["a red bicycle"])[0]
        want_i = emb.embed_images([env["pages"] / "page01.png"])[0]
        got_t, got_i = (np.asarray(x["data"], dtype=np.float32) for x in d["data"])
        assert got_t.shape == want_t.shape and got_i.shape == want_i.shape
        assert got_t.ndim == (2 if kind == "col" else 1)  # per token for ColNomic, pooled for Nomic
        np.testing.assert_allclose(got_t, want_t, atol=1e-5, rtol=0)
        np.testing.assert_allclose(got_i, want_i, atol=1e-5, rtol=0)
    r = post(
        env["col"], "/embed", {"messages": [{"role": "user", "content": [{"type": "text", "text": "a red bicycle"}]}]}
    )
    np.testing.assert_allclose(
        np.asarray(r.json()["data"][0]["data"], np.float32),
        env["col_emb"].embed_queries(["a red bicycle"])[0],
        atol=1e-5,
    )


# ------------------------------------------------------------------ heatmaps
def test_heatmap_finds_the_planted_region(env):
    q = query_image()
    hits = post(env["col"], "/search", {"images": [png_b64(q)], "k": 10}).json()["results"][0]
    checked = 0
    for h in hits:
        if h["path"] not in env["planted"]:
            continue
        r = post(env["col"], f"/heatmap/{h['id']}", {"image": png_b64(q), "mode": "json"})
        assert r.status_code == 200, r.text
        grid = np.asarray(r.json()["grid"])
        gh, gw = grid.shape
        assert (gh, gw) == (8, 8)
        row, col = np.unravel_index(grid.argmax(), grid.shape)
        assert int(col >= gw // 2) + 2 * int(row >= gh // 2) == env["planted"][h["path"]], (h["path"], grid.round(2))
        # the page with the map overlaid, at the processed size
        r = post(env["col"], f"/heatmap/{h['id']}", {"image": png_b64(q)})
        assert r.headers["content-type"] == "image/png"
        assert Image.open(io.BytesIO(r.content)).size == (PAGE, PAGE)
        checked += 1
    assert checked == len(env["planted"])


def test_heatmap_from_stored_vectors_per_token(env):
    """The map is the query-token x patch dot products of the stored vectors; per token, and max."""
    from nomic_memory.serve import heatmap as hm

    hit = post(env["col"], "/search", {"queries": ["a red bicycle"], "k": 1}).json()["results"][0][0]
    toks = httpx.get(env["col"] + "/tokens", params={"q": "a red bicycle"}, headers=AUTH).json()["tokens"]
    idx = env["col_idx"]
    qemb = idx.embed_queries(["a red bicycle"])[0]
    assert len(toks) == qemb.shape[0]
    row = idx.row(hit["id"])
    maps = hm.similarity_maps(
        qemb, idx.row_embedding(hit["id"]), hm.layout(idx.model.processor, row["width"], row["height"])
    )
    r = httpx.get(env["col"] + f"/heatmap/{hit['id']}", params={"q": "a red bicycle", "mode": "json"}, headers=AUTH)
    np.testing.assert_allclose(r.json()["grid"], maps.max(axis=0), atol=1e-6)
    r = httpx.get(
        env["col"] + f"/heatmap/{hit['id']}",
        params={"q": "a red bicycle", "mode": "json", "query_token": 2},
        headers=AUTH,
    )
    np.testing.assert_allclose(r.json()["grid"], maps[2], atol=1e-6)
    r = httpx.get(env["col"] + f"/heatmap/{hit['id']}", params={"q": "a red bicycle", "query_token": 999}, headers=AUTH)
    assert r.status_code == 400 and "query_token" in r.json()["error"]
    r = httpx.get(env["col"] + f"/heatmap/{hit['id']}", params={"q": "a red bicycle", "mode": "heat"}, headers=AUTH)
    assert r.status_code == 200 and Image.open(io.BytesIO(r.content)).size[0] > 0


def test_single_vector_table_has_no_heatmap(env):
    hit = httpx.post(env["bi"] + "/search", json={"queries": ["x"], "k": 1}).json()["results"][0][0]
    r = httpx.get(env["bi"] + f"/heatmap/{hit['id']}", params={"q": "x"})
    assert r.status_code == 409 and "single-vector" in r.json()["error"]


# ------------------------------------------------------------------ thumbnails and safety
def test_thumbnail_cached_beside_the_store(env):
    hit = post(env["col"], "/search", {"queries": ["x"], "k": 1}).json()["results"][0][0]
    r = httpx.get(env["col"] + f"/thumb/{hit['id']}", headers=AUTH)
    assert r.status_code == 200 and r.headers["content-type"] == "image/jpeg"
    assert max(Image.open(io.BytesIO(r.content)).size) <= 384
    cached = list((env["base"] / "col_store" / "_nomic_memory_thumbs").rglob(f"{hit['id']}-*.jpg"))
    assert len(cached) == 1 and cached[0].read_bytes() == r.content


@pytest.mark.parametrize(
    "bad",
    [
        "../../etc/passwd",
        "..%2F..%2Fetc%2Fpasswd",
        "%2e%2e%2f%2e%2e%2fetc%2fpasswd",
        "0123456789abcdef",
        "DEADBEEFDEADBEEF",
        "a" * 64,
    ],
)
def test_traversal_and_unknown_ids_are_404(env, bad):
    for path in (f"/thumb/{bad}", f"/heatmap/{bad}?q=x"):
        r = httpx.get(env["col"] + path, headers=AUTH)
        assert r.status_code == 404, (path, r.status_code, r.text)
        assert "root:" not in r.text and "Traceback" not in r.text
        assert r.headers["content-type"].startswith("application/json")


def test_symlink_out_of_the_root_is_refused(tmp_path):
    from nomic_memory.serve.thumbs import PageUnavailable, page_file

    (tmp_path / "root").mkdir()
    (tmp_path / "secret.png").write_bytes(b"x")
    (tmp_path / "root" / "link.png").symlink_to(tmp_path / "secret.png")
    with pytest.raises(PageUnavailable, match="outside its root"):
        page_file({"root": str(tmp_path / "root"), "path": "link.png"})
    with pytest.raises(PageUnavailable, match="outside its root"):
        page_file({"root": str(tmp_path / "root"), "path": "../secret.png"})


def test_auth(env):
    for method, path in (
        ("POST", "/search"),
        ("GET", "/stats"),
        ("POST", "/embed"),
        ("GET", "/thumb/0123456789abcdef"),
        ("GET", "/heatmap/0123456789abcdef?q=x"),
        ("GET", "/tokens?q=x"),
        ("GET", "/openapi.json"),
    ):
        for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": TOKEN}):
            r = httpx.request(method, env["col"] + path, headers=headers, json={"queries": ["x"]})
            assert r.status_code == 401, (method, path, headers, r.status_code)
            assert r.headers["www-authenticate"] == "Bearer" and "token" in r.json()["error"]
    assert httpx.get(env["col"] + "/health").json() == {"status": "ok"}
    page = httpx.get(env["col"] + "/")
    assert page.status_code == 200 and "<form" in page.text and "https://" not in page.text  # no CDN
    assert httpx.get(env["col"] + "/static/app.js").status_code == 200
    assert httpx.get(env["col"] + "/openapi.json", headers=AUTH).json()["paths"]["/search"]
    # OpenAPI docs at /docs: Swagger UI served from the package, never from a CDN; the schema it
    # loads stays behind the token (the page passes it from the URL fragment)
    docs = httpx.get(env["col"] + "/docs")
    assert docs.status_code == 200 and "/docs-assets/swagger-ui-bundle.js" in docs.text
    assert "http://" not in docs.text and "https://" not in docs.text
    for asset in ("swagger-ui-bundle.js", "swagger-ui.css"):
        assert httpx.get(env["col"] + "/docs-assets/" + asset).status_code == 200
    # CORS is off unless asked for
    r = httpx.options(
        env["col"] + "/search", headers={"Origin": "http://evil.example", "Access-Control-Request-Method": "POST"}
    )
    assert "access-control-allow-origin" not in r.headers


def test_bad_requests_are_clear_json_errors(env):
    cases = [
        (b"{not json", 400, "malformed JSON"),
        (b"", 400, "empty request body"),
        (b"[1, 2]", 422, "JSON object"),
        (b'{"queries": "x"}', 422, "list of strings"),
        (b'{"queries": ["x"], "k": 0}', 422, "k must be"),
        (b'{"queries": ["x"], "k": "ten"}', 422, "k must be"),
        (b'{"queries": []}', 422, "no query"),
        (b'{"images": ["%%%not-base64"]}', 400, "base64"),
        (b'{"images": ["aGVsbG8="]}', 400, "not an image"),
        (b'{"queries": ["x"], "colour": 1}', 422, "unknown field"),
    ]
    for body, status, words in cases:
        r = httpx.post(env["col"] + "/search", content=body, headers={**AUTH, "Content-Type": "application/json"})
        assert r.status_code == status, (body, r.status_code, r.text)
        assert words in r.json()["error"] and "Traceback" not in r.text
    r = httpx.post(env["col"] + "/embed", json={"input": [{"type": "audio"}]}, headers=AUTH)
    assert r.status_code == 422 and "input[0]" in r.json()["error"]


def test_oversized_uploads_are_413(env):
    # bytes: over the 2 MiB body cap, by Content-Length and by a chunked body with none
    big = {"images": [base64.b64encode(b"\0" * (3 << 20)).decode()]}
    r = post(env["col"], "/search", big)
    assert r.status_code == 413 and "larger than" in r.json()["error"]

    def chunks():
        for _ in range(40):
            yield b"x" * (100 << 10)

    r = httpx.post(env["col"] + "/search", content=chunks(), headers={**AUTH, "Content-Type": "application/json"})
    assert r.status_code == 413, r.text
    # pixels: a small file that decodes to 4 Mpx (a decompression bomb in miniature) is refused
    buf = io.BytesIO()
    Image.new("L", (2000, 2000)).save(buf, "PNG")
    assert len(buf.getvalue()) < 100_000
    r = post(env["col"], "/search", {"images": [base64.b64encode(buf.getvalue()).decode()]})
    assert r.status_code == 413 and "too large" in r.json()["error"]
    assert httpx.get(env["col"] + "/health").status_code == 200  # the server is fine


def test_object_storage_store(
    s3,  # noqa: F811  (the fixture)
    env,
    tiny_colqwen,
    tmp_path,
    monkeypatch,
):
    """An s3:// store: search, heatmaps, and thumbnails cached locally (not in the bucket)."""
    from nomic_memory.search.index import Index
    from nomic_memory.serve.app import create_app
    from nomic_memory.serve.service import SearchService
    from nomic_memory.store.table import Store

    _, options = s3
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    uri = f"s3://{BUCKET}/serve-store"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        env["col_emb"].embed_directory(env["pages"], store=Store(uri, storage_options=options), workers=0)
    running = Running(create_app(SearchService(Index.open(Store(uri, storage_options=options), backend="cpu"))))
    try:
        r = httpx.post(running.url + "/search", json={"queries": ["blue sky"], "k": 4}, timeout=120)
        assert r.status_code == 200, r.text
        hits = r.json()["results"][0]
        assert_same_hits(hits, env["col_idx"].search("blue sky", k=4))  # same rows as the local store
        r = httpx.get(running.url + f"/thumb/{hits[0]['id']}")
        assert r.status_code == 200 and r.headers["content-type"] == "image/jpeg"
        assert len(list((tmp_path / "cache" / "nomic-memory" / "thumbs").rglob("*.jpg"))) == 1
        r = httpx.get(running.url + f"/heatmap/{hits[0]['id']}", params={"q": "blue sky"})
        assert r.status_code == 200 and r.headers["content-type"] == "image/png"
        assert httpx.get(running.url + "/stats").json()["store"] == uri
    finally:
        running.stop()


# ------------------------------------------------------------------ the CLI
def test_cli_refuses_open_bind_without_token(tmp_path):
    r = run_cli("serve", "--store", str(tmp_path / "nowhere"), "--host", "0.0.0.0", env=cli_env(tmp_path))
    assert r.returncode == 2, r
    assert "--token" in r.stderr and "--no-auth" in r.stderr
    r = run_cli("serve", "--store", str(tmp_path / "nowhere"), env=cli_env(tmp_path))
    assert r.returncode == 1 and "no store" in r.stderr  # a clear message, no traceback
    assert "Traceback" not in r.stderr


@pytest.mark.slow
def test_cli_serves_with_token(env, tmp_path):
    proc = start_cli(
        "serve",
        "--store",
        str(env["base"] / "col_store"),
        "--port",
        "0",
        "--token",
        TOKEN,
        "--backend",
        "cpu",
        env=cli_env(tmp_path),
    )
    try:
        line = ""
        deadline = time.time() + 180
        while time.time() < deadline:
            line = proc.stderr.readline()
            if "Serving" in line or not line:
                break
        m = re.search(r"http://127\.0\.0\.1:(\d+)/", line)
        assert m, line + proc.stderr.read()
        url = f"http://127.0.0.1:{m.group(1)}"
        assert httpx.get(url + "/stats").status_code == 401
        r = httpx.post(url + "/search", json={"queries": ["blue sky"], "k": 3}, headers=AUTH, timeout=120)
        assert_same_hits(r.json()["results"][0], env["col_idx"].search("blue sky", k=3))
    finally:
        proc.terminate()
        proc.wait(30)


def test_document_pages_render(tmp_path):
    """Thumbnails/heatmaps of document pages: page N of a PDF or a multi-page TIFF (1-based)."""
    from reportlab.lib.pagesizes import A6
    from reportlab.pdfgen import canvas

    from nomic_memory.serve.thumbs import PageUnavailable, load_page

    c = canvas.Canvas(str(tmp_path / "doc.pdf"), pagesize=A6)
    for i in range(2):
        c.setFillColorRGB(i, 0, 1 - i)
        c.rect(0, 0, A6[0], A6[1], fill=1)
        c.showPage()
    c.save()
    frames = [Image.new("RGB", (60, 40), col) for col in ("red", "lime", "blue")]
    frames[0].save(tmp_path / "scan.tif", save_all=True, append_images=frames[1:])
    root = str(tmp_path)
    w, h = (round(v) for v in A6)
    p2 = load_page({"root": root, "path": "doc.pdf", "page": 2, "width": w, "height": h})
    assert max(p2.size) == 1024 and abs(p2.width / p2.height - w / h) < 0.01
    assert load_page({"root": root, "path": "doc.pdf", "page": 2, "width": w, "height": h}, (112, 168)).size == (
        112,
        168,
    )
    assert p2.getpixel((5, 5))[0] > 200 and p2.getpixel((5, 5))[2] < 50  # the second (red) page
    assert load_page({"root": root, "path": "scan.tif", "page": 3}).getpixel((1, 1)) == (0, 0, 255)
    for path, page in (("doc.pdf", 3), ("scan.tif", 4)):
        with pytest.raises(PageUnavailable):
            load_page({"root": root, "path": path, "page": page, "width": w, "height": h})


def test_pdf_pages_thumbnails_and_heatmaps(env, tmp_path):
    """Rows of a PDF's pages (page 1..N): thumbnails drawn from the PDF, heatmaps at each page's
    processed size (portrait and landscape pages have transposed grids)."""
    from reportlab.lib.pagesizes import A6, landscape
    from reportlab.pdfgen import canvas

    from nomic_memory.search.index import Index
    from nomic_memory.serve.app import create_app
    from nomic_memory.serve.service import SearchService

    (tmp_path / "docs").mkdir()
    c = canvas.Canvas(str(tmp_path / "docs" / "report.pdf"), pagesize=A6)
    for i in range(2):
        c.setPageSize(A6 if i == 0 else landscape(A6))
        c.drawString(20, 100, f"page {i + 1}: invoice total")
        c.showPage()
    c.save()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        env["col_emb"].embed_directory(tmp_path / "docs", store=tmp_path / "store", workers=0)
    running = Running(create_app(SearchService(Index.open(tmp_path / "store", backend="cpu"))))
    try:
        hits = httpx.post(running.url + "/search", json={"queries": ["invoice"], "k": 5}, timeout=120).json()[
            "results"
        ][0]
        assert sorted(h["page"] for h in hits) == [1, 2]
        grids = {}
        for h in hits:
            r = httpx.get(running.url + f"/heatmap/{h['id']}", params={"q": "invoice", "mode": "json"})
            assert r.status_code == 200, r.text
            grids[h["page"]] = tuple(r.json()["grid_size"])
            png = httpx.get(running.url + f"/heatmap/{h['id']}", params={"q": "invoice"})
            assert Image.open(io.BytesIO(png.content)).size == tuple(r.json()["size"])
            thumb = Image.open(io.BytesIO(httpx.get(running.url + f"/thumb/{h['id']}").content))
            assert (thumb.width < thumb.height) == (h["page"] == 1)  # portrait page 1, landscape page 2
        assert grids[1] == grids[2][::-1]
    finally:
        running.stop()


def test_a_running_server_sees_rows_embedded_meanwhile(tiny_colqwen, tmp_path):
    """`embed` runs committing to the store while the server runs: their rows are searchable
    within the refresh interval, without restarting the server."""
    import shutil

    from nomic_memory import Embedder
    from nomic_memory.search.index import Index
    from nomic_memory.serve.app import create_app
    from nomic_memory.serve.service import SearchService, ServeConfig

    pages = tmp_path / "pages"
    make_pages(pages)
    first = sorted(p for p in pages.rglob("*.png"))
    later = tmp_path / "later"
    later.mkdir()
    for p in first[2:]:
        shutil.move(str(p), later / p.name)
    store = tmp_path / "store"
    emb = Embedder(str(tiny_colqwen), backend="cpu")
    emb.embed_directory(pages, store, workers=0)
    server = Running(
        create_app(SearchService(Index.open(store, backend="cpu", model=emb), ServeConfig(refresh_seconds=0.2)))
    )
    try:
        before = post(server.url, "/search", {"queries": ["page"], "k": 100}).json()["results"][0]
        assert len(before) == 3  # two pages and sub/wide.jpg
        for p in later.iterdir():  # another "run" adds rows to the same store
            shutil.move(str(p), pages / p.name)
        added = Embedder(str(tiny_colqwen), backend="cpu").embed_directory(pages, store, workers=0)
        assert added.embedded == len(first) - 2
        time.sleep(0.3)
        after = post(server.url, "/search", {"queries": ["page"], "k": 100}).json()["results"][0]
        assert {h["path"] for h in after} == {p.name for p in first} | {"sub/wide.jpg"}
    finally:
        server.stop()
