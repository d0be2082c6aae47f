"""Tests for nomic_memory.ingest.documents and the HEIC/AVIF/TIFF-page additions to images.

Every file is written in the test by the library that makes such files (Pillow, reportlab,
pypdfium2, pillow-heif) and read back through the real code path (PDFium, libheif, libavif).
"""

from __future__ import annotations

import json
import pickle
import subprocess
import sys
import textwrap
import threading
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, features

from nomic_memory.errors import InputError
from nomic_memory.ingest.batching import visual_tokens
from nomic_memory.ingest.documents import (
    DocumentError,
    PageGeometry,
    close_cached_document,
    is_document_path,
    is_input_path,
    list_pages,
    load_page,
    may_have_pages,
    render_page,
    render_size,
)
from nomic_memory.ingest.images import ImageError, discover_images, load_image, oriented_size
from nomic_memory.model.collate import prepare_page
from nomic_memory.model.tiny import SIZES, build_processor

pdfium = pytest.importorskip("pypdfium2")
canvas_mod = pytest.importorskip("reportlab.pdfgen.canvas")
from reportlab.lib.pagesizes import A4, letter  # noqa: E402

RED = (255, 0, 0)
BLUE = (0, 0, 255)
WHITE = (255, 255, 255)
INCH = 72.0


@pytest.fixture(scope="module")
def processor():
    """A real ColQwen2.5 processor of the medium test size (768 visual tokens at most)."""
    return build_processor("colqwen", SIZES["medium"])


@pytest.fixture(autouse=True)
def _fresh_cache():
    close_cached_document()
    yield
    close_cached_document()


def _arr(img: Image.Image) -> np.ndarray:
    return np.asarray(img, dtype=np.float64)


def _reportlab_pdf(path: Path, pages: list[dict], **kw) -> Path:
    """Pages as dicts: size, rotate (a /Rotate set by PDFium on the portrait page), square (a
    black square at the top-left), text."""
    c = canvas_mod.Canvas(str(path), **kw)
    for spec in pages:
        w, h = spec.get("size", A4)
        c.setPageSize((w, h))
        if spec.get("square"):
            c.setFillColorRGB(0, 0, 0)
            c.rect(0, h - w / 4, w / 4, w / 4, stroke=0, fill=1)  # top-left, side w/4
        if spec.get("text"):
            c.setFont("Helvetica-Bold", 48)
            c.setFillColorRGB(0, 0, 0)
            c.drawString(INCH, h / 2, spec["text"])
        c.showPage()
    c.save()
    rotations = {i: spec["rotate"] for i, spec in enumerate(pages) if spec.get("rotate")}
    if rotations:
        # reportlab's own page rotation also swaps the media box; PDFium sets /Rotate alone.
        doc = pdfium.PdfDocument(str(path))
        for index, degrees in rotations.items():
            page = doc[index]
            page.set_rotation(degrees)
            page.close()
        rotated = path.with_suffix(".rot.pdf")
        doc.save(str(rotated))
        doc.close()
        rotated.replace(path)
    return path


def _pillow_pdf(path: Path) -> Path:
    """Three solid-colour pages of different sizes, as Pillow writes them (72 dpi)."""
    first = Image.new("RGB", (200, 300), RED)
    rest = [Image.new("RGB", (300, 200), BLUE), Image.new("RGB", (150, 150), (0, 160, 0))]
    first.save(path, save_all=True, append_images=rest, resolution=72.0)
    return path


# --------------------------------------------------------------------------- names
def test_names():
    assert is_document_path("a/B.PDF") and is_document_path("x.pdf")
    assert not is_document_path("x.pdf.txt") and not is_document_path("x.tif")
    assert may_have_pages("x.TIFF") and may_have_pages("x.Pdf") and not may_have_pages("x.png")


# --------------------------------------------------------------------------- listing
def test_list_pages_pillow_pdf(tmp_path):
    pages = list_pages(_pillow_pdf(tmp_path / "p.pdf"))
    assert [(g.page, round(g.width), round(g.height)) for g in pages] == [(1, 200, 300), (2, 300, 200), (3, 150, 150)]
    assert all(g.error is None for g in pages)


def test_list_pages_sizes_and_rotation(tmp_path):
    path = _reportlab_pdf(
        tmp_path / "r.pdf",
        [{"size": A4}, {"size": letter}, {"size": A4, "rotate": 90}, {"size": letter, "rotate": 180}],
    )
    got = [(g.page, round(g.width, 1), round(g.height, 1)) for g in list_pages(path)]
    assert got == [(1, 595.3, 841.9), (2, 612.0, 792.0), (3, 841.9, 595.3), (4, 612.0, 792.0)]


