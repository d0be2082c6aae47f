"""The command line, run as a real subprocess: exit statuses, messages, export round-trips.

Exit statuses (cli/common.py's docstring, the README): 0 all embedded, 3 some files skipped (each named
with its reason; the rest stored), 1 fatal (no such directory, no images, model not loadable,
unavailable backend), 2 usage error.

Exit 0 is checked here (--model-kind/--image-only run) and by test_store.py's resumed run.

Every invocation pays for importing torch (and the embedding ones transformers), so the module
runs them all in one fixture, a few at a time, and the tests only read the results.
"""

from __future__ import annotations

import json
import re
import shutil

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch

from conftest import BAD_FILES, CLEAN_IMAGES, cli_env, run_cli_many
from nomic_memory.store.export import export_store
from nomic_memory.store.table import Store, embedding_to_numpy

pytestmark = pytest.mark.slow  # starts CLI processes, servers or clusters

NO_MODEL = "/nonexistent/dir-that-is-not-there"
MEMORY_LINE = re.compile(r"^Peak CPU memory used \(RSS\): \d+\.\d\d GB \(\d+\.\d\d MB\)$", re.M)


@pytest.fixture(scope="module")
def setup(tmp_path_factory, tiny_models, loaded, image_dir):
    tmp = tmp_path_factory.mktemp("cli")
    # A model directory whose kind cannot be detected: architectures says only "Qwen2.5-VL", the
    # name gives no hint.  --model-kind is enough to load it (test_backends.py: and needed).
    mystery = tmp / "mystery"
    shutil.copytree(tiny_models["colqwen"], mystery)
    cfg = json.loads((mystery / "config.json").read_text())
    cfg["architectures"] = ["Qwen2_5_VLForConditionalGeneration"]
    (mystery / "config.json").write_text(json.dumps(cfg))
    empty = tmp / "no-images"
    empty.mkdir()
    (empty / "readme.txt").write_text("no images here\n")
    # Stores to export, written in-process.
    stores = {}
    for kind in ("colqwen", "biqwen"):
        stores[kind] = tmp / f"store-{kind}"
        loaded[kind].embed_directory(image_dir, store=stores[kind], workers=0)
    return {"tmp": tmp, "mystery": mystery, "empty": empty, "stores": stores}


@pytest.fixture(scope="module")
def runs(setup, tiny_models, messy_dir, image_dir):
    tmp = setup["tmp"]
    common = ["--backend", "cpu", "--workers", "0", "--no-progress"]
    commands = {
        "messy": [
            "embed",
            messy_dir,
            "--model-name",
            tiny_models["colqwen"],
            "--store",
            tmp / "s-messy",
            "--batch-size",
            "3",
            "--json",
            *common,
        ],
        "kind_override": [
            "embed",
            image_dir,
            "--model-name",
            setup["mystery"],
            "--model-kind",
            "colqwen",
            "--image-only",
            "--store",
            tmp / "s-kind",
            *common,
        ],
        # auto backend: prints the detection lines before it fails on the model.
        "no_model": ["embed", image_dir, "--model-name", NO_MODEL, "--store", tmp / "s-x"],
        "no_dir": ["embed", tmp / "does-not-exist", "--model-name", tiny_models["colqwen"]],
        "no_images": ["embed", setup["empty"], "--model-name", tiny_models["colqwen"], "--store", tmp / "s-x"],
        "usage_batch": ["embed", image_dir, "--batch-size", "0"],
        "usage_option": ["embed", image_dir, "--frobnicate"],
        "usage_format": ["export", "--store", setup["stores"]["colqwen"], "--format", "csv", "--out", tmp / "x.csv"],
        "export_npz": ["export", "--store", setup["stores"]["colqwen"], "--format", "npz", "--out", tmp / "e.npz"],
        "export_parquet": [
            "export",
            "--store",
            setup["stores"]["colqwen"],
            "--format",
            "parquet",
            "--out",
            tmp / "e.parquet",
        ],
        "export_missing": ["export", "--store", tmp / "no-store", "--format", "npz", "--out", tmp / "m.npz"],
    }
    if not torch.cuda.is_available():
        commands["no_cuda"] = ["embed", image_dir, "--backend", "cuda", "--store", tmp / "s-cuda"]
    return run_cli_many(commands, env=cli_env(tmp))


