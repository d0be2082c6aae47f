"""Selection logic: backend/dtype/attention, model kind, and the memory report's format.

``select_backend`` takes the machine's capabilities as parameters, so every branch (CUDA with and
without flash-attention, MPS, CPU) is tested on this CPU-only machine; the real probe is checked
through the CLI (test_cli.py: ``--backend cuda`` on a machine without CUDA).
"""

from __future__ import annotations

import json
import re
import shutil

import pytest
import torch

from nomic_memory.memory import MB, MemoryReport, MemoryTracker
from nomic_memory.model.backends import Backend, BackendUnavailable, describe, select_backend
from nomic_memory.model.loading import ModelLoadError, load_model
from nomic_memory.model.variants import ModelKindError, detect_kind_from_files


# ---------------------------------------------------------------- backend and dtype
@pytest.mark.parametrize("flash,attn", [(True, "flash_attention_2"), (False, "sdpa")])
def test_auto_prefers_cuda_bf16(flash, attn):
    for mps in (True, False):  # CUDA wins over MPS
        be = select_backend("auto", cuda=True, mps=mps, flash_attn=flash)
        assert (be.name, be.dtype, be.attn_implementation, be.auto) == ("cuda", torch.bfloat16, attn, True)
        assert be.device.type == "cuda"


def test_auto_mps_fp16_then_cpu_fp32():
    be = select_backend("auto", cuda=False, mps=True, flash_attn=True)
    assert (be.name, be.dtype, be.attn_implementation) == ("mps", torch.float16, "sdpa")
    be = select_backend("auto", cuda=False, mps=False, flash_attn=True)
    assert (be.name, be.dtype, be.attn_implementation, be.device) == ("cpu", torch.float32, "sdpa", torch.device("cpu"))
    assert be.dtype_name == "float32"


def test_forced_backends_when_available():
    assert select_backend("cuda", cuda=True, mps=False, flash_attn=False).name == "cuda"
    assert select_backend("mps", cuda=True, mps=True).name == "mps"  # forcing beats preference
    be = select_backend("CPU", cuda=True, mps=True)
    assert be.name == "cpu" and be.dtype == torch.float32 and not be.auto


def test_forcing_unavailable_backend_raises_clear_error():
    with pytest.raises(
        BackendUnavailable, match=r"'cuda' was requested but no CUDA device is available.*--backend auto or cpu"
    ):
        select_backend("cuda", cuda=False, mps=True)
    with pytest.raises(
        BackendUnavailable, match=r"'mps' was requested but Apple MPS is not available.*--backend auto or cpu"
    ):
        select_backend("mps", cuda=True, mps=False)
    with pytest.raises(BackendUnavailable, match="unknown backend 'tpu'"):
        select_backend("tpu")


def test_dtype_override():
    be = select_backend("cuda", cuda=True, flash_attn=True, dtype="float32")
    assert be.dtype == torch.float32 and be.attn_implementation == "sdpa"  # flash-attn needs 16-bit
    assert (
        select_backend("cuda", cuda=True, flash_attn=True, dtype="float16").attn_implementation == "flash_attention_2"
    )
    assert select_backend("cpu", dtype="bfloat16").dtype == torch.bfloat16
    assert select_backend("mps", mps=True, dtype="auto").dtype == torch.float16
    with pytest.raises(BackendUnavailable, match="unknown dtype 'float8'"):
        select_backend("cpu", dtype="float8")


def test_describe_lines():
    auto = select_backend("auto", cuda=True, mps=False, flash_attn=False)
    assert describe(auto) == [
        "Auto-detected backend: cuda",
        "Using dtype: torch.bfloat16",
        "Attention implementation: sdpa",
    ]
    forced = select_backend("cpu")
    assert describe(forced)[:2] == ["Using backend: cpu", "Using dtype: torch.float32"]


def test_real_probe_matches_torch():
    be = select_backend("auto")
    expected = "cuda" if torch.cuda.is_available() else ("mps" if torch.backends.mps.is_available() else "cpu")
    assert be.name == expected and be.auto
    assert isinstance(be, Backend)


# ---------------------------------------------------------------- model kind
def _write(d, name, obj):
    d.mkdir(parents=True, exist_ok=True)
    (d / name).write_text(json.dumps(obj))
    return d


def test_detect_kind_full_checkpoints(tiny_colqwen, tiny_biqwen):
    assert detect_kind_from_files(tiny_colqwen) == "colqwen"
    assert detect_kind_from_files(tiny_biqwen) == "biqwen"


