"""The search page in a real headless Chromium (Debian's ``chromium``, driven by Playwright).

Playwright's own browser download needs the internet; the system's Chromium is used through
``executable_path``.  The test skips (with the reason) only when no Chromium binary exists.
"""

from __future__ import annotations

import shutil
import warnings
from pathlib import Path

import pytest

from test_serve import TOKEN, Running, make_pages, query_image

REPO = Path(__file__).resolve().parents[1]
CHROMIUM = next((p for p in (shutil.which("chromium"), shutil.which("chromium-browser"), "/usr/bin/chromium")
                 if p and Path(p).exists()), None)

pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(CHROMIUM is None, reason="no chromium binary (apt-get install chromium)")]


@pytest.fixture(scope="module")
def server(tmp_path_factory, tiny_colqwen):
    from nomic_memory import Embedder
    from nomic_memory.search.index import Index
    from nomic_memory.serve.app import create_app
    from nomic_memory.serve.service import SearchService, ServeConfig

    base = tmp_path_factory.mktemp("browser")
    planted = make_pages(base / "pages")
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


def test_search_page_end_to_end(server, tmp_path):
    from playwright.sync_api import expect, sync_playwright

    loaded = "(img) => img.complete && img.naturalWidth > 0"
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=["--no-sandbox"])
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 900})
            errors: list[str] = []
            page.on("pageerror", lambda e: errors.append(str(e)))
            page.on("request", lambda r: errors.append(f"off-site request {r.url}")
                    if not r.url.startswith(server["url"]) and not r.url.startswith(("blob:", "data:")) else None)
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
            page.wait_for_function("(s) => document.getElementById('heatmap').src !== s && "
                                   "document.getElementById('heatmap').naturalWidth > 0", arg=first_src, timeout=30_000)
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
        finally:
            browser.close()
