"""Turning preprocessed inputs into embeddings: collation, the lean forward, queries.

The lean forward computes exactly what colpali-engine's ``ColQwen2_5.forward`` /
``BiQwen2_5.forward`` compute, minus two costs that only matter at scale: it does not ask the
backbone for every layer's hidden states (colpali-engine does, keeping ``layers x batch x seq x
hidden`` alive until the forward returns), and for ColQwen it projects only the rows the attention
mask keeps rather than the padded rectangle.

Its memory stays flat as the batch grows: the vision tower runs the batch's images in chunks of at
most ``plan.chunk_limits`` patches (each image's patches only attend within that image, so
chunking by whole images changes nothing), the tower's last hidden state is not kept, and the pixel
patches are released before the language model runs.  ``plan.plan_memory`` models exactly this.
"""

from __future__ import annotations

import contextlib
import inspect
import sys
import types
from dataclasses import dataclass

import torch
from torch.nn import functional as F
from transformers.models.qwen2_5_vl import Qwen2_5_VLModel

from .loading import LoadedModel
from .plan import chunk_limits

# Overrides of plan.chunk_limits (None: by backend); tests force them down to exercise chunking.
VISION_CHUNK_PATCHES: int | None = None
LM_CHUNK_TOKENS: int | None = None
MLP_CHUNK_TOKENS: int | None = None


def _limits(device_type: str) -> tuple[int, int, int]:
    v, lm_, m = chunk_limits(device_type)
    return (VISION_CHUNK_PATCHES or v, LM_CHUNK_TOKENS or lm_, MLP_CHUNK_TOKENS or m)

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


def collate_flat(items: list[Prepared], pad_token_id: int, pin_memory: bool = False,
                 share: bool = False) -> dict[str, torch.Tensor]:
    """Like :func:`collate`, but with the images' patches concatenated, ``(sum P_i, C)``, which is
    what the vision tower consumes: no padded ``(B, P_max, C)`` copy is ever made.  With
    ``share``, each item's ``pixel_values`` becomes a view into that tensor (same values), so the
    batch holds one copy of its pixels instead of two."""
    out = collate([Prepared(it.input_ids, it.mm_token_type_ids, it.pixel_values[:0], it.image_grid_thw)
                   for it in items], pad_token_id)
    sizes = [it.pixel_values.shape[0] for it in items]
    first = items[0].pixel_values
    flat = torch.empty((sum(sizes), first.shape[1]), dtype=first.dtype, pin_memory=pin_memory)
    start = 0
    for it, n in zip(items, sizes):
        flat[start:start + n].copy_(it.pixel_values)
        if share:  # the item's own copy is released now, not after the whole batch was copied
            it.pixel_values = flat[start:start + n]
            if flat.device.type == "cpu" and not pin_memory:
                # ... and handed back to the OS: otherwise every item's copy (14 MB per page at
                # 768 tokens) stays in malloc's heap next to the flat batch, which measured
                # +250 MB of peak at batch 32 on the medium model.
                trim_heap()
        start += n
    if pin_memory:
        out = {k: v.pin_memory() for k, v in out.items()}
    out["pixel_values"] = flat
    return out


def _flat_pixels(pixel_values: torch.Tensor, grid: torch.Tensor) -> torch.Tensor:
    if pixel_values.dim() == 2:  # already concatenated (collate_flat)
        return pixel_values
    offsets = (grid[:, 0] * grid[:, 1] * grid[:, 2]).tolist()
    return torch.cat([pv[:n] for pv, n in zip(pixel_values, offsets)], dim=0)


def _grouped_window_attention(self, hidden_states: torch.Tensor, cu_seqlens: torch.Tensor,
                              position_embeddings=None, **kwargs) -> torch.Tensor:
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
            o = F.scaled_dot_product_attention(q[None, :, s:s + length], k[None, :, s:s + length],
                                               v[None, :, s:s + length], scale=self.scaling)
            out[:, s:s + length] = o[0]
            continue
        idx = (torch.tensor(starts, device=q.device)[:, None]
               + torch.arange(length, device=q.device)).reshape(-1)
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
    """A decoder layer's gated MLP on at most ``plan.chunk_limits`` tokens at a time: each token's
    output depends on that token only, and the three ``tokens x intermediate`` tensors are the
    largest in the layer (1.6 GB for 32 pages on the 3B model in bf16)."""
    rows = x.reshape(-1, x.shape[-1])
    step = _limits(x.device.type)[2]
    if rows.shape[0] <= step:
        return self.down_proj(self.act_fn(self.gate_proj(x)) * self.up_proj(x))
    out = torch.empty(rows.shape[0], self.down_proj.out_features, dtype=x.dtype, device=x.device)
    for i in range(0, rows.shape[0], step):
        c = rows[i:i + step]
        out[i:i + step] = self.down_proj(self.act_fn(self.gate_proj(c)) * self.up_proj(c))
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


