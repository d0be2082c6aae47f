"""Turning collated inputs into embeddings: the lean forward (documents and queries), and
out-of-memory resilience around it.

The lean forward computes exactly what colpali-engine's ``ColQwen2_5.forward`` /
``BiQwen2_5.forward`` compute, minus two costs that only matter at scale: it does not ask the
backbone for every layer's hidden states (colpali-engine does, keeping ``layers x batch x seq x
hidden`` alive until the forward returns), and for ColQwen it projects only the rows the attention
mask keeps rather than the padded rectangle.

Its memory stays flat as the batch grows: the vision tower runs the batch's images in chunks of at
most ``chunks.chunk_limits`` patches (each image's patches only attend within that image, so
chunking by whole images changes nothing), the tower's last hidden state is not kept, and the pixel
patches are released before the language model runs.  ``plan.plan_memory`` models exactly this.
"""

from __future__ import annotations

import contextlib
import inspect
import logging
import types

import torch
from torch.nn import functional as F
from transformers.models.qwen2_5_vl import Qwen2_5_VLModel

from nomic_memory.errors import OutOfMemory, UsageError, out_of_memory_detail, out_of_memory_kind
from nomic_memory.memory import trim_heap
from nomic_memory.model.chunks import chunk_limits
from nomic_memory.model.collate import Prepared, collate_flat
from nomic_memory.model.loading import LoadedModel

log = logging.getLogger("nomic_memory")

# Overrides of chunks.chunk_limits (None: by backend); tests force them down to exercise chunking.
VISION_CHUNK_PATCHES: int | None = None
LM_CHUNK_TOKENS: int | None = None
MLP_CHUNK_TOKENS: int | None = None


def _limits(device_type: str) -> tuple[int, int, int]:
    v, lm_, m = chunk_limits(device_type)
    return (VISION_CHUNK_PATCHES or v, LM_CHUNK_TOKENS or lm_, MLP_CHUNK_TOKENS or m)


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


def _flat_pixels(pixel_values: torch.Tensor, grid: torch.Tensor) -> torch.Tensor:
    if pixel_values.dim() == 2:  # already concatenated (collate_flat)
        return pixel_values
    offsets = (grid[:, 0] * grid[:, 1] * grid[:, 2]).tolist()
    return torch.cat([pv[:n] for pv, n in zip(pixel_values, offsets)], dim=0)


def _grouped_window_attention(
    self, hidden_states: torch.Tensor, cu_seqlens: torch.Tensor, position_embeddings=None, **kwargs
) -> torch.Tensor:
    """Qwen2.5-VL's vision attention with sdpa, one call per *window length* instead of one per
    window: a 768-token image has ~48 windows of 64 patches in each of the tower's windowed
    blocks, and per-window calls spend more time in dispatch than in arithmetic (CPU) or in
    kernel launches (CUDA).  Each window still attends only to itself: same result."""
    from transformers.models.qwen2_5_vl.modeling_qwen2_5_vl import apply_rotary_pos_emb_vision

    n = hidden_states.shape[0]
    q, k, v = self.qkv(hidden_states).reshape(n, 3, self.num_heads, -1).permute(1, 0, 2, 3).unbind(0)
    cos, sin = position_embeddings
    q, k = apply_rotary_pos_emb_vision(q, k, cos, sin)
    q, k, v = (t.transpose(0, 1) for t in (q, k, v))  # (heads, n, head_dim)
    out = torch.empty_like(v)
    bounds = cu_seqlens.tolist()
    by_len: dict[int, list[int]] = {}
    for s, e in zip(bounds, bounds[1:]):
        if e > s:
            by_len.setdefault(e - s, []).append(s)
    for length, starts in by_len.items():
        if len(starts) == 1:
            s = starts[0]
            o = F.scaled_dot_product_attention(
                q[None, :, s : s + length], k[None, :, s : s + length], v[None, :, s : s + length], scale=self.scaling
            )
            out[:, s : s + length] = o[0]
            continue
        idx = (torch.tensor(starts, device=q.device)[:, None] + torch.arange(length, device=q.device)).reshape(-1)
        w = len(starts)
        qs, ks, vs = (t[:, idx].view(t.shape[0], w, length, -1).transpose(0, 1) for t in (q, k, v))
        o = F.scaled_dot_product_attention(qs, ks, vs, scale=self.scaling)  # (w, heads, length, hd)
        out[:, idx] = o.transpose(0, 1).reshape(out.shape[0], w * length, -1)
        del qs, ks, vs, o
    return self.proj(out.transpose(0, 1).reshape(n, -1))


