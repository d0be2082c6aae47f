"""The first hour as real processes: the README's try-out, run as written on a fresh account (a new
empty HOME, no ~/Pictures), bench refusing a missing backend before anything else, main.py's and
embed's counts on files and pages, remembered failures (printed once, exit 0) against new ones
(exit 3), and Ray's daemons printing no LanceDB fork warning.
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from conftest import REPO, cli_env, run_cli, run_cli_many

pytestmark = pytest.mark.slow  # every test starts CLI processes (each imports torch)

VENV_BIN = Path(sys.executable).parent


def readme_block(after: str) -> list[str]:
    """The commands of the first ```bash block following the line containing ``after``."""
    text = (REPO / "README.md").read_text()
    start = text.index(after)
    block = text[text.index("```bash\n", start) + len("```bash\n") :]
    block = block[: block.index("```")]
    return [line for line in block.splitlines() if line.strip() and not line.startswith("#")]


def fresh_account(tmp: Path) -> dict[str, str]:
    """A new user's environment: an empty HOME (no ~/Pictures, no store, no caches of ours), the
    project's interpreter first on PATH, and `uv run X` meaning X from it (uv itself would sync a
    fresh environment: what it runs is what is tested)."""
    home = tmp / "home"
    home.mkdir()
    env = cli_env()
    for var in ("NOMIC_MEMORY_STORE", "XDG_DATA_HOME", "XDG_CACHE_HOME", "NOMIC_MEMORY_TOKEN"):
        env.pop(var, None)
    env.update(HOME=str(home), PATH=f"{VENV_BIN}{os.pathsep}{env.get('PATH', '')}", NOMIC_MEMORY_PORT="0", COLUMNS="80")
    return env


def bash(line: str, env: dict, **kw) -> subprocess.Popen:
    script = f'uv() {{ [ "$1" = run ] && shift; "$@"; }}\ncd {shlex.quote(str(REPO))}\n{line}\n'
    return subprocess.Popen(
        ["bash", "-c", script],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
        **kw,
    )


def test_readme_try_out_runs_as_written_on_a_fresh_account(tmp_path):
    lines = readme_block("**Try-out, offline.**")
    assert (
        [shlex.split(line)[:3] for line in lines[:4]] == [["uv", "run", "nomic-memory"]] * 4
        and "make-tiny-model" in lines[0]
        and "samples" in lines[1]
    )
    assert "~/Pictures" not in "\n".join(lines)
    env = fresh_account(tmp_path)
    home = Path(env["HOME"])
    *steps, serve = lines
    assert shlex.split(serve)[3] == "serve"
    # in the README's order; commands that do not need each other's output run side by side
    outputs: list[str] = [""] * len(steps)
    for stage in ([0, 1], [2], list(range(3, len(steps)))):
        procs = {i: bash(steps[i], env) for i in stage}
        for i, p in procs.items():
            out, err = p.communicate(timeout=600)
            assert p.returncode == 0, f"$ {steps[i]}\n[exit {p.returncode}]\n{out}\n{err}"
            assert "Traceback" not in err, err
            outputs[i] = out
    assert "Wrote 5 sample files" in outputs[1]
    assert re.search(
        r"^Found 7 images \(5 files\) to consider: 7 to embed, 0 unchanged \(skipped\)$", outputs[2], re.MULTILINE
    ), outputs[2]
    assert f"{home}/nomic-try/samples  (7 rows)" in outputs[3]
    text_hits = [line for line in outputs[4].splitlines() if re.match(r"^\s+\d+\s", line)]
    assert len(text_hits) == 7 and all(f"{home}/nomic-try/samples/" in h for h in text_hits)
    assert outputs[5].splitlines()[2].split()[2:] == ["0", f"{home}/nomic-try/samples/photos/photo_1.jpg"]
    assert outputs[6].splitlines()[2].split()[2:] == ["2", f"{home}/nomic-try/samples/report.pdf"]
    # the server, as written (NOMIC_MEMORY_PORT=0: any free port, so parallel runs never collide)
    p = bash(serve, env)
    try:
        url = None
        deadline = time.monotonic() + 300
        while url is None and time.monotonic() < deadline and p.poll() is None:
            line = p.stderr.readline()
            m = re.search(r"at (http://\S+/)$", line.strip())
            url = m.group(1) if m else None
        assert url, f"serve never said where it listens (exit {p.poll()})"
        assert "nomic-memory" in httpx.get(url, timeout=60).text
        r = httpx.post(url + "search", json={"queries": ["quarterly report"], "k": 3}, timeout=120)
        assert r.status_code == 200 and len(r.json()["results"][0]) == 3, r.text
    finally:
        os.killpg(p.pid, signal.SIGTERM)
        p.communicate(timeout=60)
    assert not (home / "Pictures").exists()
    assert not (home / ".local" / "share" / "nomic-memory").exists()  # the default store was never touched


def test_quick_start_is_one_command_and_offers_the_sample_folder():
    lines = readme_block("## Quick start")
    assert lines == ["pip install uv && uv sync --compile-bytecode && uv run python main.py ~/Pictures"]
    text = (REPO / "README.md").read_text()
    quick = text[text.index("## Quick start") : text.index("**Try-out, offline.**")]
    assert "`uv run nomic-memory samples ~/nomic-samples`" in quick  # for a user without ~/Pictures
    assert "`uv run python main.py ~/nomic-samples`" in quick