def _image_features(model, pixel_values: torch.Tensor, grid: torch.Tensor,
                    chunk_patches: int | None = -1, tuner_owner=None) -> list[torch.Tensor]:
    """The vision tower's merged features, run on whole images in chunks of at most
    ``chunk_patches`` patches (default: ``plan.chunk_limits``; at least one image per chunk;
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
            out = visual(pixel_values[start:start + total].type(visual.dtype), grid_thw=grid[img:end])
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
    out = Qwen2_5_VLModel.forward(lm.model, **kw, use_cache=False, output_hidden_states=False,
                                  return_dict=True)
    return out.last_hidden_state


_MALLOC_TRIM = None


def trim_heap() -> None:
    """Hand memory that was freed back to the operating system (glibc's ``malloc_trim``).

    Decoding a 30 MB page and resizing it, or a forward's temporaries, leave freed blocks in
    malloc's arenas (glibc raises its mmap threshold after each large free, so later buffers of
    up to 32 MB come from the heap); the process's resident size would keep counting them.
    Called on the CPU backend once per batch (after decoding it, after its forward) and once per
    item while collating (each item's pixel copy, the largest freed blocks): each call costs the
    page faults of re-touching what it gave back, which measured 10 % of the medium model's
    forward time when it also ran after every row group of the language model and every decoded
    image, for no lower peak (freed heap blocks are reused within the batch anyway).  A no-op where glibc is
    not the allocator."""
    global _MALLOC_TRIM
    if _MALLOC_TRIM is None:
        _MALLOC_TRIM = False
        if sys.platform.startswith("linux"):
            try:
                import ctypes

                _MALLOC_TRIM = ctypes.CDLL("libc.so.6").malloc_trim
            except (OSError, AttributeError):
                pass
    if _MALLOC_TRIM:
        _MALLOC_TRIM(0)


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
    groups of rows of at most ``plan.chunk_limits`` tokens: yields ``(first_row, end_row, hidden,
    mask)``, each group trimmed to its own longest row (the batch is left-padded; the columns only
    padding occupies are dropped).  The vision tower runs first, on the whole batch (in chunks of
    patches), and its input pixels are released before any text layer runs."""
    from transformers.modeling_outputs import BaseModelOutputWithPooling

    _fast_language_model(lm.model)
    grid = inputs["image_grid_thw"]
    pixels = _flat_pixels(inputs.pop("pixel_values"), grid)
    feats = _image_features(lm.model, pixels, grid, tuner_owner=lm)
    del pixels
    merge = lm.model.visual.spatial_merge_size ** 2
    per_image = list(torch.split(torch.cat(feats) if len(feats) > 1 else feats[0],
                                 (grid.prod(-1) // merge).tolist()))
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
            out = Qwen2_5_VLModel.forward(lm.model, **kw, use_cache=False, output_hidden_states=False,
                                          return_dict=True)
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
    if "pixel_values" in inputs and _PRECOMPUTED_FEATURES and "image_grid_thw" in inputs \
            and inputs["image_grid_thw"].shape[0] == inputs["attention_mask"].shape[0]:
        for _, _, hidden, mask in _backbone_groups(lm, inputs):
            out.extend(_embed_hidden(lm, hidden, mask))
            del hidden
        return out
    mask = inputs["attention_mask"].bool()
    hidden = _backbone(lm, inputs)
    del inputs
    return _embed_hidden(lm, hidden, mask)


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
                 sort: bool = True, max_padding: float | None = None) -> list[list[int]]:
    """Group item indices into batches of similar token counts.

    Sorting by length and cutting greedily keeps padding near zero (padding is compute and
    memory spent on nothing); each batch holds at most ``batch_size`` items and, when given, at
    most ``max_batch_tokens`` padded tokens (``len(batch) * longest``).

    With ``max_padding`` (a fraction, e.g. 0.05) the sorted items are instead cut where no batch
    pads more than that fraction of its tokens, with as few batches as that allows (and, among
    those, the least padding): a folder of icons, phone snaps and page scans then never pads an
    icon to a page's 768 tokens just because the batch had room.
    """
    order = sorted(range(len(token_counts)), key=lambda i: (token_counts[i], i)) if sort else list(range(len(token_counts)))
    if sort and max_padding is not None:
        return _batches_within_padding(order, token_counts, batch_size, max_batch_tokens, max_padding)
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


def _batches_within_padding(order: list[int], counts: list[int], batch_size: int,
                            max_batch_tokens: int | None, max_padding: float) -> list[list[int]]:
    """Optimal cut of the sorted ``order`` into contiguous batches (dynamic programming over the
    prefix length): fewest batches such that every batch has at most ``max_padding`` padding,
    ``batch_size`` items and ``max_batch_tokens`` padded tokens; ties broken by least padding."""
    t = [counts[i] for i in order]
    n = len(t)
    prefix = [0] * (n + 1)
    for k, v in enumerate(t):
        prefix[k + 1] = prefix[k] + v
    INF = (float("inf"), float("inf"))
    best: list[tuple[float, float]] = [INF] * (n + 1)
    cut = [0] * (n + 1)
    best[0] = (0, 0)
    for j in range(1, n + 1):
        longest = t[j - 1]  # sorted: the batch's last item is its longest
        for i in range(j - 1, max(-1, j - 1 - batch_size), -1):
            size = j - i
            padded = size * longest
            if size > 1:
                if max_batch_tokens and padded > max_batch_tokens:
                    break
                if padded and (padded - (prefix[j] - prefix[i])) > max_padding * padded:
                    break  # adding smaller items only pads more
            cand = (best[i][0] + 1, best[i][1] + padded - (prefix[j] - prefix[i]))
            if cand < best[j]:
                best[j], cut[j] = cand, i
    batches: list[list[int]] = []
    j = n
    while j > 0:
        i = cut[j]
        batches.append(order[i:j])
        j = i
    return batches[::-1]


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
