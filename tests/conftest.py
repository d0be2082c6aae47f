"""Shared fixtures: tiny random-weight models built offline, and folders of real image files.

Everything here is built once per session: the models with ``nomic_memory.model.tiny.build_tiny_model``
(the same ColQwen2_5/BiQwen2_5 classes as the hub models, a few hundred kB), the images with
Pillow.  The image fixtures are read-only by convention; a test that modifies files copies them
first (``copy_tree``).

CLI helpers run the real command line as a subprocess (``python -m nomic_memory.cli`` or the
legacy ``main.py``).  Each subprocess pays for importing torch/transformers, so tests that need
several launch them together with :func:`run_cli_many`.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

REPO = Path(__file__).resolve().parents[1]

# Every image in ``image_dir`` stays below ~4x the tiny model's pixel budget (64 visual tokens,
# 50 176 px): then neither JPEG draft decoding nor the pipeline's pre-resize kicks in, and the
# pipeline must match colpali-engine's own loop to float precision.
CLEAN_IMAGES = {
    # relative path: (width, height, mode)
    "a_wide.jpg": (320, 120, "RGB"),
    "b_tall.png": (90, 280, "RGB"),
    "c_square.webp": (200, 200, "RGB"),
    "d_anim.gif": (150, 100, "P"),
    "e_tiny.png": (20, 20, "RGB"),
    "strip.png": (1, 600, "L"),  # extreme aspect ratio: padded and EMBEDDED, never refused
    "sub/f_photo.jpg": (400, 300, "RGB"),
    "sub/UPPER.PNG": (128, 96, "RGB"),
    "sub/h_grey.jpg": (250, 180, "L"),
    "sub/deeper/g_rgba.png": (160, 240, "RGBA"),
}
NON_IMAGE = "notes.txt"

# Bad files added to a copy of the clean folder: path -> the reason the run must report.
BAD_FILES = {
    "bad/empty.png": "empty file",
    "bad/truncated.jpg": "truncated or corrupt image data",
    "bad/text.png": "not an image",
}


def _pixels(w: int, h: int, seed: int) -> np.ndarray:
    """A smooth gradient plus noise: real structure (so embeddings differ by image), some texture."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w]
    base = np.stack(
        [(xx * 255 // max(w - 1, 1)), (yy * 255 // max(h - 1, 1)), ((xx + yy) * 127 // max(w + h - 2, 1))], axis=-1
    )
    noise = rng.integers(-40, 40, size=(h, w, 3))
    return np.clip(base + noise, 0, 255).astype(np.uint8)


def make_image(path: Path, w: int, h: int, mode: str = "RGB", seed: int = 0) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    rgb = Image.fromarray(_pixels(w, h, seed))
    ext = path.suffix.lower()
    if mode == "L":
        img = rgb.convert("L")
    elif mode == "RGBA":
        img = rgb.convert("RGBA")
        alpha = Image.fromarray(np.tile(np.linspace(0, 255, w, dtype=np.uint8), (h, 1)))
        img.putalpha(alpha)
    elif mode == "P":
        img = rgb.convert("P", palette=Image.Palette.ADAPTIVE, colors=64)
    else:
        img = rgb
    if ext == ".gif":
        second = Image.fromarray(255 - _pixels(w, h, seed + 1)).convert("P", palette=Image.Palette.ADAPTIVE)
        img.save(path, save_all=True, append_images=[second], duration=100, loop=0)
    elif ext in (".jpg", ".jpeg"):
        img.save(path, quality=90)
    else:
        img.save(path)
    return path


def copy_tree(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


def add_bad_files(root: Path) -> None:
    (root / "bad").mkdir(parents=True, exist_ok=True)
    (root / "bad/empty.png").write_bytes(b"")
    good = make_image(root / "bad/_full.jpg", 300, 200, seed=99)
    data = good.read_bytes()
    (root / "bad/truncated.jpg").write_bytes(data[: len(data) // 3])
    good.unlink()
    (root / "bad/text.png").write_text("this is not a PNG, just text with an image extension\n")


@pytest.fixture(scope="session")
def tiny_colqwen(tmp_path_factory) -> Path:
    from nomic_memory.model.tiny import build_tiny_model

    return build_tiny_model(tmp_path_factory.mktemp("models") / "tiny-colqwen", "colqwen")


@pytest.fixture(scope="session")
def tiny_biqwen(tmp_path_factory) -> Path:
    from nomic_memory.model.tiny import build_tiny_model

    return build_tiny_model(tmp_path_factory.mktemp("models") / "tiny-biqwen", "biqwen")


@pytest.fixture(scope="session")
def tiny_models(tiny_colqwen, tiny_biqwen) -> dict[str, Path]:
    return {"colqwen": tiny_colqwen, "biqwen": tiny_biqwen}


@pytest.fixture(scope="session")
def image_dir(tmp_path_factory) -> Path:
    """Varied, valid images: JPEG/PNG/WebP/GIF, RGBA/grey/palette, odd sizes, nested folders, an
    upper-case extension, a 1x600 strip, plus one non-image file that discovery must ignore."""
    root = tmp_path_factory.mktemp("images")
    for i, (rel, (w, h, mode)) in enumerate(CLEAN_IMAGES.items()):
        make_image(root / rel, w, h, mode, seed=i)
    (root / NON_IMAGE).write_text("not an image\n")
    return root


@pytest.fixture(scope="session")
def messy_dir(tmp_path_factory, image_dir) -> Path:
    """``image_dir`` plus an empty file, a truncated JPEG and a text file named .png."""
    root = copy_tree(image_dir, tmp_path_factory.mktemp("messy") / "photos")
    add_bad_files(root)
    return root


@pytest.fixture(scope="session")
def loaded(tiny_models):
    """``{kind: Embedder}`` on the CPU in fp32, loaded once."""
    from nomic_memory import Embedder

    return {kind: Embedder(str(d), backend="cpu") for kind, d in tiny_models.items()}


# ---------------------------------------------------------------- the CLI as a subprocess
@dataclass
class CliResult:
    args: list[str]
    returncode: int
    stdout: str
    stderr: str

    def json(self) -> dict:
        """The ``--json`` report: the last stdout line that parses as a JSON object."""
        for line in reversed(self.stdout.splitlines()):
            if line.startswith("{"):
                return json.loads(line)
        raise AssertionError(f"no JSON report in stdout:\n{self.stdout}\n--- stderr:\n{self.stderr}")

    def __str__(self) -> str:
        return (
            f"$ {' '.join(self.args)}\n[exit {self.returncode}]\n--- stdout:\n{self.stdout}\n--- stderr:\n{self.stderr}"
        )


# Where CLI subprocesses cache compiled bytecode when the environment forbids writing it next to
# the sources (PYTHONDONTWRITEBYTECODE): otherwise every subprocess recompiles transformers.
PYCACHE = Path(tempfile.gettempdir()) / "nomic-memory-tests-pycache"


def cli_env(tmp: Path | None = None) -> dict[str, str]:
    env = dict(os.environ)
    env.update(
        HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", TOKENIZERS_PARALLELISM="false", COLUMNS="200", NO_COLOR="1"
    )
    if env.pop("PYTHONDONTWRITEBYTECODE", None) and "PYTHONPYCACHEPREFIX" not in env:
        env["PYTHONPYCACHEPREFIX"] = str(PYCACHE)
    if tmp is not None:  # never write to the user's default store
        env["NOMIC_MEMORY_STORE"] = str(tmp / "default-store")
    return env


def assert_same_hits(got: list[dict], want: list, exact: bool = False) -> None:
    """One query's hits as JSON (``got``) are ``want`` (hits or their dicts): the fields of each
    hit equal in the same place, its score to float32 rounding unless ``exact``.  Why not always
    exact: a padded batch of queries moves a score of ~20 by one ulp (2e-6), and the BLAS kernels
    behind a forward pass pick their path by buffer alignment and thread split, so two processes
    can differ in a score's last bit (seen for an image query: 58.384476 against 58.384480); a
    wrong weight, input or scoring moves it far more."""
    want = [w if isinstance(w, dict) else w.to_dict() for w in want]
    assert len(got) == len(want)
    for g, w in zip(got, want):  # the fields both carry (a server may add some, e.g. a page image)
        shared = (g.keys() & w.keys()) - {"score"}
        assert {"id", "rank", "root", "path", "page"} <= shared
        assert {f: g[f] for f in shared} == {f: w[f] for f in shared}
    if exact:
        assert [h["score"] for h in got] == [w["score"] for w in want]
    else:
        np.testing.assert_allclose([h["score"] for h in got], [w["score"] for w in want], rtol=1e-6, atol=1e-6)


def assert_same_answers(got: list[list[dict]], want: list[list]) -> None:
    """``assert_same_hits`` for each query of a multi-query answer."""
    assert len(got) == len(want)
    for got_hits, want_hits in zip(got, want):
        assert_same_hits(got_hits, want_hits)


def on_cpu(model: Path | str, store: Path | str) -> list[str]:
    """The options of a CLI run that embeds with a local model on the CPU into ``store``."""
    return ["--model-name", str(model), "--backend", "cpu", "--store", str(store)]


def cli_cmd(*args: str, legacy: bool = False) -> list[str]:
    if legacy:
        return [sys.executable, str(REPO / "main.py"), *args]
    return [sys.executable, "-m", "nomic_memory.cli", *args]


def start_cli(*args: str, legacy: bool = False, env: dict | None = None) -> subprocess.Popen:
    return subprocess.Popen(
        cli_cmd(*map(str, args), legacy=legacy),
        cwd=REPO,
        env=env or cli_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def finish(proc: subprocess.Popen, timeout: float = 300) -> CliResult:
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, err = proc.communicate()
        raise AssertionError(f"CLI timed out: {proc.args}\n{out}\n{err}")
    return CliResult([str(a) for a in proc.args], proc.returncode, out, err)


def run_cli(*args: str, legacy: bool = False, env: dict | None = None, timeout: float = 300) -> CliResult:
    return finish(start_cli(*args, legacy=legacy, env=env), timeout)


def run_cli_many(
    commands: dict[str, list], env: dict | None = None, timeout: float = 300, parallel: int = 4
) -> dict[str, CliResult]:
    """Run several CLI invocations, ``parallel`` at a time (each pays the torch import; they
    overlap).  Commands are started in the order given: put the slow ones first."""
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(max_workers=parallel) as ex:
        futures = {name: ex.submit(run_cli, *args, env=env, timeout=timeout) for name, args in commands.items()}
        return {name: f.result() for name, f in futures.items()}


# ---------------------------------------------------------------- the fast lane
# `pytest -m "not slow"` must finish in about a minute on a 2-core machine: tests that start the
# CLI (each subprocess imports torch), a Ray cluster, an S3 server, a web server or a browser, or
# kill processes, are slow.  They say so where they are written: `pytestmark = pytest.mark.slow`
# for a whole module, `@pytest.mark.slow` for one test (`--strict-markers` refuses a typo).


def kill_when_rows(proc, store: Path, lo: int, hi: int, timeout: float = 240):
    """Start a thread that SIGKILLs ``proc`` as soon as the store's only table holds between
    ``lo`` and ``hi - 1`` rows (some batches committed, not all); returns ``(thread, seen)``,
    ``seen`` getting the row count at the kill."""
    import signal
    import threading
    import time

    from nomic_memory import Store

    seen: list[int] = []

    def count() -> int:
        try:
            s = Store(store, create=False)
            return s.only_table().count() if s.table_names() else 0
        except Exception:  # no store yet, or the table is being created right now
            return 0

    def watch() -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and proc.poll() is None:
            n = count()
            if lo <= n < hi:
                os.kill(proc.pid, signal.SIGKILL)
                seen.append(n)
                return
            time.sleep(0.005)

    t = threading.Thread(target=watch, daemon=True)
    t.start()
    return t, seen
