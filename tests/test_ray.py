"""``embed --engine ray`` (issue 5) on a real local Ray cluster.

One 2-CPU cluster is shared by the whole module (Ray startup costs seconds).  Every Ray run is
checked against a local run of the same folder: the stored embeddings must be the same per path.
The tests that need Ray are marked ``ray`` and skipped when it is not installed.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from conftest import cli_cmd, on_cpu
from nomic_memory.model.backends import select_backend
from nomic_memory.store.table import Store, embedding_to_numpy

pytestmark = pytest.mark.slow  # starts CLI processes, servers or clusters

CPU = select_backend("cpu")
SIZES = [(120, 90), (64, 200), (300, 300), (500, 120), (90, 90)]


@pytest.fixture(scope="module")
def cluster():
    if importlib.util.find_spec("ray") is None:
        pytest.skip("ray is not installed (uv sync --extra ray)")
    # Ray first, as another library or a notebook may have imported it: the engine module must still
    # opt out of Ray's `uv run` worker hook (CI runs `uv run pytest`; with the hook, workers start
    # without the project's venv and die).
    import ray

    import nomic_memory.run.ray_engine  # noqa: F401

    started = not ray.is_initialized()
    if started:
        ray.init(num_cpus=2, include_dashboard=False, logging_level="WARNING", object_store_memory=400 * 2**20)
    yield ray.get_runtime_context().gcs_address
    if started:
        ray.shutdown()


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    from nomic_memory.model.tiny import build_tiny_model

    root = tmp_path_factory.mktemp("ray-models")
    return {kind: build_tiny_model(root / kind, kind) for kind in ("colqwen", "biqwen")}


def make_folder(d: Path, n: int, bad: bool = False) -> Path:
    d.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(len(str(d)))
    for i in range(n):
        w, h = SIZES[i % len(SIZES)]
        arr = rng.integers(0, 255, (h, w, 3), dtype=np.uint8)
        sub = d / ("sub" if i % 3 == 0 else "")
        sub.mkdir(exist_ok=True)
        Image.fromarray(arr).save(sub / (f"img{i:02d}.jpg" if i % 2 else f"img{i:02d}.png"))
    if bad:
        (d / "notes.png").write_text("this is text, not a PNG")
        full = (d / "img01.jpg").read_bytes()
        (d / "truncated.jpg").write_bytes(full[: len(full) // 2])
    return d


def stored(store: Path) -> dict[str, np.ndarray]:
    t = Store(store, create=False).only_table()
    rows = t.to_arrow(["path", "embedding"]).to_pylist()
    paths = [r["path"] for r in rows]
    assert len(paths) == len(set(paths)), "a path is stored more than once"
    return {r["path"]: embedding_to_numpy(r["embedding"], t.info.kind, t.info.dim) for r in rows}


def local_run(model: Path, folder: Path, store: Path, batch_size: int):
    from nomic_memory import Embedder

    emb = Embedder(str(model), backend=CPU, seed=0)
    return emb.embed_directory(folder, store, batch_size=batch_size, workers=0)


def assert_same(ray_store: Path, local_store: Path) -> None:
    a, b = stored(ray_store), stored(local_store)
    assert sorted(a) == sorted(b)
    for p in a:
        assert a[p].shape == b[p].shape, p
        np.testing.assert_allclose(a[p], b[p], atol=1e-5, rtol=0, err_msg=p)
    ta = Store(ray_store, create=False).only_table()
    tb = Store(local_store, create=False).only_table()
    assert (ta.name, ta.info) == (tb.name, tb.info)


def ray_run(model: Path, folder: Path, store: Path, **kw):
    """The public API's Ray engine (the model is never loaded on the driver)."""
    from nomic_memory import Embedder

    kw.setdefault("batch_size", 3)
    return Embedder(str(model), backend=CPU, seed=0, lazy=True).embed_directory(folder, store, engine="ray", **kw)


