"""Qwen2.5-VL, the architecture under every Nomic retriever: what the random-weight models
(:mod:`nomic_memory.model.tiny`) and the memory planner's shipped architectures
(:mod:`nomic_memory.perf.plan`) share, and a ``Qwen2_5_VLConfig`` built from its parts.

Importing this module imports neither torch nor transformers (the planner stays instant)."""

from __future__ import annotations

import copy

#: How the vision tower cuts an image: 14-pixel patches, merged 2 x 2 into one visual token,
#: frames in pairs, windowed attention over 112-pixel windows.
VISION_PATCHING = {"patch_size": 14, "spatial_merge_size": 2, "temporal_patch_size": 2, "window_size": 112}

#: The config's special-token fields and the token each names in Qwen's tokenizer.
TOKEN_FIELDS = {
    "bos_token_id": "<|endoftext|>",
    "eos_token_id": "<|im_end|>",
    "pad_token_id": "<|endoftext|>",
    "image_token_id": "<|image_pad|>",
    "video_token_id": "<|video_pad|>",
    "vision_start_token_id": "<|vision_start|>",
    "vision_end_token_id": "<|vision_end|>",
}
#: The fields of :data:`TOKEN_FIELDS` that belong to the text model's config.
TEXT_TOKEN_FIELDS = ("bos_token_id", "eos_token_id", "pad_token_id")


def token_ids(tokenizer) -> dict[str, int]:
    """:data:`TOKEN_FIELDS` with each token's id in ``tokenizer``."""
    return {name: tokenizer.convert_tokens_to_ids(token) for name, token in TOKEN_FIELDS.items()}


def qwen_vl_config(text_config: dict, vision_config: dict, ids: dict[str, int], attn_implementation: str | None = None):
    """A ``Qwen2_5_VLConfig`` from its text and vision parts and the special-token ``ids`` (keyed
    as :data:`TOKEN_FIELDS`; the text model's own among them override ``text_config``'s where
    given).  The vision tower's output width is the text model's; ``attn_implementation``, where
    given, is set on the config and both parts."""
    from transformers import Qwen2_5_VLConfig

    # Copies all the way down: the config may rewrite nested parts (rope_parameters) in place.
    text = copy.deepcopy({**text_config, **{k: ids[k] for k in TEXT_TOKEN_FIELDS if k in ids}})
    vision = copy.deepcopy({**vision_config, "out_hidden_size": text["hidden_size"]})
    top = {k: ids[k] for k in TOKEN_FIELDS if k not in TEXT_TOKEN_FIELDS}
    cfg = Qwen2_5_VLConfig(text_config=text, vision_config=vision, **top)
    if attn_implementation is not None:
        cfg._attn_implementation = attn_implementation
        for sub in (cfg.text_config, cfg.vision_config):
            sub._attn_implementation = attn_implementation
    return cfg


__all__ = ["TEXT_TOKEN_FIELDS", "TOKEN_FIELDS", "VISION_PATCHING", "qwen_vl_config", "token_ids"]