def test_list_pages_does_not_render(tmp_path):
    """Listing a long document costs no rasterising: far less time than drawing its pages."""
    import time

    path = _reportlab_pdf(tmp_path / "long.pdf", [{"size": letter, "text": f"p{i}"} for i in range(300)])
    t = time.perf_counter()
    pages = list_pages(path)
    listing = time.perf_counter() - t
    assert len(pages) == 300 and pages[-1].page == 300
    t = time.perf_counter()
    for g in pages[:30]:
        render_page(path, g.page, (612, 792))
    drawing_30 = time.perf_counter() - t
    assert listing < drawing_30  # 300 sizes cost less than 30 drawings


def test_single_frame_images_are_not_documents(tmp_path):
    for name in ("one.tif", "one.png"):
        Image.new("RGB", (20, 30), RED).save(tmp_path / name)
        assert list_pages(tmp_path / name) == []


# --------------------------------------------------------------------------- sizes
def test_render_size_is_the_processor_target(processor):
    ip = processor.image_processor
    w, h = render_size(PageGeometry(1, 595.28, 841.89), ip)
    assert w % 28 == 0 and h % 28 == 0 and h > w
    assert visual_tokens(w, h, ip) <= SIZES["medium"].max_visual_tokens
    assert visual_tokens(w, h, ip) == (w // 28) * (h // 28)
    # Huge and tiny pages land on the processor's bounds, not on their point size.
    big = render_size(PageGeometry(1, 200 * INCH, 200 * INCH), ip)
    assert big[0] == big[1] and big[0] * big[1] <= SIZES["medium"].max_visual_tokens * 784
    small = render_size(PageGeometry(1, 10, 10), ip)
    assert small[0] * small[1] >= SIZES["medium"].min_visual_tokens * 784
    with pytest.raises(ValueError):
        render_size(PageGeometry(2, 0.0, 0.0, "page cannot be read"), ip)


def test_extreme_aspect_page_is_padded_not_refused(tmp_path, processor):
    path = _reportlab_pdf(tmp_path / "strip.pdf", [{"size": (20000, 20)}])
    (g,) = list_pages(path)
    w, h = render_size(g, processor.image_processor)  # smart_resize alone raises above 200:1
    assert w / h <= 200
    img = render_page(path, 1, (w, h))
    assert img.size == (w, h)
    a = _arr(img)
    assert a.min() == 255  # a white page on white padding, nothing else


# --------------------------------------------------------------------------- rendering
def test_render_solid_pages_exact_size(tmp_path):
    path = _pillow_pdf(tmp_path / "p.pdf")
    for page, colour, size in [(1, RED, (112, 168)), (2, BLUE, (168, 112)), (3, (0, 160, 0), (56, 56))]:
        img = render_page(path, page, size)
        assert img.mode == "RGB" and img.size == size
        mean = _arr(img).reshape(-1, 3).mean(axis=0)
        assert np.abs(mean - colour).max() < 8, (page, mean)


def test_render_content_position_and_rotation(tmp_path):
    path = _reportlab_pdf(
        tmp_path / "sq.pdf", [{"size": A4, "square": True}, {"size": A4, "square": True, "rotate": 90}]
    )
    upright = _arr(render_page(path, 1, (280, 392)).convert("L"))
    assert upright[:60, :60].mean() < 10  # the square (70 px) in the top-left corner
    assert upright[-100:, -100:].min() == 255 and upright[:60, -100:].min() == 255
    # /Rotate 90 turns the page clockwise: the top-left corner goes to the top-right.
    turned = _arr(render_page(path, 2, (392, 280)).convert("L"))
    assert turned[:60, -60:].mean() < 10 and turned[:60, :100].min() == 255


def test_render_matches_pdfium_full_scale_render(tmp_path, processor):
    """Drawing straight at the target size looks like drawing large and downscaling."""
    path = _reportlab_pdf(
        tmp_path / "t.pdf",
        [{"size": letter, "text": "Hello PDF", "square": True}, {"size": A4, "text": "Turned", "rotate": 270}],
    )
    for g in list_pages(path):
        size = render_size(g, processor.image_processor)
        ours = render_page(path, g.page, size)
        doc = pdfium.PdfDocument(str(path))
        try:
            page = doc[g.page - 1]
            big = page.render(scale=4).to_pil().convert("RGB")
            page.close()
        finally:
            doc.close()
        ref = big.resize(size, Image.Resampling.LANCZOS)
        diff = np.abs(_arr(ours) - _arr(ref))
        assert ours.size == size
        assert diff.mean() < 4, diff.mean()
        assert (_arr(ours.convert("L")) < 128).sum() > 200  # the text and square are there


def test_prepared_page_has_the_planned_tokens(tmp_path, processor):
    """The driver plans with render_size/visual_tokens before drawing; the processor agrees."""
    ip = processor.image_processor
    path = _reportlab_pdf(
        tmp_path / "t.pdf", [{"size": letter, "text": "x"}, {"size": (300, 20)}, {"size": A4, "rotate": 90}]
    )
    for g in list_pages(path):
        w, h = render_size(g, ip)
        prepared = prepare_page(processor, path, g.page, (w, h))
        assert prepared.image_grid_thw.tolist() == [1, h // 14, w // 14]
        n_image_tokens = int((prepared.input_ids == processor.image_token_id).sum())
        assert n_image_tokens == visual_tokens(w, h, ip)


def test_form_field_values_are_drawn(tmp_path):
    """A filled form field shows its value, as in a viewer (PDFium's form environment)."""
    path = tmp_path / "form.pdf"
    c = canvas_mod.Canvas(str(path), pagesize=letter)
    c.acroForm.textfield(
        name="name", value="FILLEDFILLED", x=50, y=600, width=400, height=60, fontSize=40, borderWidth=0, fillColor=None
    )
    c.showPage()
    c.save()
    a = _arr(render_page(path, 1, (612, 792)).convert("L"))
    assert (a[132:192, 50:450] < 128).sum() > 500  # the value's glyphs
    assert a[300:, :].min() == 255


def test_load_page_dispatches(tmp_path):
    pdf = _pillow_pdf(tmp_path / "p.pdf")
    assert load_page(pdf, 2, (84, 56)).size == (84, 56)
    with pytest.raises(ValueError):
        load_page(pdf, 1)
    png = tmp_path / "a.png"
    Image.new("RGB", (40, 30), RED).save(png)
    assert load_page(png, 0).size == (40, 30) and load_page(png, 0, (56, 28)).size == (56, 28)


def test_cache_reopens_a_changed_file(tmp_path):
    path = tmp_path / "c.pdf"
    Image.new("RGB", (100, 100), RED).save(path)
    assert _arr(render_page(path, 1, (28, 28)))[..., 0].mean() > 240
    Image.new("RGB", (120, 100), BLUE).save(path)  # new size and mtime: not the cached one
    assert list_pages(path)[0].width == 120
    assert _arr(render_page(path, 1, (28, 28)))[..., 2].mean() > 240


def test_cached_document_closes_quietly_at_exit(tmp_path):
    """A decode worker exits with its last document open: no pypdfium2 warning on stderr."""
    path = _pillow_pdf(tmp_path / "p.pdf")
    script = f"from nomic_memory.ingest.documents import render_page; render_page({str(path)!r}, 1, (56, 84))"
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0 and "still open" not in out.stderr, out.stderr


def test_threads_share_pdfium_safely(tmp_path):
    a = _reportlab_pdf(tmp_path / "a.pdf", [{"text": f"A{i}", "square": i % 2 == 0} for i in range(6)])
    b = _pillow_pdf(tmp_path / "b.pdf")
    jobs = [(a, p) for p in range(1, 7)] + [(b, p) for p in range(1, 4)]
    expected = {j: _arr(render_page(j[0], j[1], (140, 196))) for j in jobs}
    got: dict = {}
    errors: list = []

    def work(seq):
        try:
            for _ in range(3):
                for j in seq:
                    got.setdefault(j, []).append(_arr(render_page(j[0], j[1], (140, 196))))
        except Exception as exc:  # noqa: BLE001 - surfaced below
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(jobs[i::2] + jobs,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    for j, arrays in got.items():
        assert all(np.array_equal(x, expected[j]) for x in arrays)


# --------------------------------------------------------------------------- bad documents
def test_encrypted_pdf(tmp_path):
    from reportlab.lib import pdfencrypt

    path = _reportlab_pdf(
        tmp_path / "e.pdf",
        [{"text": "secret"}],
        encrypt=pdfencrypt.StandardEncryption("userpw", ownerPassword="ownerpw"),
    )
    with pytest.raises(DocumentError, match="encrypted PDF"):
        list_pages(path)
    with pytest.raises(DocumentError, match="encrypted PDF"):
        render_page(path, 1, (56, 56))


def test_pdf_without_user_password_renders(tmp_path):
    """Owner-password-only PDFs open in every viewer: they are embedded."""
    from reportlab.lib import pdfencrypt

    path = _reportlab_pdf(
        tmp_path / "o.pdf",
        [{"square": True}],
        encrypt=pdfencrypt.StandardEncryption("", ownerPassword="ownerpw", canCopy=0),
    )
    assert len(list_pages(path)) == 1
    assert _arr(render_page(path, 1, (280, 392)).convert("L"))[:60, :60].mean() < 10


def test_corrupt_empty_and_missing(tmp_path):
    bad = tmp_path / "bad.pdf"
    bad.write_bytes(b"%PDF-1.4\n" + bytes(range(256)) * 20)
    with pytest.raises(DocumentError, match="corrupt or not a PDF") as e:
        list_pages(bad)
    assert e.value.path == bad and e.value.page is None and isinstance(e.value, InputError)
    empty = tmp_path / "empty.pdf"
    empty.write_bytes(b"")
    with pytest.raises(DocumentError, match="empty file"):
        list_pages(empty)
    with pytest.raises(DocumentError, match="file not found"):
        render_page(tmp_path / "nope.pdf", 1, (28, 28))
    folder = tmp_path / "dir.pdf"
    folder.mkdir()
    with pytest.raises(DocumentError, match="not a regular file"):
        list_pages(folder)


def test_zero_pages(tmp_path):
    doc = pdfium.PdfDocument.new()
    doc.save(str(tmp_path / "zero.pdf"))
    doc.close()
    with pytest.raises(DocumentError, match="no pages"):
        list_pages(tmp_path / "zero.pdf")


def test_one_damaged_page_among_good_ones(tmp_path):
    good = _reportlab_pdf(tmp_path / "g.pdf", [{"square": True, "size": letter}] * 3, pageCompression=0)
    data = good.read_bytes()
    kids = data[data.index(b"/Kids [") + 7 : data.index(b"]", data.index(b"/Kids ["))].split(b" R")
    second = kids[1].strip()  # e.g. b"4 0"
    damaged = tmp_path / "d.pdf"
    damaged.write_bytes(
        data.replace(b"/Kids [" + kids[0] + b" R " + second + b" R", b"/Kids [" + kids[0] + b" R 999 0 R", 1)
    )
    pages = list_pages(damaged)
    assert [g.page for g in pages] == [1, 2, 3]
    assert pages[1].error and pages[0].error is None and pages[2].error is None
    for ok in (1, 3):
        assert _arr(render_page(damaged, ok, (168, 224)).convert("L"))[:30, :30].mean() < 10
    with pytest.raises(DocumentError, match="damaged page") as e:
        render_page(damaged, 2, (168, 224))
    assert e.value.page == 2
    again = pickle.loads(pickle.dumps(e.value))  # comes back from decode workers pickled
    assert type(again) is DocumentError and again.page == 2 and str(again) == str(e.value)
    with pytest.raises(DocumentError, match="no page 4") as e:
        render_page(damaged, 4, (28, 28))
    assert e.value.page == 4


def test_render_size_is_bounded_before_allocating(tmp_path):
    path = _pillow_pdf(tmp_path / "p.pdf")
    with pytest.raises(DocumentError, match="exceeds limit"):
        render_page(path, 1, (100_000, 100_000))  # 30 GB if it were allocated
    with pytest.raises(DocumentError, match="invalid render size"):
        render_page(path, 1, (0, 10))


def test_huge_page_renders_at_target_size_in_bounded_memory(tmp_path, processor):
    """A 200 x 200 inch page costs its target size, not 14400^2 (or 40000^2 at 200 dpi) pixels."""
    path = _reportlab_pdf(tmp_path / "poster.pdf", [{"size": (200 * INCH, 200 * INCH), "square": True}])
    (g,) = list_pages(path)
    assert (g.width, g.height) == (14400.0, 14400.0)
    size = render_size(g, processor.image_processor)
    script = textwrap.dedent(f"""
        import json, resource, numpy as np
        from nomic_memory.ingest.documents import render_page
        render_page({str(path)!r}, 1, (56, 56))  # load PDFium and fonts first
        before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        img = render_page({str(path)!r}, 1, {size!r})
        after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        a = np.asarray(img.convert("L"))
        q = img.size[0] // 4
        print(json.dumps([list(img.size), (after - before) // 1024, int(a[: q - 2, : q - 2].mean()),
                          int(a[q + 2:, q + 2:].min())]))
    """)
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    got_size, grew_mb, square, rest = json.loads(out.stdout)
    assert tuple(got_size) == size
    assert grew_mb < 50, f"RSS grew {grew_mb} MB (the full-scale bitmap would be 600 MB)"
    assert square < 10 and rest == 255


# --------------------------------------------------------------------------- TIFF pages
def test_multipage_tiff(tmp_path):
    path = tmp_path / "scan.TIFF"
    frames = [
        Image.new("RGB", (40, 60), RED),
        Image.new("RGBA", (70, 30), (0, 0, 255, 0)),
        Image.new("L", (30, 30), 80),
    ]
    frames[0].save(path, save_all=True, append_images=frames[1:])
    pages = list_pages(path)
    assert [(g.page, g.width, g.height) for g in pages] == [(1, 40, 60), (2, 70, 30), (3, 30, 30)]
    assert load_image(path, page=1).getpixel((0, 0)) == RED
    p2 = load_image(path, page=2)  # transparent frame: flattened onto white
    assert p2.size == (70, 30) and p2.getpixel((5, 5)) == WHITE
    assert load_image(path, page=3).getpixel((5, 5)) == (80, 80, 80)
    assert load_image(path).getpixel((0, 0)) == RED  # page 0: the file as one image
    assert load_page(path, 3, (56, 56)).size == (56, 56)
    with pytest.raises(ImageError, match="no page 4") as e:
        load_image(path, page=4)
    assert e.value.page == 4


def test_tiff_page_orientation(tmp_path):
    path = tmp_path / "o.tif"
    base = Image.new("RGB", (60, 30), BLUE)
    exif = Image.Exif()
    exif[0x0112] = 6
    base.save(path, save_all=True, append_images=[base], exif=exif)
    pages = list_pages(path)
    img = load_image(path, page=2)
    assert img.size == (30, 60)  # turned once, not twice
    assert [(g.width, g.height) for g in pages] == [(30, 60), (30, 60)]


def test_corrupt_tiff_page(tmp_path):
    path = tmp_path / "t.tif"
    Image.new("RGB", (200, 200), RED).save(path, save_all=True, append_images=[Image.new("RGB", (200, 200), BLUE)])
    data = path.read_bytes()
    path.write_bytes(data[: len(data) * 3 // 4])  # the second frame's pixels are cut
    assert load_image(path, page=1).getpixel((0, 0)) == RED
    with pytest.raises(ImageError) as e:
        load_image(path, page=2)
    assert e.value.page == 2


# --------------------------------------------------------------------------- HEIC / AVIF
def _oriented_source() -> Image.Image:
    """60 x 30: red left half, blue right half (so any rotation is visible)."""
    img = Image.new("RGB", (60, 30), BLUE)
    img.paste(RED, (0, 0, 30, 30))
    return img


def _expected_orientation_6(tmp_path) -> Image.Image:
    exif = Image.Exif()
    exif[0x0112] = 6
    _oriented_source().save(tmp_path / "ref.png", exif=exif)
    return load_image(tmp_path / "ref.png")


def test_heic_orientation_alpha_and_ten_bit(tmp_path):
    pillow_heif = pytest.importorskip("pillow_heif")
    expected = _expected_orientation_6(tmp_path)
    assert expected.size == (30, 60)
    exif = Image.Exif()
    exif[0x0112] = 6
    pillow_heif.from_pillow(_oriented_source()).save(tmp_path / "o.heic", exif=exif.tobytes(), quality=-1)
    got = load_image(tmp_path / "o.heic")
    assert got.mode == "RGB" and got.size == (30, 60)
    assert np.abs(_arr(got) - _arr(expected)).mean() < 6

    rgba = Image.new("RGBA", (40, 30), (255, 0, 0, 0))
    rgba.paste((0, 0, 255, 255), (0, 0, 10, 10))
    pillow_heif.from_pillow(rgba).save(tmp_path / "a.HEIF", quality=-1)
    got = load_image(tmp_path / "a.HEIF")
    assert np.abs(_arr(got)[20, 20] - WHITE).max() <= 3  # transparent: white, not red/black
    assert np.abs(_arr(got)[2, 2] - BLUE).max() <= 6

    ramp = np.linspace(0, 1023, 64 * 48).reshape(48, 64).astype(np.uint16)
    rgb16 = np.repeat((ramp << 6)[..., None], 3, axis=2)  # 10 significant bits in 16
    pillow_heif.from_bytes(mode="RGB;16", size=(64, 48), data=rgb16.tobytes()).save(tmp_path / "deep.heic", quality=-1)
    assert pillow_heif.open_heif(tmp_path / "deep.heic").info["bit_depth"] == 10
    got = _arr(load_image(tmp_path / "deep.heic"))[..., 1]
    assert got.dtype == np.float64 and got[0, 0] <= 3 and got[-1, -1] >= 252
    assert np.abs(got - ramp / 1023 * 255).mean() < 3  # rescaled, not clipped to white


def test_avif_orientation_and_alpha(tmp_path):
    if not features.check("avif"):
        pytest.skip("this Pillow has no AVIF support")
    expected = _expected_orientation_6(tmp_path)
    exif = Image.Exif()
    exif[0x0112] = 6
    _oriented_source().save(tmp_path / "o.avif", exif=exif, quality=100)
    got = load_image(tmp_path / "o.avif")
    assert got.mode == "RGB" and got.size == (30, 60)
    assert np.abs(_arr(got) - _arr(expected)).mean() < 6

    rgba = Image.new("RGBA", (40, 30), (255, 0, 0, 0))
    rgba.paste((0, 0, 255, 255), (0, 0, 10, 10))
    rgba.save(tmp_path / "a.AVIF", quality=100)
    got = _arr(load_image(tmp_path / "a.AVIF"))
    assert np.abs(got[20, 20] - WHITE).max() <= 3 and np.abs(got[2, 2] - BLUE).max() <= 8


def test_discovery_finds_heic_and_avif(tmp_path):
    pillow_heif = pytest.importorskip("pillow_heif")
    pillow_heif.from_pillow(_oriented_source()).save(tmp_path / "b.HEIC", quality=-1)
    _oriented_source().save(tmp_path / "a.avif")
    (tmp_path / "c.pdf").write_bytes(b"%PDF")
    assert [p.name for p in discover_images(tmp_path)] == ["a.avif", "b.HEIC"]
    assert [p.name for p in discover_images(tmp_path, match=is_input_path)] == ["a.avif", "b.HEIC", "c.pdf"]
    # Discovery registered the HEIC opener: header reads (the scan's sizes) work.
    with Image.open(tmp_path / "b.HEIC") as im:
        assert im.size == (60, 30)


def test_oriented_size_agrees_with_load_image(tmp_path):
    """The scan's header-only size is the decoded size, whatever turned the image (EXIF 6)."""
    pillow_heif = pytest.importorskip("pillow_heif")
    exif = Image.Exif()
    exif[0x0112] = 6
    src = _oriented_source()
    src.save(tmp_path / "o.jpg", exif=exif)
    src.save(tmp_path / "o.tif", exif=exif)  # Pillow's TIFF reader turns it itself
    src.save(tmp_path / "o.png", exif=exif)
    pillow_heif.from_pillow(src).save(tmp_path / "o.heic", exif=exif.tobytes(), quality=-1)  # libheif does
    names = ["o.jpg", "o.tif", "o.png", "o.heic"]
    if features.check("avif"):
        src.save(tmp_path / "o.avif", exif=exif)
        names.append("o.avif")
    for name in names:
        with Image.open(tmp_path / name) as im:
            assert oriented_size(im) == load_image(tmp_path / name).size == (30, 60), name


def test_long_pdf_streams_in_constant_memory(tmp_path):
    """Rendering every page of a long PDF one by one does not accumulate pages in memory."""
    path = _reportlab_pdf(
        tmp_path / "long.pdf", [{"size": letter, "text": f"Page {i}", "square": True} for i in range(600)]
    )
    script = textwrap.dedent(f"""
        import resource
        from nomic_memory.ingest.documents import list_pages, render_page
        pages = list_pages({str(path)!r})
        for g in pages[:50]:
            render_page({str(path)!r}, g.page, (616, 784))
        warm = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        for g in pages[50:]:
            render_page({str(path)!r}, g.page, (616, 784))
        print(len(pages), (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - warm) // 1024)
    """)
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    n, grew_mb = map(int, out.stdout.split())
    assert n == 600 and grew_mb < 20
