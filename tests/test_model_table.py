"""transformers' table of every model's names, read from a file between processes
(``nomic_memory.model.model_table``): the same table transformers builds, used by the next
process, made again when the distribution is installed again or the file is damaged, and never
for a transformers that is not an installed distribution."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import pytest

from conftest import cli_env
from nomic_memory.model.model_table import cached_table, table_key


def _python(code: str, cache) -> dict:
    """Run ``IMPORT`` then ``code`` in a fresh interpreter whose cache folder is ``cache``."""
    env = cli_env()
    env["XDG_CACHE_HOME"] = str(cache)
    out = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(IMPORT) + textwrap.dedent(code)],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout.splitlines()[-1])


IMPORT = """
    import json, sys
    from pathlib import Path
    from nomic_memory.model import model_table
    model_table.install()
    import transformers
    from transformers.utils import import_utils
    models = Path(transformers.__file__).parent / "models"
    key = model_table.table_key(models)
    """


@pytest.mark.slow
def test_the_next_process_reads_the_table_transformers_builds(tmp_path):
    first = _python(
        """
        own = import_utils.define_import_structure.__wrapped__(models, prefix="models")  # transformers' own function
        cached = model_table.cached_table(lambda: None, key)  # read back from the file the import wrote
        print(json.dumps({"key": key, "same": cached == own, "size": len(own[frozenset()]),
            "names": transformers.Qwen2_5_VLConfig.__name__}))
        """,
        tmp_path,
    )
    assert first["key"] and first["same"] and first["size"] > 500 and first["names"] == "Qwen2_5_VLConfig"
    path = tmp_path / "nomic-memory" / "transformers" / f"{first['key']}.json"
    doc = json.loads(path.read_text())
    no_backend = next(entries for backends, entries in doc if backends == [])
    no_backend["models.made_up.modeling_made_up"] = ["MadeUpModel"]  # only a table read from the file has it
    path.write_text(json.dumps(doc))
    second = _python(
        """
        print(json.dumps({"made_up": "MadeUpModel" in dir(transformers), "real": transformers.AutoConfig.__name__}))
        """,
        tmp_path,
    )
    assert second == {"made_up": True, "real": "AutoConfig"}


def _fake_install(root, version="1.0"):
    site = root / "lib" / "site-packages"
    (site / "transformers" / "models").mkdir(parents=True, exist_ok=True)
    dist = site / f"transformers-{version}.dist-info"
    dist.mkdir(exist_ok=True)
    (dist / "RECORD").write_text(f"transformers/__init__.py,sha256=x,1\n# {version}\n")
    return site / "transformers" / "models"


def test_the_key_follows_the_installation(tmp_path):
    models = _fake_install(tmp_path / "a")
    key = table_key(models)
    assert key is not None and table_key(models) == key
    record = next(models.parent.parent.glob("transformers-*.dist-info")) / "RECORD"
    st = record.stat()
    os.utime(record, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000))  # installed again
    assert table_key(models) not in (None, key)
    assert table_key(_fake_install(tmp_path / "b")) != table_key(models)  # another environment
    checkout = tmp_path / "src" / "transformers" / "models"  # an editable checkout: no key
    checkout.mkdir(parents=True)
    assert table_key(checkout) is None


def test_a_damaged_or_unwritable_file_means_the_table_is_computed(tmp_path):
    table = {frozenset(): {"models.a.modeling_a": {"A", "B"}}, frozenset({"torch"}): {"models.b.b": {"C"}}}
    calls = []

    def compute():
        calls.append(1)
        return table

    assert cached_table(compute, "k", tmp_path) == table and cached_table(compute, "k", tmp_path) == table
    assert len(calls) == 1  # the second read the file
    (tmp_path / "k.json").write_text('[["torch"], {"models')  # cut short
    assert cached_table(compute, "k", tmp_path) == table and len(calls) == 2
    assert cached_table(compute, "k", tmp_path) == table and len(calls) == 2  # written whole again
    blocked = tmp_path / "file"
    blocked.write_text("")
    assert cached_table(compute, "k", blocked / "sub") == table and len(calls) == 3
