"""Turning preprocessed inputs into embeddings: collation, the lean forward, queries.

The lean forward computes exactly what colpali-engine's ``ColQwen2_5.forward`` /
``BiQwen2_5.forward`` compute, minus two costs that only matter at scale: it does not ask the
backbone for every layer's hidden states (colpali-engine does, keeping ``layers x batch x seq x
hidden`` alive until the forward returns), and for ColQwen it projects only the rows the attention
mask keeps rather than the padded rectangle.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from transformers.models.qwen2_5_vl import Qwen2_5_VLModel

from .loading import LoadedModel

DOC_KEYS = ("input_ids", "attention_mask", "mm_token_type_ids", "pixel_values", "image_grid_thw")


@dataclass
class Prepared:
    """One image's processor output, unpadded (what a decode worker hands back)."""

    input_ids: torch.Tensor  # (L,)
    mm_token_type_ids: torch.Tensor | None  # (L,)
    pixel_values: torch.Tensor  # (P, C)
    image_grid_thw: torch.Tensor  # (3,)

    @property
    def seq_len(self) -> int:
        return int(self.input_ids.shape[0])


def prepare_image(processor, image) -> Prepared:
    """Run the model card's ``process_images`` on one image and strip the batch dimension."""
    b = processor.process_images([image])
    mask = b["attention_mask"][0].bool()
    mm = b.get("mm_token_type_ids")
    n = int(b["image_grid_thw"][0].prod())
    return Prepared(b["input_ids"][0][mask].clone(), None if mm is None else mm[0][mask].clone(),
                    b["pixel_values"][0][:n].clone(), b["image_grid_thw"][0].clone())


def collate(items: list[Prepared], pad_token_id: int, pin_memory: bool = False) -> dict[str, torch.Tensor]:
    """Left-pad a batch exactly as ``process_images`` pads it (the models expect left padding)."""
    L = max(it.seq_len for it in items)
    P = max(it.pixel_values.shape[0] for it in items)
    B = len(items)
    ids = torch.full((B, L), pad_token_id, dtype=items[0].input_ids.dtype)
    mask = torch.zeros((B, L), dtype=torch.long)
    has_mm = items[0].mm_token_type_ids is not None
    mm = torch.zeros((B, L), dtype=torch.long) if has_mm else None
    pv = torch.zeros((B, P, items[0].pixel_values.shape[1]), dtype=items[0].pixel_values.dtype)
    for i, it in enumerate(items):
        n = it.seq_len
        ids[i, L - n:] = it.input_ids
        mask[i, L - n:] = 1
        if has_mm:
            mm[i, L - n:] = it.mm_token_type_ids
        pv[i, : it.pixel_values.shape[0]] = it.pixel_values
    out = {"input_ids": ids, "attention_mask": mask, "pixel_values": pv,
           "image_grid_thw": torch.stack([it.image_grid_thw for it in items])}
    if has_mm:
        out["mm_token_type_ids"] = mm
    if pin_memory:
        out = {k: v.pin_memory() for k, v in out.items()}
    return out


def to_device(batch: dict, lm: LoadedModel) -> dict:
    dev = lm.backend.device
    nb = dev.type == "cuda"
    out = {}
    for k, v in batch.items():
        if not isinstance(v, torch.Tensor):
            continue
        v = v.to(dev, non_blocking=nb)
        if k == "pixel_values":
            v = v.to(lm.backend.dtype)
        out[k] = v
    return out


def _backbone(lm: LoadedModel, inputs: dict) -> torch.Tensor:
    kw = dict(inputs)
    if "pixel_values" in kw:
        grid = kw["image_grid_thw"]
        offsets = (grid[:, 1] * grid[:, 2]).tolist()
        kw["pixel_values"] = torch.cat([pv[:n] for pv, n in zip(kw["pixel_values"], offsets)], dim=0)
    out = Qwen2_5_VLModel.forward(lm.model, **kw, use_cache=False, output_hidden_states=False,
                                  return_dict=True)
    return out.last_hidden_state