def _patch_embed_matmul(self, hidden_states: torch.Tensor) -> torch.Tensor:
    """The patch embedding's Conv3d (kernel = stride = one patch) as the matrix product it is."""
    w = self.proj.weight
    return hidden_states.to(w.dtype).reshape(-1, w[0].numel()) @ w.reshape(w.shape[0], -1).t()


def _chunked_mlp(self, x: torch.Tensor) -> torch.Tensor:
    """A decoder layer's gated MLP on at most ``chunks.chunk_limits`` tokens at a time: each token's
    output depends on that token only, and the three ``tokens x intermediate`` tensors are the
    largest in the layer (1.6 GB for 32 pages on the 3B model in bf16)."""
    rows = x.reshape(-1, x.shape[-1])
    step = _limits(x.device.type)[2]
    if rows.shape[0] <= step:
        return self.down_proj(self.act_fn(self.gate_proj(x)) * self.up_proj(x))
    out = torch.empty(rows.shape[0], self.down_proj.out_features, dtype=x.dtype, device=x.device)
    for i in range(0, rows.shape[0], step):
        c = rows[i : i + step]
        out[i : i + step] = self.down_proj(self.act_fn(self.gate_proj(c)) * self.up_proj(c))
    return out.view(*x.shape[:-1], -1)


def _fast_language_model(model) -> None:
    lang = model.language_model
    if getattr(lang, "_nomic_memory_fast", False):
        return
    for layer in lang.layers:
        mlp = layer.mlp
        if all(hasattr(mlp, a) for a in ("gate_proj", "up_proj", "down_proj", "act_fn")):
            mlp.forward = types.MethodType(_chunked_mlp, mlp)
    lang._nomic_memory_fast = True


def _fast_vision(model) -> None:
    """Swap two vision-tower methods of this model instance for faster equivalents (once)."""
    visual = model.visual
    if getattr(visual, "_nomic_memory_fast", False):
        return
    if getattr(visual.config, "_attn_implementation", None) == "sdpa":
        for blk in visual.blocks:
            blk.attn.forward = types.MethodType(_grouped_window_attention, blk.attn)
    pe = visual.patch_embed
    if tuple(pe.proj.kernel_size) == tuple(pe.proj.stride) and pe.proj.bias is None:
        pe.forward = types.MethodType(_patch_embed_matmul, pe)
    visual._nomic_memory_fast = True


def _image_features(
    model, pixel_values: torch.Tensor, grid: torch.Tensor, chunk_patches: int | None = -1, tuner_owner=None
) -> list[torch.Tensor]:
    """The vision tower's merged features, run on whole images in chunks of at most
    ``chunk_patches`` patches (default: ``chunks.chunk_limits``; at least one image per chunk;
    ``None``: all at once)."""
    if chunk_patches == -1:
        chunk_patches = _limits(pixel_values.device.type)[0]
    _fast_vision(model)
    visual = model.visual
    patches = (grid[:, 0] * grid[:, 1] * grid[:, 2]).tolist()
    feats: list[torch.Tensor] = []
    start = img = 0
    n = len(patches)
    while img < n:
        end, total = img + 1, patches[img]
        while chunk_patches and end < n and total + patches[end] <= chunk_patches:
            total += patches[end]
            end += 1
        if not chunk_patches:
            end, total = n, sum(patches[img:])
        with _tuned(tuner_owner, "vision", total):
            out = visual(pixel_values[start : start + total].type(visual.dtype), grid_thw=grid[img:end])
        feats.append(out.pooler_output)
        del out  # drops the tower's last hidden state (patches x width) right away
        start += total
        img = end
    return feats


# transformers' Qwen2.5-VL forward accepts precomputed image features (``mm_encoder_outputs``)
# since 5.x; without it, the features are computed inside the forward in one piece.
_PRECOMPUTED_FEATURES = "mm_encoder_outputs" in inspect.signature(Qwen2_5_VLModel.forward).parameters


