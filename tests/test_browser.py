"""The search page in a real headless Chromium (Debian's ``chromium``, driven by Playwright).

Playwright's own browser download needs the internet; the system's Chromium is used through
``executable_path``.  The test skips (with the reason) only when no Chromium binary exists.
"""

from __future__ import annotations

import shutil
import warnings
from pathlib import Path

import pytest
from PIL import Image

from test_serve import TOKEN, Running, make_pages, query_image

REPO = Path(__file__).resolve().parents[1]
CHROMIUM = next(
    (
        p
        for p in (shutil.which("chromium"), shutil.which("chromium-browser"), "/usr/bin/chromium")
        if p and Path(p).exists()
    ),
    None,
)

LONG_NAME = "IMG_1006_city_at_night_over_the_harbour_from_the_hill.JPG"

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(CHROMIUM is None, reason="no chromium binary (apt-get install chromium)"),
]


@pytest.fixture(scope="module")
def server(tmp_path_factory, tiny_colqwen):
    from nomic_memory import Embedder
    from nomic_memory.search.index import Index
    from nomic_memory.serve.app import create_app
    from nomic_memory.serve.service import SearchService, ServeConfig

    base = tmp_path_factory.mktemp("browser")
    planted = make_pages(base / "pages")
    Image.new("RGB", (300, 200), "teal").save(base / "pages" / "sub" / LONG_NAME)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        Embedder(str(tiny_colqwen), backend="cpu").embed_directory(base / "pages", store=base / "store", workers=0)
    query_image().save(base / "query.png")
    running = Running(create_app(SearchService(Index.open(base / "store", backend="cpu"), ServeConfig(token=TOKEN))))
    yield {"url": running.url, "base": base, "planted": planted}
    running.stop()


def _shot(page, tmp_path: Path, name: str) -> Path:
    out = tmp_path / name
    page.screenshot(path=str(out), full_page=True)
    art = REPO / "test-artifacts"
    art.mkdir(exist_ok=True)
    shutil.copy(out, art / name)
    return out