def test_detect_kind_adapters(tmp_path):
    col = _write(
        tmp_path / "adapter-a",
        "adapter_config.json",
        {
            "peft_type": "LORA",
            "base_model_name_or_path": "Qwen/Qwen2.5-VL-3B-Instruct",
            "modules_to_save": ["custom_text_proj"],
            "target_modules": "(.*(model).*(q_proj|v_proj).*$)",
        },
    )
    assert detect_kind_from_files(col) == "colqwen"
    # A regex target naming the head (Nomic's colnomic repos) also marks a ColQwen adapter.
    col2 = _write(
        tmp_path / "adapter-b",
        "adapter_config.json",
        {"modules_to_save": None, "target_modules": "(.*(model).*(q_proj).*$|.*(custom_text_proj).*$)"},
    )
    assert detect_kind_from_files(col2) == "colqwen"
    # No head anywhere in the config: the adapter's weights decide.
    from safetensors.torch import save_file

    bi = _write(tmp_path / "adapter-c", "adapter_config.json", {"modules_to_save": None, "target_modules": ["q_proj"]})
    save_file(
        {"base_model.model.language_model.layers.0.self_attn.q_proj.lora_A.weight": torch.zeros(2, 2)},
        str(bi / "adapter_model.safetensors"),
    )
    assert detect_kind_from_files(bi) == "biqwen"
    col3 = _write(tmp_path / "adapter-d", "adapter_config.json", {"target_modules": ["q_proj"]})
    save_file(
        {"base_model.model.custom_text_proj.lora_A.weight": torch.zeros(2, 2)}, str(col3 / "adapter_model.safetensors")
    )
    assert detect_kind_from_files(col3) == "colqwen"


def test_undetectable_kind_is_a_clear_error(tmp_path):
    d = _write(tmp_path / "mystery", "config.json", {"architectures": ["Qwen2_5_VLForConditionalGeneration"]})
    with pytest.raises(ModelKindError, match=r"cannot tell whether .*mystery.*--model-kind colqwen\|biqwen"):
        detect_kind_from_files(d)
    empty = tmp_path / "empty-model"
    empty.mkdir()
    with pytest.raises(ModelKindError):
        detect_kind_from_files(empty)
    # The name is the last resort (colpali's naming convention).
    assert detect_kind_from_files(_write(tmp_path / "colqwen-finetune", "config.json", {})) == "colqwen"
    assert detect_kind_from_files(_write(tmp_path / "biqwen-finetune", "config.json", {})) == "biqwen"


def test_model_kind_override_loads_undetectable_dir(tiny_colqwen, tmp_path):
    d = tmp_path / "mystery"
    shutil.copytree(tiny_colqwen, d)
    cfg = json.loads((d / "config.json").read_text())
    cfg["architectures"] = ["Qwen2_5_VLForConditionalGeneration"]
    (d / "config.json").write_text(json.dumps(cfg))
    cpu = select_backend("cpu")
    with pytest.raises(ModelLoadError, match="--model-kind"):
        load_model(str(d), backend=cpu)
    lm = load_model(str(d), backend=cpu, kind="colqwen")
    assert lm.kind == "colqwen" and lm.dim == 128
    with pytest.raises(ModelLoadError, match="unknown model kind"):
        load_model(str(d), backend=cpu, kind="siglip")


def test_missing_model_directory_is_one_sentence(tmp_path):
    cpu = select_backend("cpu")
    with pytest.raises(ModelLoadError) as e:
        load_model("/nonexistent/dir-that-is-not-there", backend=cpu)
    msg = str(e.value)
    assert "\n" not in msg and "'/nonexistent/dir-that-is-not-there' does not exist" in msg
    f = tmp_path / "weights.bin"
    f.write_bytes(b"x")
    with pytest.raises(ModelLoadError, match="is a file, not a model directory"):
        load_model(str(f), backend=cpu)


# ---------------------------------------------------------------- memory report format
PEAK_CPU = re.compile(r"^Peak CPU memory used \(RSS\): \d+\.\d\d GB \(\d+\.\d\d MB\)$")


def test_memory_report_lines_keep_original_format():
    cuda = MemoryReport("cuda", int(14663.45 * MB))
    assert cuda.lines() == ["Peak CUDA memory used: 14.32 GB (14663.45 MB)"]
    cuda = MemoryReport("cuda", int(14663.45 * MB), {"reserved": 16 * 1024 * MB}, baseline_bytes=int(663.45 * MB))
    assert cuda.lines() == [
        "Peak CUDA memory used: 14.32 GB (14663.45 MB)",
        "Peak CUDA memory reserved: 16.00 GB (16384.00 MB)",
        "Memory above loaded model: 13.67 GB (14000.00 MB)",
    ]
    assert MemoryReport("mps", 512 * MB).lines() == ["Peak MPS memory used: 0.50 GB (512.00 MB)"]
    assert MemoryReport("cpu", 3 * 1024 * MB).lines() == ["Peak CPU memory used (RSS): 3.00 GB (3072.00 MB)"]
    d = cuda.to_dict()
    assert d["peak_mb"] == 14663.45 and d["reserved"] == 16 * 1024 * MB


def test_cpu_tracker_measures_a_phase():
    with MemoryTracker("cpu") as mt:
        block = bytearray(64 * MB)
        block[::4096] = b"x" * len(block[::4096])  # touch every page
    rep = mt.report()
    del block
    assert rep.backend == "cpu" and rep.peak_bytes >= rep.baseline_bytes > 0
    assert PEAK_CPU.match(rep.lines()[0]), rep.lines()