@torch.inference_mode()
def forward_embeddings(lm: LoadedModel, inputs: dict) -> list[torch.Tensor]:
    """Embeddings for a collated batch, one tensor per row: ColQwen (n_tokens, 128) for the
    positions with attention mask 1; BiQwen (dim,) pooled from the last position."""
    inputs = to_device(inputs, lm)
    hidden = _backbone(lm, inputs)
    mask = inputs["attention_mask"].bool()
    if lm.kind == "colqwen":
        rows = hidden[mask]  # (sum n_i, hidden), row-major: each sequence's kept rows in order
        del hidden
        proj = lm.model.custom_text_proj(rows)
        proj = proj / proj.norm(dim=-1, keepdim=True)
        counts = mask.sum(dim=1).tolist()
        return [t.cpu() for t in torch.split(proj, counts)]
    pooled = hidden[:, -1]
    pooled = pooled / pooled.norm(dim=-1, keepdim=True)
    return list(pooled.cpu().unbind(0))


def visual_tokens(width: int, height: int, image_processor) -> int:
    """Visual tokens the processor will produce for an image of this size (known before decoding)."""
    from transformers.models.qwen2_vl.image_processing_qwen2_vl import smart_resize

    h, w = target_size(width, height, image_processor)
    merge = image_processor.merge_size
    patch = image_processor.patch_size
    _ = smart_resize
    return (h // patch // merge) * (w // patch // merge)


def target_size(width: int, height: int, image_processor) -> tuple[int, int]:
    """(height, width) the processor resizes an image to."""
    from transformers.models.qwen2_vl.image_processing_qwen2_vl import smart_resize

    size = image_processor.size
    min_px = size.get("shortest_edge") if hasattr(size, "get") else size["shortest_edge"]
    max_px = size.get("longest_edge") if hasattr(size, "get") else size["longest_edge"]
    factor = image_processor.patch_size * image_processor.merge_size
    return smart_resize(height, width, factor=factor, min_pixels=min_px, max_pixels=max_px)


def make_batches(token_counts: list[int], batch_size: int, max_batch_tokens: int | None = None,
                 sort: bool = True) -> list[list[int]]:
    """Group item indices into batches of similar token counts.

    Sorting by length and cutting greedily keeps padding near zero (padding is compute and
    memory spent on nothing); each batch holds at most ``batch_size`` items and, when given, at
    most ``max_batch_tokens`` padded tokens (``len(batch) * longest``).
    """
    order = sorted(range(len(token_counts)), key=lambda i: (token_counts[i], i)) if sort else list(range(len(token_counts)))
    batches: list[list[int]] = []
    cur: list[int] = []
    longest = 0
    for i in order:
        n = token_counts[i]
        new_longest = max(longest, n)
        if cur and (len(cur) >= batch_size or (max_batch_tokens and new_longest * (len(cur) + 1) > max_batch_tokens)):
            batches.append(cur)
            cur, new_longest = [], n
        cur.append(i)
        longest = new_longest
    if cur:
        batches.append(cur)
    return batches


def padding_overhead(token_counts: list[int], batches: list[list[int]]) -> float:
    """Fraction of processed tokens that are padding."""
    real = sum(token_counts[i] for b in batches for i in b)
    padded = sum(len(b) * max(token_counts[i] for i in b) for b in batches)
    return 0.0 if padded == 0 else (padded - real) / padded


def is_oom(e: BaseException) -> bool:
    if isinstance(e, torch.OutOfMemoryError):
        return True
    return isinstance(e, RuntimeError) and "out of memory" in str(e).lower()


@torch.inference_mode()
def embed_queries(lm: LoadedModel, texts: list[str], batch_size: int = 16,
                  template: str | None = None) -> list[torch.Tensor]:
    """Query embeddings as the model card does it (``process_queries``); ``template`` formats
    each text first (e.g. ``"Query: {}"``)."""
    if lm.image_only:
        raise ValueError("this model was loaded image-only and cannot embed text queries")
    out: list[torch.Tensor] = []
    for i in range(0, len(texts), batch_size):
        chunk = texts[i:i + batch_size]
        if template:
            chunk = [template.format(t) if "{}" in template else template + t for t in chunk]
        b = lm.processor.process_queries(chunk)
        inputs = to_device(dict(b), lm)
        hidden = _backbone(lm, inputs)
        mask = inputs["attention_mask"].bool()
        if lm.kind == "colqwen":
            proj = lm.model.custom_text_proj(hidden[mask])
            proj = proj / proj.norm(dim=-1, keepdim=True)
            out.extend(t.cpu() for t in torch.split(proj, mask.sum(1).tolist()))
        else:
            pooled = hidden[:, -1]
            out.extend((pooled / pooled.norm(dim=-1, keepdim=True)).cpu().unbind(0))
    return out