def _backbone(lm: LoadedModel, inputs: dict) -> torch.Tensor:
    """Last hidden state of the language model.  ``inputs`` (a dict this call may consume:
    ``pixel_values`` is popped so the patches can be freed before the language model runs)."""
    from transformers.modeling_outputs import BaseModelOutputWithPooling

    _fast_language_model(lm.model)
    kw = inputs
    if "pixel_values" in kw and _PRECOMPUTED_FEATURES:
        grid = kw["image_grid_thw"]
        pixels = _flat_pixels(kw.pop("pixel_values"), grid)
        feats = _image_features(lm.model, pixels, grid)
        del pixels
        kw["mm_encoder_outputs"] = {"image": BaseModelOutputWithPooling(pooler_output=tuple(feats))}
        del feats
    elif "pixel_values" in kw:
        kw["pixel_values"] = _flat_pixels(kw["pixel_values"], kw["image_grid_thw"])
    out = Qwen2_5_VLModel.forward(lm.model, **kw, use_cache=False, output_hidden_states=False, return_dict=True)
    return out.last_hidden_state


def _tuned(owner, kind: str, work: int):
    """The thread tuner the pipeline attached (``lm.thread_tuner``, CPU runs), or nothing."""
    tuner = owner.thread_tuner if owner is not None else None
    return tuner(kind, work) if tuner is not None else contextlib.nullcontext()


def _row_groups(lengths: list[int], budget: int) -> list[tuple[int, int]]:
    """Consecutive rows cut so that ``rows x longest`` stays within ``budget`` (>= 1 row each)."""
    groups, start, longest = [], 0, 0
    for i, n in enumerate(lengths):
        if i > start and (i - start + 1) * max(longest, n) > budget:
            groups.append((start, i))
            start, longest = i, 0
        longest = max(longest, n)
    if lengths:
        groups.append((start, len(lengths)))
    return groups


