"""Documents through the whole run, on real files made here: PDF pages and TIFF frames become
rows keyed (root, path, page); each page's stored embedding equals colpali-engine's forward on the
same page drawn to a PNG; kill -9 in the middle of a document resumes with only the missing
pages; a changed or shrunk document is re-embedded and loses the rows of pages it no longer has;
bad documents are reported with file, page and reason while every good page is stored."""

from __future__ import annotations

import os
import signal
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import cli_env, finish, kill_when_rows, make_image, on_cpu, run_cli, start_cli
from nomic_memory import Embedder, Store
from nomic_memory.store.table import embedding_to_numpy

pytest.importorskip("pypdfium2")
canvas_mod = pytest.importorskip("reportlab.pdfgen.canvas")
from reportlab.lib.pagesizes import A4, letter  # noqa: E402


def write_pdf(path: Path, texts: list[str], size=A4, **kw) -> Path:
    """A PDF with vector text (and a figure) on each page, drawn by reportlab."""
    path.parent.mkdir(parents=True, exist_ok=True)
    c = canvas_mod.Canvas(str(path), pagesize=size, **kw)
    w, h = size
    for i, text in enumerate(texts):
        c.setFont("Helvetica-Bold", 40)
        c.drawString(60, h - 120, text)
        c.setFillColorRGB((i * 37 % 255) / 255, 0.3, 0.6)
        c.rect(60, 100 + 10 * i, w / 3, h / 4, stroke=0, fill=1)
        c.showPage()
    c.save()
    return path


def write_tiff(path: Path, n: int) -> Path:
    frames = [Image.fromarray(np.full((120 + 10 * i, 200, 3), 40 * i, np.uint8)) for i in range(n)]
    frames[0].save(path, save_all=True, append_images=frames[1:])
    return path


def rows(store) -> list[dict]:
    t = Store(store).only_table()
    return t.to_arrow(["path", "page", "width", "height", "embedding", "n_vectors"]).to_pylist()


@pytest.fixture()
def docs_dir(tmp_path) -> Path:
    d = tmp_path / "docs"
    write_pdf(d / "report.pdf", ["Revenue 2024", "Costs by quarter", "Outlook"])
    write_pdf(d / "sub/letter.PDF", ["Dear reader"], size=letter)
    write_tiff(d / "scan.tiff", 2)
    make_image(d / "photo.png", 160, 120)
    return d


def test_pages_are_rows_and_match_colpali_engine(tiny_colqwen, docs_dir, tmp_path):
    from colpali_engine.models import ColQwen2_5, ColQwen2_5_Processor

    from nomic_memory.ingest.documents import PageGeometry, render_page, render_size

    emb = Embedder(str(tiny_colqwen), backend="cpu")
    rep = emb.embed_directory(docs_dir, tmp_path / "store", workers=0, batch_size=2)
    assert not rep.failed and rep.discovered == 4 and rep.embedded == 3 + 1 + 2 + 1
    got = {(r["path"], r["page"]): r for r in rows(tmp_path / "store")}
    assert sorted(got) == [
        ("photo.png", 0),
        ("report.pdf", 1),
        ("report.pdf", 2),
        ("report.pdf", 3),
        ("scan.tiff", 1),
        ("scan.tiff", 2),
        ("sub/letter.PDF", 1),
    ]

    # A page's stored embedding equals colpali-engine's forward on that page drawn to a PNG at the
    # same size (the processor then has no resize to do).
    proc = ColQwen2_5_Processor.from_pretrained(str(tiny_colqwen))
    torch.manual_seed(0)
    ref_model = ColQwen2_5.from_pretrained(str(tiny_colqwen), dtype=torch.float32).eval()
    ip = emb.loaded.processor.image_processor
    for page in (1, 3):
        size = render_size(PageGeometry(page, 595, 842), ip)
        png = tmp_path / f"page{page}.png"
        render_page(docs_dir / "report.pdf", page, size).save(png)
        batch = proc.process_images([Image.open(png).convert("RGB")])
        with torch.no_grad():
            want = ref_model(**batch)[0][batch["attention_mask"][0].bool()].numpy()
        r = got[("report.pdf", page)]
        assert (r["width"], r["height"]) == size
        stored = embedding_to_numpy(r["embedding"], "colqwen", 128)
        np.testing.assert_allclose(stored, want, atol=1e-4, rtol=0)
    # The Python API gives a document as the list of its pages, in page order, the same vectors.
    pages = emb.embed_images(docs_dir / "report.pdf")
    assert isinstance(pages, list) and len(pages) == 3
    for page, e in enumerate(pages, 1):
        np.testing.assert_allclose(
            e, embedding_to_numpy(got[("report.pdf", page)]["embedding"], "colqwen", 128), atol=1e-4, rtol=0
        )

    # export: npz keys name the page, parquet has a page column
    from nomic_memory.store.export import export_store

    export_store(tmp_path / "store", "npz", tmp_path / "e.npz")
    keys = set(np.load(tmp_path / "e.npz").files)
    assert {"report.pdf#1", "report.pdf#3", "scan.tiff#2", "photo.png"} <= keys


