"""Hostile inputs cost one file, never the run: renderer processes with limits, one checked open,
one hash per document, library warnings in one line, out of memory in one line.

Every PDF that makes PDFium allocate without bound is opened only in a subprocess whose address
space is capped (``RLIMIT_AS``): on code that draws pages in-process, the test fails (the
subprocess aborts) instead of taking the machine's memory.
"""

from __future__ import annotations

import json
import logging
import os
import struct
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from conftest import REPO, cli_env, make_image
from nomic_memory.errors import InputError
from pdf_files import JBIG2_COLOUR, garbage, image_pdf, jbig2_stream, nested_forms_pdf

GiB = 1024**3
# Put first in every subprocess that may open a poisoned PDF: a cap on the whole process.
CAP = "import resource; resource.setrlimit(resource.RLIMIT_AS, ({cap}, {cap}))\n"


def _py(code: str, *, cap: int | None = 3 * GiB, timeout: float = 120, env: dict | None = None):
    script = (CAP.format(cap=cap) if cap else "") + textwrap.dedent(code)
    return subprocess.run(
        [sys.executable, "-c", script], cwd=REPO, env=env or cli_env(), capture_output=True, text=True, timeout=timeout
    )


def _env(**limits: str) -> dict:
    env = cli_env()
    env.update(limits)
    return env


def _good_pdf(path: Path, pages: int = 2) -> Path:
    Image.new("RGB", (200, 260), (255, 0, 0)).save(
        path, save_all=True, append_images=[Image.new("RGB", (200, 260), (0, 0, 255))] * (pages - 1)
    )
    return path


# ---------------------------------------------------------------- a runaway page
def test_page_that_allocates_without_bound_fails_alone(tmp_path):
    """The nested-forms PDF exceeds its renderer's memory limit: that page is reported with the
    reason, the renderer is replaced, and the next pages (and the server's page loader) work."""
    bomb = tmp_path / "bomb.pdf"
    bomb.write_bytes(nested_forms_pdf())
    good = _good_pdf(tmp_path / "good.pdf")
    r = _py(
        f"""
        from nomic_memory.ingest.documents import DocumentError, render_page
        from nomic_memory.ingest import renderer
        from nomic_memory.serve.thumbs import PageUnavailable, load_page
        red = render_page({str(good)!r}, 1, (56, 70)).getpixel((20, 20))
        print("before", red[0] > 240 and red[2] < 20)
        try:
            render_page({str(bomb)!r}, 1, (200, 200))
        except DocumentError as e:
            print("error", e.page, e.reason)
        blue = render_page({str(good)!r}, 2, (56, 70)).getpixel((20, 20))
        print("after", blue[2] > 240 and blue[0] < 20)
        try:
            load_page({{"root": {str(tmp_path)!r}, "path": "bomb.pdf", "page": 1, "width": 200, "height": 200}})
        except PageUnavailable as e:
            print("thumb", e)
        print("restarts", renderer.pool().restarts)
    """,
        env=_env(NOMIC_MEMORY_RENDER_MEMORY_MB="400"),
    )
    assert r.returncode == 0, r.stderr[-3000:]
    lines = r.stdout.splitlines()
    assert lines[0] == "before True"
    assert lines[1] == "error 1 page rendering exceeded the memory limit (400 MiB)"
    assert lines[2] == "after True"
    assert lines[3].startswith("thumb ") and "exceeded the memory limit" in lines[3]
    assert lines[4] == "restarts 2"


def test_page_that_draws_for_too_long_is_stopped(tmp_path):
    bomb = tmp_path / "slow.pdf"
    bomb.write_bytes(nested_forms_pdf())
    r = _py(
        f"""
        import time
        from nomic_memory.ingest.documents import DocumentError, render_page
        t = time.monotonic()
        try:
            render_page({str(bomb)!r}, 1, (200, 200))
        except DocumentError as e:
            print(e.reason)
        print(time.monotonic() - t < 20)
    """,
        cap=6 * GiB,
        env=_env(NOMIC_MEMORY_RENDER_MEMORY_MB="3000", NOMIC_MEMORY_RENDER_TIMEOUT="0.5"),
    )
    assert r.returncode == 0, r.stderr[-3000:]
    assert r.stdout.splitlines() == ["page rendering took longer than 0.5 s", "True"]