def test_bench_refuses_a_missing_backend_before_anything_else(tmp_path):
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    t0 = time.perf_counter()
    r = run_cli("bench", "--backend", "cuda", "--out-dir", tmp_path / "out", env=cli_env(tmp_path))
    elapsed = time.perf_counter() - t0
    assert r.returncode == 1, str(r)
    lines = [line for line in (r.stdout + r.stderr).splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("Error: backend 'cuda' was requested"), str(r)
    assert not (tmp_path / "out").exists()
    print(f"bench --backend cuda refused in {elapsed:.2f} s (process start included)")


@pytest.fixture(scope="module")
def counted(tmp_path_factory, tiny_colqwen):
    """A folder of the sample files plus a truncated JPEG, embedded by main.py, then by `embed`
    twice (nothing changed; then one new bad file), image-only."""
    from nomic_memory.ingest.samples import write_try_out_folder

    tmp = tmp_path_factory.mktemp("counts")
    folder = tmp / "folder"
    write_try_out_folder(folder)
    (folder / "cut.jpg").write_bytes((folder / "photos" / "photo_1.jpg").read_bytes()[:5000])
    env = cli_env(tmp)
    common = ["--model-name", tiny_colqwen, "--store", tmp / "store", "--backend", "cpu", "--workers", "0"]
    out = {"legacy": run_cli(folder, *common, legacy=True, env=env)}
    out["rerun"] = run_cli("embed", folder, *common, "--no-progress", env=env)
    (folder / "cut2.jpg").write_bytes((folder / "photos" / "photo_2.jpg").read_bytes()[:4000])
    out.update(
        run_cli_many(
            {
                "new_bad": ["embed", folder, *common, "--no-progress", "--json"],
                "image_only": [
                    "embed",
                    folder,
                    "--model-name",
                    tiny_colqwen,
                    "--store",
                    tmp / "store-io",
                    "--backend",
                    "cpu",
                    "--workers",
                    "0",
                    "--image-only",
                    "--no-progress",
                ],
            },
            env=env,
        )
    )
    return out


def test_main_py_counts_pages_as_images(counted):
    r = counted["legacy"]
    assert r.returncode == 3, str(r)  # the truncated JPEG: a new failure
    assert "Found 8 images in " in r.stdout  # 4 photos + 3 pages + the bad file
    assert "Processing 8 images with batch size 8" in r.stdout
    assert "Total images processed: 7" in r.stdout and "Images skipped with errors: 1" in r.stdout
    assert r.stderr.count("cut.jpg") == 1, r.stderr  # printed once


def test_unchanged_rerun_with_a_remembered_failure_exits_0(counted):
    r = counted["rerun"]
    assert r.returncode == 0, str(r)
    assert re.search(
        r"^Found 8 images \(6 files\) to consider: 0 to embed, 7 unchanged \(skipped\), "
        r"1 still failing \(remembered\)$",
        r.stdout,
        re.MULTILINE,
    ), r.stdout
    assert r.stderr.count("cut.jpg") == 1, r.stderr
    assert re.search(
        r"^Still failing cut\.jpg: .*\(failed before; the file has not changed since\)$", r.stderr, re.MULTILINE
    ), r.stderr
    assert "0 skipped with errors, 1 still failing (remembered)" in r.stdout


def test_a_new_failure_exits_3_and_is_told_apart(counted):
    r = counted["new_bad"]
    assert r.returncode == 3, str(r)
    doc = r.json()
    assert {f["path"]: f["remembered"] for f in doc["failed"]} == {"cut.jpg": True, "cut2.jpg": False}
    assert doc["inputs"] == 9 and doc["discovered"] == 7
    assert r.stderr.count("cut2.jpg") == 1 and r.stderr.count("cut.jpg") == 1, r.stderr
    assert re.search(r"^Skipped cut2\.jpg: ", r.stderr, re.MULTILINE) and re.search(
        r"^Still failing cut\.jpg: ", r.stderr, re.MULTILINE
    )


def test_image_only_saving_is_said_once_the_same_way(counted):
    r = counted["image_only"]
    note = re.search(r"text-embedding rows, saved (\d+\.\d\d) MB$", r.stdout, re.MULTILINE)
    final = re.search(r"^Image-only mode saved (\d+\.\d\d) MB of text-embedding weights$", r.stdout, re.MULTILINE)
    assert note and final and note.group(1) == final.group(1), r.stdout
    assert "freed" not in r.stdout


@pytest.mark.ray
def test_ray_local_cluster_prints_no_lancedb_fork_warning(tmp_path, tiny_colqwen):
    """`--engine ray` starting its own local cluster: Ray forks its daemons from the driver, which
    has the store open; none of them may print LanceDB's fork warning."""
    if importlib.util.find_spec("ray") is None:  # not importorskip: that would import Ray here
        pytest.skip("ray is not installed (uv sync --extra ray)")
    folder = tmp_path / "imgs"
    from nomic_memory.ingest.samples import make_sample_images

    make_sample_images(folder, 2, specs=[("photo", 320, 240, "jpg")])
    env = {**cli_env(tmp_path), "RAY_ADDRESS": ""}
    shutil.rmtree(tmp_path / "store", ignore_errors=True)
    r = run_cli(
        "embed",
        folder,
        "--engine",
        "ray",
        "--workers",
        "1",
        "--backend",
        "cpu",
        "--model-name",
        tiny_colqwen,
        "--store",
        tmp_path / "store",
        "--no-progress",
        "--json",
        env=env,
        timeout=600,
    )
    assert r.returncode == 0, str(r)
    assert json.loads(r.stdout)["embedded"] == 2
    assert "fork support is experimental" not in r.stderr, r.stderr
