"""Start-up imports only what a command uses: the command line's modules, lancedb without its REST
namespace client's API classes, and the model loaded without transformers' table of every model.
Each check runs in a fresh interpreter (what a new command does)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from conftest import cli_env

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