@pytest.mark.slow
def test_run_stores_everything_but_the_poisoned_page(tiny_biqwen, tmp_path):
    """A whole run, capped: the good image and the good PDF's pages are stored, the poisoned page
    is reported and remembered, and the rerun reports it again without drawing it."""
    root = tmp_path / "docs"
    make_image(root / "photo.png", 64, 48)
    _good_pdf(root / "good.pdf")
    (root / "bomb.pdf").write_bytes(nested_forms_pdf())
    store = tmp_path / "store"
    r = _py(
        f"""
        import json, resource
        from nomic_memory import Embedder, Store
        emb = Embedder({str(tiny_biqwen)!r}, backend="cpu")
        with open("/proc/self/status") as f:
            vm = next(int(l.split()[1]) * 1024 for l in f if l.startswith("VmSize:"))
        resource.setrlimit(resource.RLIMIT_AS, (vm + 3 * 1024**3, vm + 3 * 1024**3))  # room for a run, not for the bomb
        runs = [emb.embed_directory({str(root)!r}, store={str(store)!r}, workers=0) for _ in range(2)]
        rows = Store({str(store)!r}).open_table(runs[0].table).stored_keys({str(root)!r})
        print(json.dumps({{"runs": [[r.embedded, r.failed] for r in runs], "rows": sorted(map(list, rows))}}))
    """,
        cap=64 * GiB,
        timeout=300,
        env=_env(NOMIC_MEMORY_RENDER_MEMORY_MB="400"),
    )
    assert r.returncode == 0, r.stderr[-3000:]
    out = json.loads(r.stdout.splitlines()[-1])
    (embedded1, failed1), (embedded2, failed2) = out["runs"]
    assert embedded1 == 3 and failed1 == [["bomb.pdf#1", "page rendering exceeded the memory limit (400 MiB)"]]
    assert embedded2 == 0 and len(failed2) == 1 and "failed before" in failed2[0][1]
    assert out["rows"] == [["good.pdf", 1], ["good.pdf", 2], ["photo.png", 0]]


# ---------------------------------------------------------------- damaged images inside a page
def test_damaged_jbig2_and_jpx_images_are_reported(tmp_path, caplog):
    from nomic_memory.ingest.documents import render_page
    from nomic_memory.ingest.pdf_images import jbig2_damaged

    files = {
        "jbig2-bad.pdf": image_pdf(b"JBIG2Decode", garbage(), colour=JBIG2_COLOUR),
        "jbig2-cut.pdf": image_pdf(b"JBIG2Decode", jbig2_stream()[:60], colour=JBIG2_COLOUR),
        "jbig2-ok.pdf": image_pdf(b"JBIG2Decode", jbig2_stream(), colour=JBIG2_COLOUR),
        "jpx-bad.pdf": image_pdf(b"JPXDecode", garbage()),
    }
    for name, data in files.items():
        (tmp_path / name).write_bytes(data)
    assert jbig2_damaged(garbage()) and not jbig2_damaged(jbig2_stream())
    drawn = {}
    with caplog.at_level(logging.WARNING, logger="nomic_memory"):
        for name in files:
            drawn[name] = np.asarray(render_page(tmp_path / name, 1, (64, 64)).convert("L"))
    said = {Path(r.getMessage().split(" (page")[0]).name: r.getMessage() for r in caplog.records}
    assert said.keys() == {"jbig2-bad.pdf", "jbig2-cut.pdf", "jpx-bad.pdf"}
    assert said["jbig2-bad.pdf"].endswith("(page 1): damaged JBIG2 image (drawn blank)")
    assert said["jpx-bad.pdf"].endswith("(page 1): damaged JPX (JPEG 2000) image (drawn blank)")
    assert drawn["jbig2-ok.pdf"][:, :28].mean() < 10 and drawn["jbig2-ok.pdf"][:, 36:].mean() > 245
    assert drawn["jbig2-bad.pdf"].min() == 255  # what PDFium draws: nothing, hence the report


# ---------------------------------------------------------------- multi-page TIFFs
def _read_bytes() -> int:
    with open("/proc/self/io") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("rchar:"))


