"""Backend (device, dtype, attention) selection.

The choice mirrors what each accelerator does well: bf16 on CUDA (and flash-attention 2 when
the ``flash_attn`` package is importable), fp16 on Apple MPS (no fast bf16 there), fp32 on CPU
(16-bit matmuls on CPU are slow and lossy).
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass

import torch

BACKENDS = ("auto", "cuda", "mps", "cpu")


from nomic_memory.errors import BackendUnavailable  # noqa: E402  (re-exported)


@dataclass(frozen=True)
class Backend:
    name: str  # cuda | mps | cpu
    device: torch.device
    dtype: torch.dtype
    attn_implementation: str
    auto: bool = False

    @property
    def dtype_name(self) -> str:
        return str(self.dtype).removeprefix("torch.")


def cuda_available() -> bool:
    return torch.cuda.is_available()


def mps_available() -> bool:
    return bool(getattr(torch.backends, "mps", None)) and torch.backends.mps.is_available()


def flash_attn_available() -> bool:
    return importlib.util.find_spec("flash_attn") is not None


DTYPES = {"bfloat16": torch.bfloat16, "float16": torch.float16, "float32": torch.float32}


def select_backend(
    requested: str = "auto",
    *,
    cuda: bool | None = None,
    mps: bool | None = None,
    flash_attn: bool | None = None,
    dtype: str | None = None,
) -> Backend:
    """Resolve ``requested`` to a concrete backend.

    The availability flags default to probing this machine; they are parameters so the decision
    logic is testable on a machine without accelerators.
    """
    requested = requested.lower()
    if requested not in BACKENDS:
        raise BackendUnavailable(f"unknown backend {requested!r}; choose one of {', '.join(BACKENDS)}")
    cuda = cuda_available() if cuda is None else cuda
    mps = mps_available() if mps is None else mps
    auto = requested == "auto"
    if auto:
        name = "cuda" if cuda else "mps" if mps else "cpu"
    else:
        name = requested
        if name == "cuda" and not cuda:
            raise BackendUnavailable(
                "backend 'cuda' was requested but no CUDA device is available "
                "(torch.cuda.is_available() is False); use --backend auto or cpu"
            )
        if name == "mps" and not mps:
            raise BackendUnavailable(
                "backend 'mps' was requested but Apple MPS is not available on this machine; use --backend auto or cpu"
            )
    if dtype not in (None, "auto") and dtype not in DTYPES:
        raise BackendUnavailable(f"unknown dtype {dtype!r}; choose one of auto, {', '.join(DTYPES)}")
    forced = DTYPES.get(dtype) if dtype else None
    if name == "cuda":
        fa = flash_attn_available() if flash_attn is None else flash_attn
        dt = forced or torch.bfloat16
        # flash-attention 2 only runs 16-bit inputs.
        attn = "flash_attention_2" if fa and dt != torch.float32 else "sdpa"
        return Backend("cuda", torch.device("cuda"), dt, attn, auto)
    if name == "mps":
        return Backend("mps", torch.device("mps"), forced or torch.float16, "sdpa", auto)
    return Backend("cpu", torch.device("cpu"), forced or torch.float32, "sdpa", auto)


def describe(backend: Backend) -> list[str]:
    """The lines the original script printed about its choices."""
    lines = [
        f"{'Auto-detected' if backend.auto else 'Using'} backend: {backend.name}",
        f"Using dtype: {backend.dtype}",
        f"Attention implementation: {backend.attn_implementation}",
    ]
    return lines