@pytest.mark.ray
def test_same_embeddings_as_local_and_bad_files_skipped(cluster, models, tmp_path):
    """Two model actors; a text file named .png and a truncated JPEG are reported and skipped."""
    folder = make_folder(tmp_path / "imgs", 9, bad=True)
    events: list[tuple[str, dict]] = []
    rep = ray_run(models["colqwen"], folder, tmp_path / "ray", workers=2, on_event=lambda k, d: events.append((k, d)))
    assert rep.discovered == 11 and rep.embedded == 9
    assert {p for p, _ in rep.failed} == {"notes.png", "truncated.jpg"}
    reasons = dict(rep.failed)
    assert "not an image" in reasons["notes.png"] and "truncated" in reasons["truncated.jpg"]
    kinds = [k for k, _ in events]
    assert kinds[:3] == ["discovered", "todo", "plan"] and kinds[-1] == "done"
    assert kinds.count("failed") == 2 and kinds.count("batch") == rep.batches
    assert rep.images_per_second > 0 and rep.memory is not None and rep.memory.peak_bytes > 0
    assert rep.worker_memory and max(m.peak_bytes for m in rep.worker_memory.values()) == rep.memory.peak_bytes
    assert "worker_memory" in rep.to_dict()

    loc = local_run(models["colqwen"], folder, tmp_path / "local", batch_size=3)
    assert loc.embedded == 9 and loc.batches == rep.batches
    assert abs(loc.padding_overhead - rep.padding_overhead) < 1e-12
    assert_same(tmp_path / "ray", tmp_path / "local")


@pytest.mark.ray
def test_biqwen_survives_a_dead_worker(cluster, models, tmp_path, monkeypatch):
    """The actor process dies on its first batch: Ray restarts it and retries the batch.

    Also runs the probe (which pins revision and fingerprint) as a remote task."""
    folder = make_folder(tmp_path / "imgs", 6)
    marker = tmp_path / "crashed"
    monkeypatch.setenv("NOMIC_MEMORY_RAY_CRASH_MARKER", str(marker))
    rep = ray_run(models["biqwen"], folder, tmp_path / "ray", workers=1)
    assert marker.exists(), "the fault was not injected"
    assert rep.embedded == 6 and not rep.failed
    local_run(models["biqwen"], folder, tmp_path / "local", batch_size=3)
    assert_same(tmp_path / "ray", tmp_path / "local")


@pytest.mark.ray
def test_interrupted_run_resumes(cluster, models, tmp_path):
    """Interrupt after the first stored batch; the rerun embeds only what is missing."""
    folder = make_folder(tmp_path / "imgs", 8)
    seen = []

    def interrupt(kind, data):
        if kind == "batch":
            seen.append(data)
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        ray_run(models["colqwen"], folder, tmp_path / "ray", batch_size=2, workers=1, on_event=interrupt)
    first = stored(tmp_path / "ray")
    assert len(first) == seen[0]["embedded"] == 2

    rep = ray_run(models["colqwen"], folder, tmp_path / "ray", batch_size=2, workers=1)
    assert rep.skipped_unchanged == 2 and rep.embedded == 6 and not rep.failed
    local_run(models["colqwen"], folder, tmp_path / "local", batch_size=2)
    assert_same(tmp_path / "ray", tmp_path / "local")  # every path exactly once, same vectors


@pytest.mark.ray
def test_cli_engine_ray(cluster, models, tmp_path):
    """The CLI end to end, joining the running cluster with --ray-address."""
    folder = make_folder(tmp_path / "imgs", 4)
    engine = ["--engine", "ray", "--workers", "1", "--ray-address", cluster]
    cmd = cli_cmd("embed", str(folder), *engine, *on_cpu(models["colqwen"], tmp_path / "store"))
    cmd += ["--batch-size", "2", "--json", "--no-progress"]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env={**os.environ, "RAY_ADDRESS": ""})
    assert out.returncode == 0, out.stdout + out.stderr
    rep = json.loads(out.stdout)  # one JSON document, nothing else
    assert rep["embedded"] == 4 and rep["failed"] == [] and len(rep["worker_memory"]) == 1
    assert "Embedded 4 images" in out.stderr  # --json: stdout is the JSON document alone
    local_run(models["colqwen"], folder, tmp_path / "local", batch_size=2)
    assert_same(tmp_path / "store", tmp_path / "local")


def test_cli_without_ray_says_how_to_get_it(tmp_path, monkeypatch):
    """No cluster needed: with ``ray`` unimportable, --engine ray explains how to install it."""
    from typer.testing import CliRunner

    from nomic_memory.cli import app

    folder = make_folder(tmp_path / "imgs", 1)
    monkeypatch.setitem(sys.modules, "ray", None)  # `import ray` now raises ImportError
    monkeypatch.delitem(sys.modules, "nomic_memory.run.ray_engine", raising=False)
    res = CliRunner().invoke(
        app, ["embed", str(folder), "--engine", "ray", "--backend", "cpu", "--store", str(tmp_path / "s")]
    )
    assert res.exit_code == 1
    assert "uv sync --extra ray" in res.output