@pytest.fixture
def browser():
    """A headless Chromium of its own for each test, closed after it."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=["--no-sandbox"])
        try:
            yield b
        finally:
            b.close()


def _desktop(browser, server, responses: bool = True):
    """A desktop-sized page and the list its problems go to (see ``_watch``)."""
    page = browser.new_page(viewport={"width": 1280, "height": 900})
    return page, _watch(page, server, responses)


def _watch(page, server, responses: bool = True) -> list[str]:
    """Page errors, off-site requests and (``responses``) failed responses (a favicon 404 included)."""
    problems: list[str] = []
    page.on("pageerror", lambda e: problems.append(str(e)))
    page.on(
        "request",
        lambda r: (
            problems.append(f"off-site request {r.url}")
            if not r.url.startswith(server["url"]) and not r.url.startswith(("blob:", "data:"))
            else None
        ),
    )
    if responses:
        page.on("response", lambda r: problems.append(f"{r.status} {r.url}") if r.status >= 400 else None)
    return problems


def test_search_page_end_to_end(server, browser, tmp_path):
    from playwright.sync_api import expect

    loaded = "(img) => img.complete && img.naturalWidth > 0"
    page, errors = _desktop(browser, server, responses=False)
    page.goto(server["url"] + "/#token=" + TOKEN)  # the token from the fragment
    expect(page.locator("#table-info")).to_contain_text("pages")

    # a text query: k thumbnails, all loaded
    page.fill("#q", "a scanned invoice")
    page.fill("#k", "6")
    page.click("#go")
    cards = page.locator(".card")
    expect(cards).to_have_count(6)
    for i in range(6):
        page.wait_for_function(loaded, arg=cards.nth(i).locator("img").element_handle(), timeout=30_000)
    expect(page.locator("#status")).to_contain_text("6 results")
    _shot(page, tmp_path, "serve-results.png")

    # open one: its heatmap loads; then one query token's map
    cards.first.click()
    heat = page.locator("#heatmap")
    page.wait_for_function(loaded, arg=heat.element_handle(), timeout=30_000)
    assert page.locator("#token-select option").count() > 2
    first_src = heat.get_attribute("src")
    page.select_option("#token-select", index=2)
    page.wait_for_function(
        "(s) => document.getElementById('heatmap').src !== s && document.getElementById('heatmap').naturalWidth > 0",
        arg=first_src,
        timeout=30_000,
    )
    _shot(page, tmp_path, "serve-heatmap.png")
    page.click("#viewer-close")

    # an image query through the file chooser: a planted page ranks first
    page.fill("#q", "")
    page.set_input_files("#file", str(server["base"] / "query.png"))
    expect(page.locator("#image-chip")).to_be_visible()
    page.click("#go")
    expect(page.locator("#status")).to_contain_text("the image query.png")
    assert page.locator(".card .path").first.inner_text() in server["planted"]
    page.locator(".card").first.click()
    page.wait_for_function(loaded, arg=page.locator("#heatmap").element_handle(), timeout=30_000)
    _shot(page, tmp_path, "serve-image-query.png")
    assert not errors, errors


def test_docs_render_the_operations(server, browser, tmp_path):
    """/docs: Swagger UI (served by the package) renders every operation of the OpenAPI document."""
    from playwright.sync_api import expect

    page, problems = _desktop(browser, server)
    page.goto(server["url"] + "/docs#token=" + TOKEN)
    ops = page.locator(".opblock-summary-path")
    expect(ops.first).to_be_visible(timeout=30_000)
    paths = set(ops.all_inner_texts())
    assert {"/search", "/embed", "/thumb/{row_id}", "/heatmap/{row_id}", "/tokens", "/stats"} <= {
        x.replace("\u200b", "") for x in paths
    }, paths
    assert "valid version field" not in page.content()
    _shot(page, tmp_path, "serve-docs.png")
    assert not problems, problems


def test_page_details(server, browser, tmp_path):
    """A bad filter clears the old results; an image query says the typed text was not searched;
    file names end in an ellipsis rather than breaking mid-word; the favicon is served; the title
    stays on one line at phone width; the token list hides the query prompt's padding."""
    from playwright.sync_api import expect

    page, problems = _desktop(browser, server)
    page.goto(server["url"] + "/#token=" + TOKEN)
    expect(page.locator("#table-info")).to_contain_text("pages")
    page.fill("#q", "city at night")
    page.fill("#k", "20")
    page.click("#go")
    expect(page.locator("#status")).to_contain_text("results")
    names = page.locator(".card .path .name")
    assert LONG_NAME in names.all_inner_texts()
    one_line = page.evaluate("""() => [...document.querySelectorAll('.card .path .name, .card .path .dir')]
        .map(el => { const r = document.createRange(); r.selectNodeContents(el);
                     const lines = new Set([...r.getClientRects()].map(x => Math.round(x.top)));
                     return [el.textContent, lines.size, getComputedStyle(el).textOverflow]; })""")
    assert all(lines == 1 and overflow == "ellipsis" for _, lines, overflow in one_line), one_line
    _shot(page, tmp_path, "serve-names.png")

    # the viewer's token list: words, not padding
    page.locator(".card").first.click()
    options = page.locator("#token-select option")
    expect(options.nth(1)).to_be_attached()
    texts = options.all_inner_texts()
    assert len(texts) > 2 and not any("endoftext" in t for t in texts), texts
    page.click("#viewer-close")

    # a bad filter: the error alone, not above the previous results
    page.fill("#where", "no_such_column >>> 3")
    page.click("#go")
    expect(page.locator("#status")).to_have_class("muted error")
    expect(page.locator(".card")).to_have_count(0)
    _shot(page, tmp_path, "serve-bad-filter.png")
    page.fill("#where", "")

    # an image chosen and text typed: the status says which query ran
    page.set_input_files("#file", str(server["base"] / "query.png"))
    expect(page.locator("#image-chip")).to_be_visible()
    page.fill("#q", "harbour")
    page.click("#go")
    expect(page.locator("#status")).to_contain_text("the image query.png")
    expect(page.locator("#status")).to_contain_text("“harbour” was not searched")
    assert problems == [f"400 {server['url']}/search"], problems  # the bad filter's, and no other
    icon = page.request.get(server["url"] + "/favicon.ico")
    assert icon.status == 200 and icon.headers["content-type"] == "image/x-icon"

    phone = browser.new_page(viewport={"width": 360, "height": 740}, device_scale_factor=2)
    phone.goto(server["url"] + "/#token=" + TOKEN)
    expect(phone.locator("#table-info")).to_contain_text("pages")
    title_lines = phone.evaluate("""() => { const r = document.createRange();
        r.selectNodeContents(document.querySelector('header h1'));
        return new Set([...r.getClientRects()].map(x => Math.round(x.top))).size; }""")
    assert title_lines == 1
    _shot(phone, tmp_path, "serve-phone.png")