def test_tiff_pages_read_the_file_once(tmp_path):
    """Decoding every page of a 40-page TIFF reads a few times the file's size: hashed once, each
    frame once, plus the frame headers walked to reach it (it read all of it for every page:
    40 times the file)."""
    from nomic_memory.ingest.decode import DecodeTask, decode_image
    from nomic_memory.ingest.images import hash_file
    from nomic_memory.model.tiny import SIZES, build_processor

    ip = build_processor("colqwen", SIZES["tiny"]).image_processor
    path = tmp_path / "scan.tif"
    frames = [Image.fromarray(np.full((300, 300, 3), i * 6, np.uint8)) for i in range(40)]
    frames[0].save(path, save_all=True, append_images=frames[1:])
    size = path.stat().st_size
    digest, _ = hash_file(path)
    before = _read_bytes()
    means = [np.asarray(decode_image(DecodeTask(path, p, digest), ip)).mean() for p in range(1, 41)]
    read = _read_bytes() - before
    assert means == [float(i * 6) for i in range(40)]
    assert read < 6 * size, f"read {read / size:.1f} times the file"
    os.utime(path, ns=(1, 1))  # a new version: hashed again, and still the planned bytes
    assert np.asarray(decode_image(DecodeTask(path, 3, digest), ip)).mean() == 12.0
    frames[0].save(path, save_all=True, append_images=frames[2:])  # changed: its pages are refused
    with pytest.raises(InputError, match="changed while the run"):
        decode_image(DecodeTask(path, 2, digest), ip)


# ---------------------------------------------------------------- a FIFO swapped in after the scan
def test_fifo_swapped_in_after_the_scan_never_blocks(tmp_path):
    """A file whose header the scan could not read (so decoding probes it) replaced by a FIFO: the
    decode refuses it at once (a fresh process: a blocking open fails the test by its timeout)."""
    jpg = tmp_path / "garbage.jpg"
    tif = tmp_path / "scan.tif"
    r = _py(
        f"""
        import os
        from pathlib import Path
        from nomic_memory.errors import InputError
        from nomic_memory.ingest.decode import DecodeTask, decode_image
        from nomic_memory.ingest.documents import list_pages
        from nomic_memory.model.tiny import SIZES, build_processor
        ip = build_processor("colqwen", SIZES["tiny"]).image_processor
        for p in ({str(jpg)!r}, {str(tif)!r}):
            os.mkfifo(p)
        for call in (lambda: decode_image(DecodeTask(Path({str(jpg)!r})), ip),
                     lambda: decode_image(DecodeTask(Path({str(tif)!r}), 2, "0" * 64), ip),
                     lambda: list_pages({str(tif)!r})):
            try:
                call()
            except InputError as e:
                print(e.reason)
    """,
        cap=None,
        timeout=300,
    )  # importing torch takes a minute on a loaded machine; a hang, for ever
    assert r.returncode == 0, r.stderr[-3000:]
    assert r.stdout.splitlines() == ["not a regular file: a FIFO (named pipe)"] * 3


@pytest.mark.slow
def test_embed_images_on_a_fifo_never_blocks(tiny_biqwen, tmp_path):
    fifo = tmp_path / "pipe.jpg"
    os.mkfifo(fifo)
    r = _py(
        f"""
        from nomic_memory import Embedder
        from nomic_memory.errors import InputError
        try:
            Embedder({str(tiny_biqwen)!r}, backend="cpu").embed_images({str(fifo)!r})
        except InputError as e:
            print(e.reason)
    """,
        cap=None,
        timeout=120,
    )
    assert r.returncode == 0, r.stderr[-3000:]
    assert r.stdout.splitlines() == ["not a regular file: a FIFO (named pipe)"]