def test_changed_and_shrunk_documents(tiny_colqwen, docs_dir, tmp_path):
    store = tmp_path / "store"
    Embedder(str(tiny_colqwen), backend="cpu").embed_directory(docs_dir, store, workers=0)
    write_pdf(docs_dir / "report.pdf", ["Revenue 2025 (restated)"])  # 3 pages -> 1, new content
    rep = Embedder(str(tiny_colqwen), backend="cpu", lazy=True).embed_directory(docs_dir, store, workers=0)
    assert rep.embedded == 1 and rep.pruned == 2 and not rep.failed
    keys = sorted((r["path"], r["page"]) for r in rows(store))
    assert [k for k in keys if k[0] == "report.pdf"] == [("report.pdf", 1)]
    (docs_dir / "report.pdf").unlink()
    rep = Embedder(str(tiny_colqwen), backend="cpu", lazy=True).embed_directory(docs_dir, store, prune=True)
    assert rep.pruned == 1 and not rep.model_loaded
    assert "report.pdf" not in {r["path"] for r in rows(store)}


@pytest.mark.slow  # the CLI on bad PDFs
def test_bad_documents_reported_good_pages_stored(tiny_colqwen, tmp_path):
    from reportlab.lib import pdfencrypt

    d = tmp_path / "docs"
    write_pdf(d / "good.pdf", ["one", "two"])
    c = canvas_mod.Canvas(str(d / "secret.pdf"), encrypt=pdfencrypt.StandardEncryption("pw", ownerPassword="o"))
    c.drawString(100, 100, "secret")
    c.showPage()
    c.save()
    (d / "corrupt.pdf").write_bytes(b"%PDF-1.4\n" + os.urandom(2000))
    (d / "empty.pdf").write_bytes(b"")
    # one damaged page among good ones: page 2's entry in the page tree points nowhere
    data = write_pdf(tmp_path / "src.pdf", ["first", "second", "third"], pageCompression=0).read_bytes()
    kids = data[data.index(b"/Kids [") + 7 : data.index(b"]", data.index(b"/Kids ["))].split(b" R")
    (d / "damaged.pdf").write_bytes(
        data.replace(b"/Kids [" + kids[0] + b" R " + kids[1].strip() + b" R", b"/Kids [" + kids[0] + b" R 999 0 R", 1)
    )
    r = run_cli("embed", d, *on_cpu(tiny_colqwen, tmp_path / "s"), "--no-progress", "--json", env=cli_env(tmp_path))
    assert r.returncode == 3, r
    report = r.json()
    failed = {f["path"]: f["reason"] for f in report["failed"]}
    assert "encrypted" in failed["secret.pdf"]
    assert "corrupt.pdf" in failed and "empty.pdf" in failed
    assert "damaged.pdf#2" in failed and "damaged.pdf#1" not in failed  # file, page and reason
    stored = sorted((x["path"], x["page"]) for x in rows(tmp_path / "s"))
    assert ("good.pdf", 1) in stored and ("good.pdf", 2) in stored
    assert ("damaged.pdf", 1) in stored and ("damaged.pdf", 3) in stored and ("damaged.pdf", 2) not in stored
    assert all(p not in {"secret.pdf", "corrupt.pdf", "empty.pdf"} for p, _ in stored)
    for name in ("secret.pdf", "corrupt.pdf"):
        assert name in r.stderr  # named, one line each, on stderr


@pytest.mark.slow
def test_kill9_mid_document_then_resume(tiny_colqwen, tmp_path):
    d = tmp_path / "docs"
    n = 24
    write_pdf(d / "long.pdf", [f"page {i}" for i in range(1, n + 1)])
    store = tmp_path / "store"
    env = cli_env(tmp_path)
    args = ["embed", d, *on_cpu(tiny_colqwen, store), "--batch-size", "2", "--workers", "0", "--no-progress"]
    proc = start_cli(*args, env=env)
    w, seen = kill_when_rows(proc, store, n // 4, n)
    w.join()
    res = finish(proc)
    assert res.returncode == -signal.SIGKILL, (seen, str(res))
    before = len(rows(store))
    assert 0 < before < n
    again = run_cli(*args, "--json", env=env)
    assert again.returncode == 0, again
    rep = again.json()
    assert rep["skipped_unchanged"] == before and rep["embedded"] == n - before
    keys = sorted((r["path"], r["page"]) for r in rows(store))
    assert keys == [("long.pdf", p) for p in range(1, n + 1)]  # every page exactly once