def _one_line_error(r, code: int = 1) -> str:
    assert r.returncode == code, str(r)
    assert "Traceback" not in r.stderr, str(r)
    lines = [line for line in r.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("Error: "), str(r)
    return lines[0]


# ---------------------------------------------------------------- exit 3: bad files skipped
def test_bad_files_exit_3_named_with_reason(runs):
    r = runs["messy"]
    assert r.returncode == 3, str(r)
    assert "Traceback" not in r.stderr
    for path, reason in BAD_FILES.items():
        assert re.search(rf"^Skipped {re.escape(path)}: {re.escape(reason)}", r.stderr, re.M), str(r)
    assert "Skipped strip.png" not in r.stderr  # the 1x600 strip is embedded, not refused
    report = json.loads(r.stdout)  # --json: stdout is the JSON document and nothing else
    assert report["embedded"] == len(CLEAN_IMAGES)
    assert {f["path"] for f in report["failed"]} == set(BAD_FILES)
    # the human report goes to stderr under --json
    assert f"Embedded {len(CLEAN_IMAGES)} images" in r.stderr
    assert "Using backend: cpu" in r.stderr and "Using dtype: torch.float32" in r.stderr


def test_bad_files_run_stored_the_rest(runs, setup, loaded, messy_dir):
    table = Store(setup["tmp"] / "s-messy").only_table()
    rows = table.to_arrow(["root", "path", "embedding", "n_vectors"]).to_pylist()
    assert sorted(r["path"] for r in rows) == sorted(CLEAN_IMAGES)
    assert {r["root"] for r in rows} == {str(messy_dir.resolve())}
    # what the CLI stored equals what the Python API computes for the same files
    paths = sorted(CLEAN_IMAGES)
    ref = dict(zip(paths, loaded["colqwen"].embed_images([messy_dir / p for p in paths])))
    for r in rows:
        got = embedding_to_numpy(r["embedding"], "colqwen", 128)
        assert r["n_vectors"] == got.shape[0]
        np.testing.assert_allclose(got, ref[r["path"]], atol=1e-4, rtol=0, err_msg=r["path"])


def test_memory_report_line_format(runs):
    r = runs["messy"]
    assert MEMORY_LINE.search(r.stderr), r.stderr  # --json: human lines on stderr
    report = json.loads(r.stdout)
    assert report["memory"]["backend"] == "cpu" and report["memory"]["peak_bytes"] > 0


# ---------------------------------------------------------------- exit 0, --model-kind, --image-only
def test_model_kind_override_and_image_only_exit_0(runs):
    r = runs["kind_override"]
    assert r.returncode == 0, str(r)
    assert re.search(r"^Model: .*mystery \(colqwen, 128-d, revision local-[0-9a-f]+\)$", r.stdout, re.M), r.stdout
    assert re.search(r"^Image-only mode saved \d+\.\d\d MB of text-embedding weights$", r.stdout, re.M), r.stdout
    assert f"Embedded {len(CLEAN_IMAGES)} images" in r.stdout
    assert MEMORY_LINE.search(r.stdout)


def test_image_only_cli_stores_the_full_models_embeddings(runs, setup):
    assert runs["kind_override"].returncode == 0
    lean, info = _stored(setup["tmp"] / "s-kind")
    full, _ = _stored(setup["stores"]["colqwen"])  # the full model, through the API
    assert info.kind == "colqwen" and info.model_id.endswith("mystery")
    assert lean.keys() == full.keys() == set(CLEAN_IMAGES)
    for p in full:
        np.testing.assert_allclose(lean[p], full[p], atol=1e-4, rtol=0, err_msg=p)


# ---------------------------------------------------------------- exit 1: fatal
def test_model_not_loadable_is_one_sentence(runs):
    r = runs["no_model"]
    line = _one_line_error(r)
    assert NO_MODEL in line and "does not exist" in line, line
    assert line.endswith("(--model-name PATH)."), line  # the CLI names the flag; the library does not
    assert re.search(r"^Auto-detected backend: (cpu|cuda|mps)$", r.stdout, re.M), r.stdout
    assert re.search(r"^Using dtype: torch\.(float32|bfloat16|float16)$", r.stdout, re.M), r.stdout


def test_no_such_directory_exit_1(runs, setup):
    line = _one_line_error(runs["no_dir"])
    assert "no such directory" in line and "does-not-exist" in line


def test_no_images_exit_1(runs, setup):
    line = _one_line_error(runs["no_images"])
    assert "no images or documents found" in line and str(setup["empty"]) in line


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")
def test_backend_cuda_unavailable_exit_1(runs, setup):
    line = _one_line_error(runs["no_cuda"])
    assert line == (
        "Error: backend 'cuda' was requested but no CUDA device is available "
        "(torch.cuda.is_available() is False); use --backend auto or cpu"
    )
    assert not (setup["tmp"] / "s-cuda").exists()  # nothing was written


def test_export_missing_store_exit_1(runs):
    line = _one_line_error(runs["export_missing"])
    assert "no store at" in line


# ---------------------------------------------------------------- exit 2: usage
@pytest.mark.parametrize("name", ["usage_batch", "usage_option", "usage_format"])
def test_usage_errors_exit_2(runs, name):
    r = runs[name]
    assert r.returncode == 2, str(r)
    assert "Traceback" not in r.stderr
    assert r.stderr.strip()


# ---------------------------------------------------------------- export round trips
def _stored(store_path) -> tuple[dict[str, np.ndarray], dict]:
    t = Store(store_path).only_table()
    return (
        {
            r["path"]: embedding_to_numpy(r["embedding"], t.info.kind, t.info.dim)
            for r in t.to_arrow(["path", "embedding"]).to_pylist()
        },
        t.info,
    )


@pytest.mark.parametrize("kind", ["colqwen", "biqwen"])
def test_export_npz_round_trip(runs, setup, kind):
    if kind == "colqwen":  # through the CLI
        r = runs["export_npz"]
        assert r.returncode == 0, str(r)
        assert f"Exported {len(CLEAN_IMAGES)} images" in r.stdout
        out = "e.npz"
    else:  # the same code through the API (one subprocess fewer)
        out = "bi.npz"
        assert export_store(setup["stores"][kind], "npz", setup["tmp"] / out) == len(CLEAN_IMAGES)
    stored, info = _stored(setup["stores"][kind])
    with np.load(setup["tmp"] / out, allow_pickle=False) as z:
        assert sorted(z.files) == sorted(CLEAN_IMAGES)  # keys are the relative paths
        for key in z.files:
            a = z[key]
            assert a.dtype == np.float32
            assert a.shape == ((stored[key].shape[0], 128) if kind == "colqwen" else (info.dim,))
            np.testing.assert_array_equal(a, stored[key])


def test_export_parquet_round_trip(runs, setup):
    r = runs["export_parquet"]
    assert r.returncode == 0, str(r)
    stored, _ = _stored(setup["stores"]["colqwen"])
    t = pq.read_table(setup["tmp"] / "e.parquet")
    for col in ("path", "content_hash", "n_vectors", "model_id", "embedding"):
        assert col in t.column_names
    assert str(t.schema.field("embedding").type.value_type.value_type) == "float"
    rows = t.to_pylist()
    assert sorted(row["path"] for row in rows) == sorted(CLEAN_IMAGES)
    for row in rows:
        a = np.asarray(row["embedding"], dtype=np.float32)
        assert a.shape == (row["n_vectors"], 128)
        np.testing.assert_array_equal(a, stored[row["path"]])
