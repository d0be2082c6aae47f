"""Build small random-weight Qwen2.5-VL retrievers offline.

The real Nomic checkpoints are 7-16 GB downloads.  Tests, benchmarks and the offline demo need
models that exercise *exactly* the same classes (``ColQwen2_5`` / ``BiQwen2_5`` and their
processors, Qwen2.5-VL's vision tower, M-RoPE, the document prompt) without any download.  These
builders create such models from scratch, save them with ``save_pretrained`` and so produce a
directory that loads through the same code path as a hub model.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from nomic_memory.errors import UsageError
from nomic_memory.model.loading import BIQWEN_KEY_MAPPING
from nomic_memory.model.qwen import VISION_PATCHING, qwen_vl_config, token_ids

SPECIAL_TOKENS = [
    "<|endoftext|>",
    "<|im_start|>",
    "<|im_end|>",
    "<|vision_start|>",
    "<|vision_end|>",
    "<|image_pad|>",
    "<|video_pad|>",
]


@dataclass(frozen=True)
class TinySize:
    """Dimensions of a random model.  ``max_visual_tokens`` bounds the processor's resize."""

    hidden: int
    layers: int
    heads: int
    kv_heads: int
    intermediate: int
    vision_hidden: int
    vision_depth: int
    vision_heads: int
    vision_intermediate: int
    max_visual_tokens: int
    min_visual_tokens: int = 4
    vocab_size: int | None = None  # rows of the text-embedding table (None: the tokenizer's)


SIZES: dict[str, TinySize] = {
    # A few hundred kB: unit tests.
    "tiny": TinySize(64, 2, 4, 2, 128, 32, 2, 2, 64, max_visual_tokens=64),
    # ~90 MB: benchmarks where the model's cost must dominate Python overhead.
    "medium": TinySize(512, 6, 8, 4, 1536, 256, 6, 4, 1024, max_visual_tokens=768),
    # Qwen2.5-VL-3B's text width and full vocabulary (the 1.2 GB fp32 embedding table that
    # --image-only drops) on a shallow stack: measures the image-only saving on a CPU.
    "vocab3b": TinySize(2048, 2, 16, 2, 4096, 256, 2, 4, 1024, max_visual_tokens=768, vocab_size=151936),
}


def build_processor(kind: str, size: TinySize):
    """A real ColQwen2_5/BiQwen2_5 processor over a byte-level tokenizer with Qwen's specials."""
    from colpali_engine.models import BiQwen2_5_Processor, ColQwen2_5_Processor
    from tokenizers.pre_tokenizers import ByteLevel
    from transformers import Qwen2TokenizerFast, Qwen2VLImageProcessor, Qwen2VLVideoProcessor

    alphabet = sorted(ByteLevel.alphabet())
    vocab = {ch: i for i, ch in enumerate(alphabet)}
    tok = Qwen2TokenizerFast(
        vocab=vocab, merges=[], unk_token=None, bos_token=None, eos_token="<|endoftext|>", pad_token="<|endoftext|>"
    )
    tok.add_special_tokens({"additional_special_tokens": SPECIAL_TOKENS[1:]})
    image_processor = Qwen2VLImageProcessor(
        patch_size=14,
        temporal_patch_size=2,
        merge_size=2,
        min_pixels=size.min_visual_tokens * 784,
        max_pixels=size.max_visual_tokens * 784,
    )
    video_processor = Qwen2VLVideoProcessor(patch_size=14, temporal_patch_size=2, merge_size=2)
    cls = ColQwen2_5_Processor if kind == "colqwen" else BiQwen2_5_Processor
    return cls(image_processor=image_processor, tokenizer=tok, video_processor=video_processor)


