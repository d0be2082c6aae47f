"""Preprocessed inputs and how a batch of them is put together for the model.

A decode worker hands back one :class:`Prepared` per image (the processor's output without
padding); the model needs a left-padded batch.  Collation is kept apart from the forward so the
same batch layout serves the local pipeline, the Ray workers and the equivalence tests.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from PIL import Image

from nomic_memory.errors import InputError, out_of_memory_detail, out_of_memory_kind
from nomic_memory.ingest.decode import DecodeTask, decode_image, fit_to_target
from nomic_memory.ingest.documents import load_page
from nomic_memory.ingest.images import pad_extreme_aspect, to_rgb
from nomic_memory.memory import trim_heap

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
    return Prepared(
        b["input_ids"][0][mask].clone(),
        None if mm is None else mm[0][mask].clone(),
        b["pixel_values"][0][:n].clone(),
        b["image_grid_thw"][0].clone(),
    )


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
        ids[i, L - n :] = it.input_ids
        mask[i, L - n :] = 1
        if has_mm:
            mm[i, L - n :] = it.mm_token_type_ids
        pv[i, : it.pixel_values.shape[0]] = it.pixel_values
    out = {
        "input_ids": ids,
        "attention_mask": mask,
        "pixel_values": pv,
        "image_grid_thw": torch.stack([it.image_grid_thw for it in items]),
    }
    if has_mm:
        out["mm_token_type_ids"] = mm
    if pin_memory:
        out = {k: v.pin_memory() for k, v in out.items()}
    return out


def collate_flat(
    items: list[Prepared], pad_token_id: int, pin_memory: bool = False, share: bool = False
) -> dict[str, torch.Tensor]:
    """Like :func:`collate`, but with the images' patches concatenated, ``(sum P_i, C)``, which is
    what the vision tower consumes: no padded ``(B, P_max, C)`` copy is ever made.  With
    ``share``, each item's ``pixel_values`` becomes a view into that tensor (same values), so the
    batch holds one copy of its pixels instead of two."""
    out = collate(
        [Prepared(it.input_ids, it.mm_token_type_ids, it.pixel_values[:0], it.image_grid_thw) for it in items],
        pad_token_id,
    )
    sizes = [it.pixel_values.shape[0] for it in items]
    first = items[0].pixel_values
    flat = torch.empty((sum(sizes), first.shape[1]), dtype=first.dtype, pin_memory=pin_memory)
    start = 0
    for it, n in zip(items, sizes):
        flat[start : start + n].copy_(it.pixel_values)
        if share:  # the item's own copy is released now, not after the whole batch was copied
            it.pixel_values = flat[start : start + n]
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


def decode_and_prepare(processor, source: DecodeTask | Path | Image.Image) -> Prepared:
    """Decode one input (a task, a path, or an in-memory image) and run the processor on it."""
    if isinstance(source, Image.Image):
        return prepare_image(processor, fit_to_target(pad_extreme_aspect(to_rgb(source)), processor.image_processor))
    task = source if isinstance(source, DecodeTask) else DecodeTask(Path(source))
    return prepare_image(processor, decode_image(task, processor.image_processor))


def decode_task(processor, task: DecodeTask, lock=None) -> Prepared | InputError:
    """Decode one input; a failure is returned as the input's :class:`InputError`, never raised.
    ``lock``: held around the processor only (decoding pixels releases the GIL and runs in
    parallel; a fast tokenizer shared by threads must not be entered twice at once)."""
    try:
        img = decode_image(task, processor.image_processor)
        if lock is None:
            return prepare_image(processor, img)
        with lock:
            return prepare_image(processor, img)
    except InputError as e:
        return e
    except Exception as e:  # a processor failure on one input must not stop the run
        kind = out_of_memory_kind(e)
        reason = f"out of {kind} decoding it ({out_of_memory_detail(e)})" if kind else f"{type(e).__name__}: {e}"
        return InputError(task.path, reason, task.page or None)


def decode_tasks(processor, tasks: list[DecodeTask]) -> list[Prepared | InputError]:
    """Decode several inputs; a failure is returned as the input's :class:`InputError`, never raised."""
    out = [decode_task(processor, task) for task in tasks]
    trim_heap()
    return out


def prepare_page(processor, path, page: int, size: tuple[int, int]) -> Prepared:
    """One page, ready for the model: :func:`~nomic_memory.ingest.documents.load_page` at ``size``,
    then the processor.

    With ``size`` from :func:`~nomic_memory.ingest.documents.render_size`, the processor's own
    resize is a no-op, so the page has exactly ``batching.visual_tokens(*size, ip)`` visual tokens,
    as planned."""
    return prepare_image(processor, load_page(path, page, size))