def _backbone_groups(lm: LoadedModel, inputs: dict):
    """The language model's last hidden states for a batch of documents (one image per row), in
    groups of rows of at most ``chunks.chunk_limits`` tokens: yields ``(first_row, end_row, hidden,
    mask)``, each group trimmed to its own longest row (the batch is left-padded; the columns only
    padding occupies are dropped).  The vision tower runs first, on the whole batch (in chunks of
    patches), and its input pixels are released before any text layer runs."""
    from transformers.modeling_outputs import BaseModelOutputWithPooling

    _fast_language_model(lm.model)
    grid = inputs["image_grid_thw"]
    pixels = _flat_pixels(inputs.pop("pixel_values"), grid)
    feats = _image_features(lm.model, pixels, grid, tuner_owner=lm)
    del pixels
    merge = lm.model.visual.spatial_merge_size**2
    per_image = list(torch.split(torch.cat(feats) if len(feats) > 1 else feats[0], (grid.prod(-1) // merge).tolist()))
    del feats
    mask = inputs["attention_mask"]
    lengths = mask.sum(dim=1).tolist()
    width = mask.shape[1]
    for r0, r1 in _row_groups(lengths, _limits(mask.device.type)[1]):
        cols = slice(width - max(lengths[r0:r1]), width)
        kw = {k: inputs[k][r0:r1, cols] for k in ("input_ids", "attention_mask", "mm_token_type_ids") if k in inputs}
        kw["image_grid_thw"] = grid[r0:r1]
        kw["mm_encoder_outputs"] = {"image": BaseModelOutputWithPooling(pooler_output=tuple(per_image[r0:r1]))}
        with _tuned(lm, "text", int(kw["attention_mask"].numel())):
            out = Qwen2_5_VLModel.forward(lm.model, **kw, use_cache=False, output_hidden_states=False, return_dict=True)
        yield r0, r1, out.last_hidden_state, kw["attention_mask"].bool()
        del out, kw


def _embed_hidden(lm: LoadedModel, hidden: torch.Tensor, mask: torch.Tensor) -> list[torch.Tensor]:
    if lm.kind == "colqwen":
        rows = hidden[mask]  # (sum n_i, hidden), row-major: each sequence's kept rows in order
        proj = lm.model.custom_text_proj(rows)
        del rows
        proj = proj / proj.norm(dim=-1, keepdim=True)
        return [t.cpu() for t in torch.split(proj, mask.sum(dim=1).tolist())]
    pooled = hidden[:, -1]
    pooled = pooled / pooled.norm(dim=-1, keepdim=True)
    return list(pooled.cpu().unbind(0))


@torch.inference_mode()
def forward_embeddings(lm: LoadedModel, inputs: dict) -> list[torch.Tensor]:
    """Embeddings for a collated batch, one tensor per row: ColQwen (n_tokens, 128) for the
    positions with attention mask 1; BiQwen (dim,) pooled from the last position."""
    inputs = to_device(inputs, lm)  # a new dict: the backbone may consume it
    out: list[torch.Tensor] = []
    if (
        "pixel_values" in inputs
        and _PRECOMPUTED_FEATURES
        and "image_grid_thw" in inputs
        and inputs["image_grid_thw"].shape[0] == inputs["attention_mask"].shape[0]
    ):
        for _, _, hidden, mask in _backbone_groups(lm, inputs):
            out.extend(_embed_hidden(lm, hidden, mask))
            del hidden
        return out
    mask = inputs["attention_mask"].bool()
    hidden = _backbone(lm, inputs)
    del inputs
    return _embed_hidden(lm, hidden, mask)


def is_oom(e: BaseException) -> bool:
    """An allocation failure (CUDA, MPS, torch's CPU allocator, oneDNN, Python's MemoryError)."""
    return isinstance(e, torch.OutOfMemoryError) or out_of_memory_kind(e) is not None


def _unsplittable(e: BaseException, items: list[Prepared]) -> OutOfMemory:
    kind = out_of_memory_kind(e) or "memory"
    tokens = sum(int(it.image_grid_thw.prod()) // 4 for it in items)
    return OutOfMemory(
        f"out of {kind} embedding a single image ({tokens} visual tokens) even after splitting "
        f"the batch ({out_of_memory_detail(e)}); the batches embedded so far are stored. Free "
        "memory, or use a smaller model or --image-only"
    )


class BatchEncoder:
    """Runs the forward; on out-of-memory splits the batch, retries, and remembers the cap."""

    def __init__(self, lm: LoadedModel):
        self.lm = lm
        self.cap: int | None = None
        self.splits = 0
        self.pin = lm.backend.name == "cuda"

    def __call__(self, items: list[Prepared]) -> list[torch.Tensor]:
        if self.cap is not None and len(items) > self.cap:
            out: list[torch.Tensor] = []
            for i in range(0, len(items), self.cap):
                out.extend(self(items[i : i + self.cap]))
            return out
        try:
            out = forward_embeddings(
                self.lm, collate_flat(items, self.lm.processor.tokenizer.pad_token_id, self.pin, share=True)
            )
            if self.lm.backend.name == "cpu":
                trim_heap()
            return out
        except Exception as e:
            if not is_oom(e):
                raise
            if len(items) == 1:
                self._free()
                raise _unsplittable(e, items) from None
            self._free()
            self.splits += 1
            half = max(1, len(items) // 2)
            self.cap = half if self.cap is None else min(self.cap, half)
            log.warning("out of memory on a batch of %d images: retrying in batches of %d", len(items), half)
            return self(items[:half]) + self(items[half:])

    def _free(self) -> None:
        if self.lm.backend.name == "cuda":
            torch.cuda.empty_cache()
        elif self.lm.backend.name == "mps":
            torch.mps.empty_cache()


@torch.inference_mode()
def embed_queries(
    lm: LoadedModel, texts: list[str], batch_size: int = 16, template: str | None = None
) -> list[torch.Tensor]:
    """Query embeddings as the model card does it (``process_queries``); ``template`` formats
    each text first (e.g. ``"Query: {}"``)."""
    if lm.image_only:
        raise UsageError("this model was loaded image-only and cannot embed text queries")
    out: list[torch.Tensor] = []
    for i in range(0, len(texts), batch_size):
        chunk = texts[i : i + batch_size]
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
