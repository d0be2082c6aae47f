"""Nomic ships its retrievers as PEFT adapters on Qwen2.5-VL-Instruct: load that layout for real.

A random base model is saved in the hub's key layout (``model.layers.*``, ``visual.*``) and a
LoRA adapter is trained-by-randomness on top, with ``custom_text_proj`` present only as LoRA
factors, as on the hub.  nomic-memory must load it exactly like colpali-engine does (same seeded
head), merge the LoRA factors, and record a fingerprint that changes with the seed.
"""

from __future__ import annotations

import pytest
import torch
from colpali_engine.models import BiQwen2_5, ColQwen2_5, ColQwen2_5_Processor
from PIL import Image

from nomic_memory.model.backends import select_backend
from nomic_memory.model.collate import collate, prepare_image
from nomic_memory.model.encode import forward_embeddings
from nomic_memory.model.loading import BIQWEN_KEY_MAPPING, load_model
from nomic_memory.model.tiny import build_tiny_adapter, build_tiny_base
from nomic_memory.model.variants import detect_kind_from_files


@pytest.fixture(scope="module")
def adapters(tmp_path_factory):
    root = tmp_path_factory.mktemp("adapters")
    base = build_tiny_base(root / "base")
    return {kind: build_tiny_adapter(root / kind, base, kind) for kind in ("colqwen", "biqwen")}


def _image(seed: int) -> Image.Image:
    g = torch.Generator().manual_seed(seed)
    arr = (torch.rand(90, 130, 3, generator=g) * 255).to(torch.uint8).numpy()
    return Image.fromarray(arr)


@pytest.mark.parametrize("kind", ["colqwen", "biqwen"])
def test_adapter_matches_colpali_engine(adapters, kind):
    d = adapters[kind]
    assert detect_kind_from_files(d) == kind
    images = [_image(1), _image(2)]
    proc = ColQwen2_5_Processor.from_pretrained(str(d))
    torch.manual_seed(0)
    if kind == "colqwen":
        ref_model = ColQwen2_5.from_pretrained(str(d), dtype=torch.float32).eval()
    else:
        ref_model = BiQwen2_5.from_pretrained(str(d), dtype=torch.float32, key_mapping=dict(BIQWEN_KEY_MAPPING)).eval()
    batch = proc.process_images(images)
    with torch.no_grad():
        ref = ref_model(**batch)

    lm = load_model(str(d), backend=select_backend("cpu"), seed=0)
    assert lm.kind == kind
    assert any("merged" in n for n in lm.notes), lm.notes
    got = forward_embeddings(
        lm, collate([prepare_image(lm.processor, im) for im in images], lm.processor.tokenizer.pad_token_id)
    )
    for i, g in enumerate(got):
        r = ref[i][batch["attention_mask"][i].bool()] if kind == "colqwen" else ref[i]
        torch.testing.assert_close(g, r, atol=1e-4, rtol=0)


def test_random_head_is_seeded_and_fingerprinted(adapters):
    d = adapters["colqwen"]
    a = load_model(str(d), backend=select_backend("cpu"), seed=0)
    b = load_model(str(d), backend=select_backend("cpu"), seed=0)
    c = load_model(str(d), backend=select_backend("cpu"), seed=7)
    assert any("initialised from seed 0" in n for n in a.notes)
    assert a.fingerprint == b.fingerprint
    assert a.fingerprint != c.fingerprint
