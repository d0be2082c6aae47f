"""Start-up imports only what a command uses: the command line's modules, lancedb without its REST
namespace client's API classes, and the model loaded without transformers' table of every model;
a command-line search without pandas, scipy, boto3, torch.compile's front end, torch's distributed
tensors and torchvision's models and operators.  Each check runs in a fresh interpreter (what a new
command does)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from conftest import assert_same_answers, cli_env

pytestmark = pytest.mark.slow


def _python(code: str) -> str:
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=cli_env(), timeout=300)
    assert out.returncode == 0, out.stderr
    return out.stdout


def test_version_imports_no_command_module():
    got = json.loads(
        _python(
            "import contextlib, io, json, sys\n"
            "from nomic_memory.cli import app\n"
            "with contextlib.redirect_stdout(io.StringIO()) as out:\n"
            "    try:\n"
            "        app(['--version'])\n"
            "    except SystemExit as e:\n"
            "        code = e.code\n"
            "mods = sorted(m for m in sys.modules if m.startswith('nomic_memory.cli.') and m != 'nomic_memory.cli.common')\n"
            "print(json.dumps({'code': code, 'out': out.getvalue(), 'mods': mods}))\n"
        )
    )
    assert got["code"] == 0 and got["out"].startswith("nomic-memory ")
    assert got["mods"] == []  # no command's module: not embed, search, serve, ...


def test_a_command_imports_its_module_only():
    got = json.loads(
        _python(
            "import json, sys\n"
            "from nomic_memory.cli import app\n"
            "try:\n"
            "    app(['check', '--help'])\n"
            "except SystemExit:\n"
            "    pass\n"
            "print(json.dumps(sorted(m for m in sys.modules if m.startswith('nomic_memory.cli.'))))\n"
        ).splitlines()[-1]
    )
    assert "nomic_memory.cli.check" in got
    assert not {"nomic_memory.cli.embed", "nomic_memory.cli.serve", "nomic_memory.cli.mcp"} & set(got)


def test_lancedb_without_the_rest_client_api_which_still_loads_on_use(tmp_path):
    got = json.loads(
        _python(
            "import json, sys\n"
            "from nomic_memory.store.table import Store\n"
            f"s = Store({str(tmp_path / 'store')!r})\n"
            "before = sorted(m for m in sys.modules if m.startswith('lance_namespace_urllib3_client.api'))\n"
            "import lance_namespace_urllib3_client as c\n"
            "from lance_namespace_urllib3_client import TableApi\n"
            "from lance_namespace_urllib3_client.models import CreateTableRequest\n"
            "print(json.dumps({'before': before, 'lancedb': 'lancedb' in sys.modules, 'version': c.__version__,\n"
            "    'api': TableApi.__module__, 'same': c.models.CreateTableRequest is CreateTableRequest}))\n"
        )
    )
    assert got["lancedb"] and got["before"] == []
    assert got["api"] == "lance_namespace_urllib3_client.api.table_api" and got["version"] and got["same"]


def test_model_loads_without_transformers_model_table(tiny_colqwen):
    got = json.loads(
        _python(
            "import json, sys\n"
            "from nomic_memory.model.backends import select_backend\n"
            "from nomic_memory.model.loading import load_model\n"
            f"lm = load_model({str(tiny_colqwen)!r}, backend=select_backend('cpu'))\n"
            "skipped = 'transformers.models' not in sys.modules  # neither the real one nor the stand-in\n"
            "import transformers.models as tm\n"
            "print(json.dumps({'skipped': skipped, 'real_later': getattr(tm, '__file__', None) is not None,\n"
            "    'same_module': tm.qwen2_5_vl is sys.modules['transformers.models.qwen2_5_vl']}))\n"
        ).splitlines()[-1]
    )
    assert got == {"skipped": True, "real_later": True, "same_module": True}


def _embedded(model, images, store):
    import warnings

    from nomic_memory import Embedder

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        Embedder(str(model), backend="cpu").embed_directory(images, store=store, workers=0)
    return store


# What a command-line search leaves out: pandas (pyarrow's shim is refused it), scipy and boto3
# (hidden while the model's code is imported), torch._dynamo's __init__ (convert_frame is what it
# imports), torch.distributed.tensor, torchvision's __init__ (its model zoo) and torchvision.ops'
# (roi_align).
LEFT_OUT = (
    "pandas",
    "scipy",
    "boto3",
    "torch._dynamo.convert_frame",
    "torch.distributed.tensor",
    "torchvision.models",
    "torchvision.ops.roi_align",
)


def _cli_search_in_a_fresh_process(store, queries: list[str], k: int, images: tuple[str, ...] = ()) -> dict:
    args = [a for ref in images for a in ("--image", ref)]
    return json.loads(
        _python(
            "import contextlib, io, json, sys\n"
            "from nomic_memory.cli import app\n"
            "with contextlib.redirect_stdout(io.StringIO()) as out:\n"
            "    try:\n"
            f"        app(['search', *{queries!r}, *{args!r}, '--store', {str(store)!r}, '-k', '{k}', '--json', '--no-server', '--backend', 'cpu'])\n"
            "    except SystemExit as e:\n"
            "        code = e.code\n"
            "print(json.dumps({'code': code, 'out': json.loads(out.getvalue()),\n"
            f"    'left_out': sorted(m for m in {LEFT_OUT!r} if m in sys.modules)}}))\n"
        ).splitlines()[-1]
    )


def _library_hits(store, queries: list, k: int) -> list:
    import boto3  # noqa: F401  (the library's side imports what the command leaves out, as a normal process would)
    import pandas  # noqa: F401
    import scipy.optimize  # noqa: F401
    import torch._dynamo  # noqa: F401
    import torch.distributed.tensor  # noqa: F401
    import torchvision  # noqa: F401

    from nomic_memory import Index

    return [[h.to_dict() for h in hits] for hits in Index.open(store, backend="cpu").search_many(queries, k)]


def test_cli_search_in_process_leaves_out_what_a_query_does_not_use_with_the_same_hits(
    tiny_colqwen, image_dir, tmp_path
):
    """``nomic-memory search --no-server`` imports none of ``LEFT_OUT`` and gives the hits the
    library gives in a process that imports them all (scores to float32 rounding): text queries,
    and an image query (the image processor's torchvision transforms without torchvision's
    ``__init__``)."""
    store = _embedded(tiny_colqwen, image_dir, tmp_path / "store")
    queries = ["a red bicycle", "chart"]
    image = next(p for p in sorted(image_dir.rglob("*.png")))
    got = _cli_search_in_a_fresh_process(store, queries, 4, images=(str(image),))
    assert got["code"] == 0 and got["left_out"] == []
    assert_same_answers(got["out"]["results"], _library_hits(store, [*queries, image], 4))


def test_cli_search_in_process_of_a_peft_adapter_model(image_dir, tmp_path):
    """The same for a model shipped as a PEFT adapter (as Nomic's are): the adapter is loaded and
    merged, and the hits equal the library's."""
    from nomic_memory.model.tiny import build_tiny_adapter, build_tiny_base

    adapter = build_tiny_adapter(tmp_path / "colqwen", build_tiny_base(tmp_path / "base"), "colqwen")
    store = _embedded(adapter, image_dir, tmp_path / "store")
    got = _cli_search_in_a_fresh_process(store, ["a red bicycle"], 3)
    assert got["code"] == 0 and got["left_out"] == []
    assert_same_answers(got["out"]["results"], _library_hits(store, ["a red bicycle"], 3))


def test_cli_search_in_process_when_the_model_code_needs_a_hidden_package(tiny_colqwen, image_dir, tmp_path):
    """Should the model's code need one of the hidden packages after all (here safetensors, which
    transformers' model loading imports unconditionally, hidden on purpose), the import is retried
    with them visible: the command answers as the library does."""
    store = _embedded(tiny_colqwen, image_dir, tmp_path / "store")
    got = json.loads(
        _python(
            "import contextlib, io, json, sys\n"
            "import nomic_memory.model.colpali as colpali\n"
            "colpali._OPTIONAL = (*colpali._OPTIONAL, 'safetensors')\n"
            "retried = []\n"
            "show = colpali._show_left_out\n"
            "colpali._show_left_out = lambda: (retried.append(sorted(colpali._LEFT_OUT)), show())\n"
            "from nomic_memory.cli import app\n"
            "with contextlib.redirect_stdout(io.StringIO()) as out:\n"
            "    try:\n"
            f"        app(['search', 'chart', '--store', {str(store)!r}, '-k', '3', '--json', '--no-server', '--backend', 'cpu'])\n"
            "    except SystemExit as e:\n"
            "        code = e.code\n"
            "print(json.dumps({'code': code, 'out': json.loads(out.getvalue()), 'retried': retried,\n"
            "    'hidden_left': [m for m in ('scipy', 'boto3', 'safetensors') if m in sys.modules and sys.modules[m] is None]}))\n"
        ).splitlines()[-1]
    )
    assert got["code"] == 0 and got["hidden_left"] == []
    assert got["retried"][0] == ["boto3", "safetensors", "scipy"]  # the first import failed, and was retried
    assert_same_answers(got["out"]["results"], _library_hits(store, ["chart"], 3))


def _main_in_a_fresh_process(argv: list[str]) -> subprocess.CompletedProcess:
    """``nomic-memory ARGV`` as the console script runs it (``nomic_memory.cli.main``), with an
    exit handler and an object that reports its finalisation (module teardown) on stderr."""
    code = (
        "import atexit, os, sys\n"
        "import nomic_memory.cli as cli\n"
        "class Finalised:\n"
        "    def __del__(self):\n"
        "        os.write(2, b'finalised\\n')\n"
        "cli._finalised = Finalised()\n"
        "atexit.register(lambda: os.write(2, b'exit handlers ran\\n'))\n"
        f"sys.argv = ['nomic-memory', *{argv!r}]\n"
        "cli.main()\n"
    )
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=cli_env(), timeout=300)


