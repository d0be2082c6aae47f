"""Reliability: no input, race or fault crashes a run, hangs it, or leaves a wrong row.

Real files, real LanceDB stores, real processes racing; nothing mocked.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
from conftest import REPO, cli_env, make_image

from nomic_memory.errors import ModelLoadError, StoreError
from nomic_memory.images import ImageError, discover, hash_bytes, hash_file, load_image, read_file_bounded
from nomic_memory.store import Record, Store, TableInfo, key_to_path, path_to_key


def _py(code: str, timeout: float = 120, env: dict | None = None) -> subprocess.CompletedProcess:
    """Run ``code`` in a fresh interpreter (its own memory accounting, limits and crashes)."""
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], cwd=REPO, env=env or cli_env(),
                          capture_output=True, text=True, timeout=timeout)


# ---------------------------------------------------------------- 9. dtype-independent fingerprint
def _strip_proj(src: Path, dst: Path) -> Path:
    """A copy of a tiny checkpoint without custom_text_proj: it is initialised from the seed."""
    from safetensors.torch import load_file, save_file

    shutil.copytree(src, dst)
    for f in dst.glob("*.safetensors"):
        sd = load_file(str(f))
        save_file({k: v for k, v in sd.items() if "custom_text_proj" not in k}, str(f), metadata={"format": "pt"})
    return dst


@pytest.mark.parametrize("random_proj", [False, True])
def test_fingerprint_independent_of_compute_dtype(tiny_colqwen, tmp_path, random_proj):
    from nomic_memory.backends import select_backend
    from nomic_memory.loading import fingerprint_variants, load_model

    src = _strip_proj(tiny_colqwen, tmp_path / "m") if random_proj else tiny_colqwen
    fp32 = load_model(str(src), backend=select_backend("cpu", dtype="float32"), seed=3)
    bf16 = load_model(str(src), backend=select_backend("cpu", dtype="bfloat16"), seed=3)
    if random_proj:
        assert any("seed" in n for n in fp32.notes)
    assert fp32.fingerprint == bf16.fingerprint != ""
    # Old tables recorded the exact float32 digest: still recognised.
    assert fp32.fingerprint in fingerprint_variants(bf16.model)
    assert fp32.fingerprints >= {fp32.fingerprint} and len(fp32.fingerprints) == 3
    other = load_model(str(src), backend=select_backend("cpu", dtype="float32"), seed=4)
    if random_proj:  # another seed is another projection
        assert other.fingerprint != fp32.fingerprint


def test_pickled_weights_refused_before_loading(tiny_colqwen, tmp_path):
    from nomic_memory.backends import select_backend
    from nomic_memory.loading import load_model

    d = shutil.copytree(tiny_colqwen, tmp_path / "pickled")
    for f in d.glob("*.safetensors"):
        f.unlink()
    marker = tmp_path / "ran"
    # A pickle that would create ``marker`` if it were ever unpickled.
    import pickle

    class Evil:
        def __reduce__(self):
            return (os.mkdir, (str(marker),))

    (d / "pytorch_model.bin").write_bytes(pickle.dumps(Evil()))
    with pytest.raises(ModelLoadError, match=r"only safetensors weights are loaded \(found pytorch_model.bin"):
        load_model(str(d), backend=select_backend("cpu"))
    assert not marker.exists()
