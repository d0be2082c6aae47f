"""The four Nomic retrievers, and how to tell which kind an arbitrary model is.

A *kind* decides everything downstream: ``colqwen`` models (ColNomic) emit one 128-d vector per
token and are scored by late interaction (MaxSim); ``biqwen`` models (Nomic) emit one pooled
vector per image and are scored by a dot product.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

KINDS = ("colqwen", "biqwen")


@dataclass(frozen=True)
class Variant:
    name: str
    repo_id: str
    kind: str
    base_model: str
    dim: int  # per-vector dimension of the stored embeddings


VARIANTS: dict[str, Variant] = {
    "colnomic-7b": Variant(
        "colnomic-7b", "nomic-ai/colnomic-embed-multimodal-7b", "colqwen", "Qwen/Qwen2.5-VL-7B-Instruct", 128
    ),
    "colnomic-3b": Variant(
        "colnomic-3b", "nomic-ai/colnomic-embed-multimodal-3b", "colqwen", "Qwen/Qwen2.5-VL-3B-Instruct", 128
    ),
    "nomic-7b": Variant(
        "nomic-7b", "nomic-ai/nomic-embed-multimodal-7b", "biqwen", "Qwen/Qwen2.5-VL-7B-Instruct", 3584
    ),
    "nomic-3b": Variant(
        "nomic-3b", "nomic-ai/nomic-embed-multimodal-3b", "biqwen", "Qwen/Qwen2.5-VL-3B-Instruct", 2048
    ),
}
DEFAULT_VARIANT = "colnomic-7b"


from nomic_memory.errors import ModelKindError  # noqa: E402  (re-exported)


def variant_for_repo(repo_id: str) -> Variant | None:
    for v in VARIANTS.values():
        if v.repo_id.lower() == repo_id.lower():
            return v
    return None


def kind_from_name(name: str) -> str | None:
    """Guess from a repo/dir name: Nomic's and colpali's naming conventions are explicit."""
    low = name.lower().rsplit("/", 1)[-1]
    if low.startswith("col") or "colqwen" in low or "colnomic" in low:
        return "colqwen"
    if low.startswith("bi") or "biqwen" in low or "nomic-embed-multimodal" in low:
        return "biqwen"
    return None


def detect_kind_from_files(model_dir: str | Path) -> str:
    """Detect the kind of a local model directory.

    ``config.json``'s ``architectures`` names the class for full checkpoints. PEFT adapters (how
    Nomic ships its models) have only ``adapter_config.json``; there a ColQwen adapter carries the
    ``custom_text_proj`` head in its modules to save, while a BiQwen adapter has none.
    """
    d = Path(model_dir)
    cfg = d / "config.json"
    if cfg.is_file():
        archs = json.loads(cfg.read_text()).get("architectures") or []
        for a in archs:
            if a.startswith("ColQwen"):
                return "colqwen"
            if a.startswith("BiQwen"):
                return "biqwen"
    adapter = d / "adapter_config.json"
    if adapter.is_file():
        acfg = json.loads(adapter.read_text())
        modules = " ".join(map(str, (acfg.get("modules_to_save") or []) + [acfg.get("target_modules") or ""]))
        if "custom_text_proj" in modules:
            return "colqwen"
        weights = d / "adapter_model.safetensors"
        if weights.is_file():
            from safetensors import safe_open

            with safe_open(weights, "pt") as f:
                if any("custom_text_proj" in k for k in f.keys()):
                    return "colqwen"
            return "biqwen"
    guess = kind_from_name(d.name)
    if guess:
        return guess
    raise ModelKindError(
        f"cannot tell whether {d} is a ColQwen2.5 (multi-vector) or BiQwen2.5 (single-vector) model "
        "from its config.json/adapter_config.json; pass --model-kind colqwen|biqwen"
    )