def test_a_search_ends_without_teardown_once_its_answer_is_out(tiny_colqwen, image_dir, tmp_path):
    """A search in a new process ends right after its answer: exit handlers run, the whole JSON
    is on stdout (equal to the library's hits), exit status 0, and no module teardown; a refused
    filter still exits 2 with its one line; a command that did not ask ends as Python ends."""
    store = _embedded(tiny_colqwen, image_dir, tmp_path / "store")
    search = ["search", "chart", "--store", str(store), "-k", "3", "--json", "--no-server", "--backend", "cpu"]
    got = _main_in_a_fresh_process(search)
    assert got.returncode == 0, got.stderr
    assert_same_answers(json.loads(got.stdout)["results"], _library_hits(store, ["chart"], 3))
    assert "exit handlers ran" in got.stderr and "finalised" not in got.stderr
    refused = _main_in_a_fresh_process([*search, "--where", "nosuch = 1"])
    assert refused.returncode == 2 and "unknown column 'nosuch'" in refused.stderr and refused.stdout == ""
    listed = _main_in_a_fresh_process(["store", "list", "--store", str(store), "--json"])
    assert listed.returncode == 0 and json.loads(listed.stdout)
    assert "exit handlers ran" in listed.stderr and "finalised" in listed.stderr


def test_the_exit_without_teardown_waits_for_a_running_thread():
    """Where another (non-daemon) thread still runs, the process ends as Python ends it: the
    thread finishes and objects are finalised."""
    code = (
        "import os, threading, time\n"
        "from nomic_memory.cli.common import exit_without_teardown, finish\n"
        "class Finalised:\n"
        "    def __del__(self):\n"
        "        os.write(2, b'finalised\\n')\n"
        "kept = Finalised()\n"
        "threading.Thread(target=lambda: (time.sleep(0.5), os.write(2, b'thread done\\n'))).start()\n"
        "exit_without_teardown()\n"
        "finish(3)\n"
    )
    got = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=cli_env(), timeout=60)
    assert got.returncode == 3 and "thread done" in got.stderr and "finalised" in got.stderr