def build_config(tokenizer, size: TinySize):
    head_dim = size.hidden // size.heads
    half = head_dim // 2
    t = half // 4
    mrope = [half - 2 * ((half - t) // 2), (half - t) // 2, (half - t) // 2]
    text_config = dict(
        vocab_size=size.vocab_size or len(tokenizer),
        hidden_size=size.hidden,
        intermediate_size=size.intermediate,
        num_hidden_layers=size.layers,
        num_attention_heads=size.heads,
        num_key_value_heads=size.kv_heads,
        max_position_embeddings=4096,
        rms_norm_eps=1e-6,
        rope_parameters={"rope_type": "default", "rope_theta": 1_000_000.0, "mrope_section": mrope},
    )
    vision_config = dict(
        depth=size.vision_depth,
        hidden_size=size.vision_hidden,
        intermediate_size=size.vision_intermediate,
        num_heads=size.vision_heads,
        **VISION_PATCHING,
        fullatt_block_indexes=[size.vision_depth - 1],
    )
    return qwen_vl_config(text_config, vision_config, token_ids(tokenizer))


def build_tiny_model(out_dir: str | Path, kind: str = "colqwen", size: str = "tiny", seed: int = 0) -> Path:
    """Create a random ``kind`` ("colqwen" or "biqwen") model of ``size`` in ``out_dir``.

    The directory holds ``config.json`` (architectures = ColQwen2_5/BiQwen2_5), safetensors
    weights and the processor files, so it loads exactly like a downloaded model.
    """
    from colpali_engine.models import BiQwen2_5, ColQwen2_5

    if kind not in ("colqwen", "biqwen"):
        raise UsageError(f"kind must be 'colqwen' or 'biqwen', not {kind!r}")
    dims = SIZES[size]
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    processor = build_processor(kind, dims)
    config = build_config(processor.tokenizer, dims)
    torch.manual_seed(seed)
    cls = ColQwen2_5 if kind == "colqwen" else BiQwen2_5
    model = cls(config)
    with torch.no_grad():
        # Random init keeps the residual stream tiny; scale embeddings so outputs differ by input.
        model.get_input_embeddings().weight.normal_(0, 1.0)
        if kind == "colqwen":
            # A zero bias turns all-zero padding rows into 0/0 after L2 normalisation.
            model.custom_text_proj.bias.uniform_(-0.5, 0.5)
    model.save_pretrained(out)
    processor.save_pretrained(out)
    return out


LORA_TARGETS = r"(.*(model).*(down_proj|gate_proj|up_proj|k_proj|q_proj|v_proj|o_proj).*$|.*(custom_text_proj).*$)"


def build_tiny_base(out_dir: str | Path, size: str = "tiny", seed: int = 1) -> Path:
    """A random ``Qwen2_5_VLForConditionalGeneration`` saved in the hub's key layout
    (``model.layers.*``, ``visual.*``, ``lm_head``): a stand-in for Qwen/Qwen2.5-VL-*-Instruct."""
    from transformers import Qwen2_5_VLForConditionalGeneration

    dims = SIZES[size]
    out = Path(out_dir)
    processor = build_processor("colqwen", dims)
    config = build_config(processor.tokenizer, dims)
    config.architectures = ["Qwen2_5_VLForConditionalGeneration"]
    torch.manual_seed(seed)
    model = Qwen2_5_VLForConditionalGeneration(config)
    with torch.no_grad():
        model.get_input_embeddings().weight.normal_(0, 1.0)
    model.save_pretrained(out)
    processor.save_pretrained(out)
    return out


def build_tiny_adapter(
    out_dir: str | Path, base_dir: str | Path, kind: str = "colqwen", seed: int = 0, lora_seed: int = 2
) -> Path:
    """A PEFT LoRA adapter on ``base_dir``, shaped like Nomic's hub repos.

    As there, the ColQwen head ``custom_text_proj`` exists only as LoRA factors in the adapter:
    its base weights are initialised at load time from the RNG (``seed``).
    """
    from colpali_engine.models import BiQwen2_5, BiQwen2_5_Processor, ColQwen2_5, ColQwen2_5_Processor
    from peft import LoraConfig, get_peft_model

    out = Path(out_dir)
    torch.manual_seed(seed)
    if kind == "colqwen":
        model = ColQwen2_5.from_pretrained(str(base_dir), dtype=torch.float32)
        proc = ColQwen2_5_Processor.from_pretrained(str(base_dir))
        targets = LORA_TARGETS
    else:
        model = BiQwen2_5.from_pretrained(str(base_dir), dtype=torch.float32, key_mapping=dict(BIQWEN_KEY_MAPPING))
        proc = BiQwen2_5_Processor.from_pretrained(str(base_dir))
        targets = LORA_TARGETS.split("|.*(custom")[0] + ")"
    peft_model = get_peft_model(model, LoraConfig(r=4, lora_alpha=8, target_modules=targets))
    g = torch.Generator().manual_seed(lora_seed)
    with torch.no_grad():
        for name, p in peft_model.named_parameters():
            if "lora_B" in name:  # PEFT initialises B to zero: make the adapter matter
                p.copy_(torch.randn(p.shape, generator=g) * 0.05)
    peft_model.save_pretrained(out)
    proc.save_pretrained(out)
    return out