# ---------------------------------------------------------------- library warnings
def test_library_warnings_are_one_line_per_file(tmp_path):
    """Pillow's warnings (two raw lines each, with a site-packages path) become one line per file,
    naming it, in the product's words; a library's error is one line too."""
    big = tmp_path / "big.jpg"
    Image.new("L", (9600, 9600), 128).save(big, quality=50)  # 92 Mpx: over Pillow's warning limit
    big2 = tmp_path / "big2.jpg"
    big2.write_bytes(big.read_bytes())
    exif = Image.Exif()
    exif[0x010E] = "x" * 40
    data = bytearray(exif.tobytes())
    at = data.find(struct.pack(">HH", 0x010E, 2))
    data[at + 4 : at + 8] = struct.pack(">I", 4000)  # the description's length: past the end
    pal = tmp_path / "exif.jpg"
    Image.new("RGB", (32, 32), (0, 128, 0)).save(pal, exif=bytes(data))
    r = _py(f"""
        import logging
        logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(message)s")
        from nomic_memory.ingest.images import image_size, load_image
        from nomic_memory.ingest.listing import inspect_file
        from pathlib import Path
        for p in ({str(big)!r}, {str(big2)!r}, {str(pal)!r}, {str(pal)!r}):
            inspect_file(Path(p), Path({str(tmp_path)!r}))  # the scan reads headers: no line of its own
            load_image(p, target_pixels=500_000)
    """)
    assert r.returncode == 0, r.stderr[-3000:]
    lines = r.stderr.splitlines()
    assert len(lines) == 4, r.stderr
    assert "site-packages" not in r.stderr and "Warning" not in r.stderr
    assert lines[0] == f"WARNING {big}: very large image (92,160,000 pixels): decoding it needs a lot of memory"
    assert lines[1].startswith(f"WARNING {big2}: very large image")
    assert lines[2] == lines[3] == f"WARNING {pal}: damaged metadata (EXIF or TIFF tags) ignored"


def test_error_reasons_are_one_line(tmp_path):
    e = InputError(tmp_path / "x.heic", "Invalid input: No 'ftyp' box\n")
    assert e.reason == "Invalid input: No 'ftyp' box" and "\n" not in str(e)


# ---------------------------------------------------------------- out of memory
@pytest.mark.slow
def test_out_of_memory_with_nothing_left_to_split_is_one_clear_error(tiny_biqwen):
    """Under a real address-space limit, a batch the encoder cannot fit even one image at a time
    ends in one OutOfMemory error saying what ran out and what to do (was torch's traceback)."""
    r = _py(
        f"""
        import resource
        import numpy as np
        from PIL import Image
        from nomic_memory import Embedder
        from nomic_memory.errors import OutOfMemory
        from nomic_memory.model.collate import decode_and_prepare
        from nomic_memory.model.encode import BatchEncoder
        lm = Embedder({str(tiny_biqwen)!r}, backend="cpu", max_visual_tokens=4096).loaded
        img = Image.fromarray((np.random.default_rng(0).random((2000, 2000, 3)) * 255).astype("uint8"))
        items = [decode_and_prepare(lm.processor, img) for _ in range(2)]  # 77 MB of patches each
        encoder = BatchEncoder(lm)
        with open("/proc/self/status") as f:
            vm = next(int(line.split()[1]) * 1024 for line in f if line.startswith("VmSize:"))
        resource.setrlimit(resource.RLIMIT_AS, (vm + 32 * 1024**2, vm + 32 * 1024**2))
        try:
            encoder(items)
        except OutOfMemory as e:
            print(encoder.splits, encoder.cap)
            print(e)
    """,
        cap=None,
        timeout=300,
    )
    assert r.returncode == 0, r.stderr[-3000:]
    splits, message = r.stdout.splitlines()
    assert splits == "1 1"
    assert message.startswith("out of CPU memory embedding a single image (4") and "\n" not in message
    assert message.endswith(
        "the batches embedded so far are stored. Free memory, or use a smaller model or --image-only"
    )


@pytest.mark.slow
def test_embed_out_of_memory_is_one_line(tmp_path, tiny_biqwen):
    """`embed` under an address-space limit too small for the model: one line and exit 1, not a
    traceback of torch's import."""
    root = tmp_path / "imgs"
    make_image(root / "a.png", 64, 64)
    cmd = [
        "prlimit",
        f"--as={1500 * 1024**2}",
        sys.executable,
        "-m",
        "nomic_memory.cli",
        "embed",
        str(root),
        "--model-name",
        str(tiny_biqwen),
        "--backend",
        "cpu",
        "--store",
        str(tmp_path / "s"),
    ]
    r = subprocess.run(cmd, cwd=REPO, env=cli_env(tmp_path), capture_output=True, text=True, timeout=300)
    assert r.returncode == 1, r.stderr[-3000:]
    errors = [line for line in r.stderr.splitlines() if line.startswith("Error:")]
    assert len(errors) == 1 and errors[0].startswith("Error: out of memory loading the model ("), r.stderr
    assert "Traceback" not in r.stderr and "│" not in r.stderr
