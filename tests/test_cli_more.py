"""The command line's report, --json, help, option consistency and store housekeeping.

Run as real subprocesses (conftest.cli_cmd, stdin closed).  The runs that load the model (main.py's
report, a one-image folder, a nothing-changed rerun) share one group, started together with the
torch-free ones (store commands, usage errors, help); the tests only read the results.  A few
output details that need a terminal (the progress bar) or the library alone (error messages,
transformers' bar) are checked in-process.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

from conftest import CLEAN_IMAGES, REPO, cli_cmd, cli_env, finish, make_image
from nomic_memory.cli.common import plural
from nomic_memory.store.table import Store

pytestmark = pytest.mark.slow  # starts CLI processes, servers or clusters

HUB_ONLY_VARIANT = "colnomic-3b"  # never in this machine's (offline) Hugging Face cache


@pytest.fixture(scope="module")
def setup(tmp_path_factory, tiny_models, loaded, image_dir):
    tmp = tmp_path_factory.mktemp("cli-more")
    one = tmp / "one-image"
    make_image(one / "only.png", 120, 90)
    # A store the CLI finds through $NOMIC_MEMORY_STORE (cli_env), filled in-process: two models,
    # and for colqwen two embedded folders, one of which is then deleted from disk.
    default = tmp / "default-store"
    gone = shutil.copytree(image_dir, tmp / "gone-folder")
    loaded["colqwen"].embed_directory(image_dir, store=default, workers=0)
    loaded["colqwen"].embed_directory(gone, store=default, workers=0)
    loaded["biqwen"].embed_directory(image_dir, store=default, workers=0)
    shutil.rmtree(gone)
    # the same table main.py writes to (same model directory): a rerun has nothing to do
    unchanged = tmp / "unchanged-store"
    loaded["colqwen"].embed_directory(image_dir, store=unchanged, workers=0)
    # copies for the commands that change a store
    for name in ("s-drop", "s-drop-refused", "s-forget", "s-compact"):
        shutil.copytree(default, tmp / name)
    tables = Store(default).table_names()
    return {
        "tmp": tmp,
        "one": one,
        "default": default,
        "gone": gone,
        "unchanged": unchanged,
        "tables": tables,
        "col_table": Store(unchanged).only_table().name,
    }


@pytest.fixture(scope="module")
def runs(setup, tiny_models, image_dir):
    tmp, col = setup["tmp"], tiny_models["colqwen"]
    env = cli_env(tmp)  # NOMIC_MEMORY_STORE = tmp/default-store
    # torch-free or failing before the model: started at once, each with its own environment
    light = {
        "store_list": (["store", "list", "--json"], env),
        "store_list_text": (["store", "list"], env),
        "drop_refused": (["store", "drop", setup["col_table"], "--store", tmp / "s-drop-refused"], env),
        "drop": (["store", "drop", setup["col_table"], "--store", tmp / "s-drop", "--yes", "--json"], env),
        "forget": (["store", "forget", setup["gone"], "--store", tmp / "s-forget", "--json"], env),
        "forget_unknown": (["store", "forget", tmp / "never-embedded"], env),  # the default store
        "compact": (["store", "compact", "--store", tmp / "s-compact", "--json"], env),
        "export_default_store": (
            [
                "export",
                "--format",
                "npz",
                "--out",
                tmp / "default.npz",
                "--json",
                "--table",
                setup["col_table"],
                "--root",
                image_dir,
            ],
            env,
        ),
        "version": (["--version"], env),
        "dtype_bad": (["embed", image_dir, "--dtype", "foo"], env),
        "size_bad": (["make-tiny-model", tmp / "huge-model", "--size", "huge"], env),
        "revision_local": (
            ["embed", image_dir, "--model-name", col, "--revision", "main", "--store", tmp / "s-rev"],
            env,
        ),
    }
    narrow = {**env, "COLUMNS": "80"}
    for cmd in (
        [],
        ["embed"],
        ["export"],
        ["import"],
        ["search"],
        ["make-tiny-model"],
        ["store"],
        ["store", "list"],
        ["store", "drop"],
        ["store", "forget"],
        ["store", "compact"],
    ):
        light["help " + " ".join(cmd)] = ([*cmd, "--help"], narrow)
    procs = {name: _start(args, e) for name, (args, e) in light.items()}
    common = ["--backend", "cpu", "--workers", "0", "--no-progress"]
    heavy = {  # name: (arguments, through main.py)
        # the original entry point, backend auto: every line of its report
        "legacy": (
            [image_dir, "--model-name", col, "--batch-size", "3", "--workers", "0", "--store", tmp / "s-legacy"],
            True,
        ),
        "legacy_unchanged": (
            [image_dir, "--model-name", col, "--store", setup["unchanged"], "--backend", "cpu", "--workers", "0"],
            True,
        ),
        "one_image": (["embed", setup["one"], "--model-name", col, "--store", tmp / "s-one", *common], False),
        # a hub model this offline machine does not have: the header, then one error line
        "offline_variant": (
            [image_dir, "--model-variant", HUB_ONLY_VARIANT, "--backend", "cpu", "--store", tmp / "s-offline"],
            True,
        ),
    }
    with ThreadPoolExecutor(max_workers=3) as ex:  # each pays the torch import
        futures = {
            name: ex.submit(lambda a=args, lg=lg: finish(_start(a, env, lg))) for name, (args, lg) in heavy.items()
        }
        heavy = {name: f.result() for name, f in futures.items()}
    return {**heavy, **{name: finish(p) for name, p in procs.items()}}


def _start(args: list, env: dict, legacy: bool = False) -> subprocess.Popen:
    """conftest.start_cli with stdin closed: a command that would ask a question must not wait."""
    return subprocess.Popen(
        cli_cmd(*map(str, args), legacy=legacy),
        cwd=REPO,
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


# ---------------------------------------------------------------- main.py's report
LEGACY_LINES = [
    r"Using model: \S+tiny-colqwen",
    r"Auto-detected backend: cpu",
    r"Using backend: cpu",
    r"Image-only mode: False",
    r"Loading model: \S+tiny-colqwen",
    r"Model loaded successfully",
    rf"Found {len(CLEAN_IMAGES)} images in \S+",
    rf"Processing {len(CLEAN_IMAGES)} images with batch size 3",
    r"Processing batch 1/(\d+) \((\d+) images?\)",
    r"={50}",
    r"Processing complete!",
    r"Backend: cpu",
    rf"Total images processed: {len(CLEAN_IMAGES)}",
    r"Total batches: (\d+)",
    r"Peak CPU memory used \(RSS\): \d+\.\d\d GB \(\d+\.\d\d MB\)",
]


def _in_order(patterns: list[str], text: str) -> list[re.Match]:
    lines, at, found = text.splitlines(), 0, []
    for pat in patterns:
        for i in range(at, len(lines)):
            m = re.fullmatch(pat, lines[i])
            if m:
                found.append(m)
                at = i + 1
                break
        else:
            raise AssertionError(f"no line matching {pat!r} after line {at}:\n{text}")
    return found


def test_main_py_prints_the_original_report_in_order(runs, image_dir):
    r = runs["legacy"]
    assert r.returncode == 0, str(r)
    m = _in_order(LEGACY_LINES, r.stdout)
    batches = int(m[8].group(1))
    assert int(m[13].group(1)) == batches
    per_batch = [
        re.fullmatch(r"Processing batch (\d+)/(\d+) \((\d+) (images?)\)", line)
        for line in r.stdout.splitlines()
        if line.startswith("Processing batch")
    ]
    assert [int(x.group(1)) for x in per_batch] == list(range(1, batches + 1))
    assert sum(int(x.group(3)) for x in per_batch) == len(CLEAN_IMAGES)
    for x in per_batch:  # "1 image", "3 images"
        assert x.group(4) == ("image" if x.group(3) == "1" else "images"), x.group(0)
    assert f"Found {len(CLEAN_IMAGES)} images in {image_dir}" in r.stdout


def test_main_py_variant_line_names_the_hub_id(runs):
    r = runs["offline_variant"]  # not in this offline machine's cache: fails after the header
    assert r.returncode == 1, str(r)
    _in_order(
        [
            rf"Using model variant: {HUB_ONLY_VARIANT} \(nomic-ai/colnomic-embed-multimodal-3b\)",
            r"Using backend: cpu",
            r"Image-only mode: False",
        ],
        r.stdout,
    )
    assert "Model loaded successfully" not in r.stdout


def test_main_py_nothing_to_do_prints_what_applies(runs):
    r = runs["legacy_unchanged"]
    assert r.returncode == 0, str(r)
    _in_order(
        [
            r"Using backend: cpu",
            r"Image-only mode: False",
            rf"Found {len(CLEAN_IMAGES)} images in \S+",
            rf"Skipping {len(CLEAN_IMAGES)} unchanged images \(already in the store\)",
            r"Processing 0 images with batch size 8",
            r"={50}",
            r"Processing complete!",
            r"Backend: cpu",
            r"Total images processed: 0",
            r"Total batches: 0",
            rf"Unchanged images skipped: {len(CLEAN_IMAGES)}",
        ],
        r.stdout,
    )
    assert "Auto-detected" not in r.stdout  # --backend cpu was asked for
    assert "Processing batch" not in r.stdout


def test_one_image_singular_wording(runs):
    r = runs["one_image"]
    assert r.returncode == 0, str(r)
    out = r.stdout
    assert "Found 1 image (1 file) to consider: 1 to embed, 0 unchanged (skipped)" in out, out
    assert re.search(r"^1 batch, padding overhead 0\.0% of tokens$", out, re.M), out
    assert re.search(r"^Processed batch 1/1 \(1 image, \d+\.\d\d images/s\)$", out, re.M), out
    assert re.search(r"^Embedded 1 image in ", out, re.M), out
    assert not re.search(r"\b1 (images|batches|rows)\b", out), out


def test_plural():
    assert [plural(n, "image") for n in (0, 1, 2)] == ["0 images", "1 image", "2 images"]
    assert plural(1, "batch", "batches") == "1 batch" and plural(3, "batch", "batches") == "3 batches"


def test_plan_line_is_not_glued_to_the_progress_bar(capsys):
    """On a terminal the bar starts after the plan line; lines printed meanwhile go above it."""
    from nomic_memory.cli.embed import ConsoleProgress

    ui = ConsoleProgress(True, model="some/model")
    # the run driver's order: the model loads after the plan, only when there is work
    ui("discovered", {"count": 2, "directory": "/x"})
    ui("todo", {"count": 2, "skipped": 0})
    ui("plan", {"batches": 2, "padding_overhead": 0.0})
    assert ui.bar is None  # not while the model loads
    ui("model_loading", {})
    ui("model_loaded", {"model_id": "some/model", "kind": "colqwen", "dim": 128, "revision": "abc", "notes": []})
    assert ui.bar is not None
    ui("failed", {"path": "x.png", "reason": "empty file"})
    ui("batch", {"index": 1, "total": 2, "images": 1, "embedded": 1, "elapsed": 0.5})
    ui("done", {})
    out = capsys.readouterr()
    lines = out.out.splitlines()
    first_bar = min([i for i, line in enumerate(lines) if "Embedding" in line] or [len(lines)])
    for whole in (
        "2 batches, padding overhead 0.0% of tokens",
        "Loading model: some/model",
        "Model: some/model (colqwen, 128-d, revision abc)",
    ):
        assert whole in lines and lines.index(whole) < first_bar, out.out
    assert any(line.strip() == "Skipped x.png: empty file" for line in lines + out.err.splitlines())


# ---------------------------------------------------------------- --json: one document on stdout
@pytest.mark.parametrize("name", ["store_list", "drop", "forget", "compact", "export_default_store"])
def test_json_stdout_is_one_document(runs, name):
    r = runs[name]
    assert r.returncode == 0, str(r)
    json.loads(r.stdout)  # the whole of stdout parses: nothing else was printed there


def test_store_list(runs, setup, image_dir, loaded):
    r = runs["store_list"]
    doc = json.loads(r.stdout)
    assert doc["store"] == str(setup["default"])  # found through $NOMIC_MEMORY_STORE
    by_kind = {t["kind"]: t for t in doc["tables"]}
    assert sorted(t["table"] for t in doc["tables"]) == sorted(setup["tables"])
    col, bi = by_kind["colqwen"], by_kind["biqwen"]
    assert col["dim"] == 128 and bi["dim"] == loaded["biqwen"].loaded.dim
    assert col["rows"] == 2 * len(CLEAN_IMAGES) and bi["rows"] == len(CLEAN_IMAGES)
    assert col["roots"] == {str(image_dir.resolve()): len(CLEAN_IMAGES), str(setup["gone"]): len(CLEAN_IMAGES)}
    assert col["dtype"] == "float32" and col["model_id"].endswith("tiny-colqwen")
    assert col["disk_bytes"] > 0
    text = runs["store_list_text"]
    assert text.returncode == 0, str(text)
    for t in doc["tables"]:
        assert t["table"] in text.stdout and t["model_id"] in text.stdout
    assert f"{str(setup['gone'])}  ({len(CLEAN_IMAGES)} rows)" in text.stdout


def test_store_drop(runs, setup):
    refused = runs["drop_refused"]
    assert refused.returncode == 2 and "--yes" in refused.stderr, str(refused)
    assert setup["col_table"] in Store(setup["tmp"] / "s-drop-refused").table_names()
    r = runs["drop"]
    assert json.loads(r.stdout) == {
        "store": str(setup["tmp"] / "s-drop"),
        "dropped": setup["col_table"],
        "rows": 2 * len(CLEAN_IMAGES),
    }
    left = Store(setup["tmp"] / "s-drop").table_names()
    assert left == [t for t in setup["tables"] if t != setup["col_table"]]


def test_store_forget_a_folder_that_is_gone(runs, setup, image_dir):
    r = runs["forget"]
    doc = json.loads(r.stdout)
    assert doc["removed"] == {setup["col_table"]: len(CLEAN_IMAGES)}  # only the table that held it
    s = Store(setup["tmp"] / "s-forget")
    t = s.open_table(setup["col_table"])
    assert t.roots() == {str(image_dir.resolve()): len(CLEAN_IMAGES)}  # the other folder is kept
    unknown = runs["forget_unknown"]
    assert unknown.returncode == 1 and "holds nothing embedded from" in unknown.stderr, str(unknown)


def test_store_compact(runs, setup):
    doc = json.loads(runs["compact"].stdout)
    for t in doc["tables"]:
        assert t["after"]["versions"] == 1 and t["before"]["versions"] > 1
        assert t["after"]["rows"] == t["before"]["rows"]
        assert t["after"]["disk_bytes"] < t["before"]["disk_bytes"]
    # still readable, same rows
    s = Store(setup["tmp"] / "s-compact")
    assert s.open_table(setup["col_table"]).count() == 2 * len(CLEAN_IMAGES)


def test_export_uses_the_default_store(runs, setup, image_dir):
    r = runs["export_default_store"]
    doc = json.loads(r.stdout)
    assert doc["exported"] == len(CLEAN_IMAGES) and doc["store"] == str(setup["default"])
    with np.load(setup["tmp"] / "default.npz") as z:
        assert sorted(z.files) == sorted(CLEAN_IMAGES)


# ---------------------------------------------------------------- options, usage, help, version
def test_version(runs):
    r = runs["version"]
    assert r.returncode == 0 and re.fullmatch(r"nomic-memory \d+\.\d+\.\d+\S*\n", r.stdout), str(r)


@pytest.mark.parametrize(
    "name,needle",
    [
        ("dtype_bad", "'foo' is not one of"),
        ("size_bad", "'huge' is not one of"),
        ("revision_local", "is a local directory"),
    ],
)
def test_bad_options_are_usage_errors(runs, name, needle):
    r = runs[name]
    assert r.returncode == 2, str(r)
    assert "Traceback" not in r.stderr and needle in r.stderr, str(r)


def test_refused_options_write_nothing(runs, setup):
    assert runs["size_bad"].returncode == 2 and not (setup["tmp"] / "huge-model").exists()
    assert runs["revision_local"].returncode == 2 and not (setup["tmp"] / "s-rev").exists()


def test_help_fits_80_columns(runs):
    for name, r in runs.items():
        if not name.startswith("help"):
            continue
        assert r.returncode == 0, str(r)
        assert "…" not in r.stdout and "<bool>" not in r.stdout, str(r)
        assert max(map(len, r.stdout.splitlines())) <= 80, str(r)
        if name == "help embed":
            for opt in ("--max-batch-tokens", "--gpus-per-worker", "--progress / --no-progress", "--ray-address"):
                assert opt in r.stdout
            assert "--report-style" not in r.stdout  # main.py's switch stays hidden
        if name == "help ":
            assert "--version" in r.stdout and "store" in r.stdout


def test_every_option_has_help():
    import click
    import typer

    from nomic_memory.cli import app

    def walk(cmd, path):
        if isinstance(cmd, click.Group):
            for name, sub in cmd.commands.items():
                yield from walk(sub, path + [name])
        else:
            yield path, cmd

    for path, cmd in walk(typer.main.get_command(app), []):
        for p in cmd.params:
            if isinstance(p, click.Option) and not p.hidden and p.name != "help":
                assert p.help, f"{' '.join(path)} {p.opts} has no help"


# ---------------------------------------------------------------- model errors
def test_offline_error_is_whole_and_names_the_flag(runs):
    r = runs["offline_variant"]
    lines = [line for line in r.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("Error: Could not get model"), str(r)
    # the library's first sentence, whole (it used to be cut at 160 characters)
    assert "outgoing traffic has been disabled);" in lines[0], lines[0]
    assert lines[0].endswith("pass a local model directory instead (--model-name PATH)."), lines[0]


def test_library_error_names_no_cli_flag():
    from huggingface_hub import snapshot_download

    from nomic_memory.errors import ModelLoadError
    from nomic_memory.model.loading import resolve_model
    from nomic_memory.model.variants import VARIANTS

    repo = VARIANTS[HUB_ONLY_VARIANT].repo_id
    with pytest.raises(Exception) as raw:
        snapshot_download(repo, local_files_only=True)
    first = re.split(r"(?<=[.!?])\s+", str(raw.value).strip().splitlines()[0])[0].rstrip(".")
    with pytest.raises(ModelLoadError) as e:
        resolve_model(None, HUB_ONLY_VARIANT, local_files_only=True)
    msg = str(e.value)
    assert "--model-name" not in msg and "local model directory" in msg, msg
    assert f"({type(raw.value).__name__}: {first});" in msg, msg
    with pytest.raises(ModelLoadError) as e:
        resolve_model("/no/such/model/dir", None)
    assert "--model-name" not in str(e.value)


def test_load_model_draws_no_weight_loading_bar(tiny_models, capfd):
    from transformers.utils import logging as hf_logging

    from nomic_memory.model.backends import select_backend
    from nomic_memory.model.loading import load_model

    hf_logging.enable_progress_bar()  # as in any program that never called quiet_libraries
    capfd.readouterr()
    load_model(str(tiny_models["biqwen"]), backend=select_backend("cpu"))
    err = capfd.readouterr().err
    assert "Loading weights" not in err, err
    assert hf_logging.is_progress_bar_enabled()  # the caller's setting is restored


def test_max_batch_tokens_below_one_image_is_refused(loaded, tiny_colqwen, image_dir, tmp_path):
    from nomic_memory import Embedder
    from nomic_memory.errors import UsageError
    from nomic_memory.ingest.batching import check_max_batch_tokens

    ip = loaded["colqwen"].loaded.processor.image_processor
    most = ip.size["longest_edge"] // (ip.patch_size * ip.merge_size) ** 2
    check_max_batch_tokens(None, ip)
    check_max_batch_tokens(most, ip)
    with pytest.raises(UsageError, match=rf"--max-batch-tokens\) {most - 1} is below the {most} visual tokens"):
        check_max_batch_tokens(most - 1, ip)
    # through the run: refused before any model is loaded, nothing written
    emb = Embedder(str(tiny_colqwen), backend="cpu", lazy=True)
    with pytest.raises(UsageError):
        emb.embed_directory(image_dir, tmp_path / "s", max_batch_tokens=most - 1)
    assert not emb.is_loaded


def test_forgetting_a_folder_forgets_its_failures(tmp_path, loaded, messy_dir):
    """``store forget`` (EmbeddingTable.delete_root) removes the folder's rows and the failures the
    store remembers for it, so a folder recreated at the same path starts afresh."""
    from nomic_memory.store.failures import FailureLog

    s = Store(tmp_path / "s")
    report = loaded["colqwen"].embed_directory(messy_dir, store=s, workers=0)
    assert report.failed  # the bad files are remembered
    t = s.open_table(report.table)
    root = str(messy_dir.resolve())
    assert FailureLog(s, t.name, root).load()
    assert t.delete_root(root) == len(CLEAN_IMAGES)
    assert t.count() == 0 and FailureLog(s, t.name, root).load() == {}
    s.drop_table(t.name)
    assert s.table_names() == []
