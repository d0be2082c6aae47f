"""Embeddings: equal to colpali-engine's own loop, independent of batching and order; image-only.

The reference is the model card's loop run with colpali-engine's classes on the same files
(decoded with ``nomic_memory.ingest.images.load_image``): ``model(**processor.process_images(images))``,
taking the rows where ``attention_mask == 1`` for ColQwen and the pooled vector for BiQwen.
nomic-memory runs its own lean forward (no per-layer hidden states, only unpadded rows
projected, batches formed by token count) and must give the same numbers in fp32.
"""

from __future__ import annotations

import random

import numpy as np
import pytest
import torch

from conftest import CLEAN_IMAGES
from nomic_memory.ingest.images import discover_images, load_image
from nomic_memory.model.collate import DOC_KEYS, collate, collate_flat, prepare_image
from nomic_memory.model.loading import BIQWEN_KEY_MAPPING, CompactEmbedding
from nomic_memory.store.table import Store, embedding_to_numpy

ATOL = 1e-4
KINDS = ["colqwen", "biqwen"]


def _close(a, b, what: str) -> None:
    a = torch.as_tensor(np.asarray(a, dtype=np.float32))
    b = torch.as_tensor(np.asarray(b, dtype=np.float32))
    assert a.shape == b.shape, f"{what}: shape {tuple(a.shape)} != {tuple(b.shape)}"
    torch.testing.assert_close(a, b, atol=ATOL, rtol=0, msg=lambda m: f"{what}: {m}")


@pytest.fixture(scope="module")
def paths(image_dir):
    found = discover_images(image_dir)
    assert sorted(p.relative_to(image_dir).as_posix() for p in found) == sorted(CLEAN_IMAGES)
    return found


@pytest.fixture(scope="module")
def reference(tiny_models, paths, image_dir):
    """``{kind: {rel_path: float32 array}}`` computed with colpali-engine's classes only."""
    from colpali_engine.models import BiQwen2_5, BiQwen2_5_Processor, ColQwen2_5, ColQwen2_5_Processor

    images = [load_image(p) for p in paths]
    out: dict[str, dict[str, np.ndarray]] = {}
    for kind, d in tiny_models.items():
        if kind == "colqwen":
            model = ColQwen2_5.from_pretrained(str(d), dtype=torch.float32).eval()
            proc = ColQwen2_5_Processor.from_pretrained(str(d))
        else:
            model = BiQwen2_5.from_pretrained(str(d), dtype=torch.float32, key_mapping=dict(BIQWEN_KEY_MAPPING)).eval()
            proc = BiQwen2_5_Processor.from_pretrained(str(d))
        batch = proc.process_images(images)
        # The Qwen2.5-VL processor marks image positions in mm_token_type_ids; it is part of what
        # the model card feeds the model, so the pipeline must feed it too (test below).
        assert "mm_token_type_ids" in batch
        with torch.no_grad():
            ref = model(**batch)
        rows = {}
        for i, p in enumerate(paths):
            r = ref[i][batch["attention_mask"][i].bool()] if kind == "colqwen" else ref[i]
            rows[p.relative_to(image_dir).as_posix()] = r.float().numpy()
        out[kind] = rows
    return out


def _rel(paths, image_dir):
    return [p.relative_to(image_dir).as_posix() for p in paths]


@pytest.mark.parametrize("kind", KINDS)
def test_pipeline_feeds_mm_token_type_ids(loaded, paths, kind):
    proc = loaded[kind].loaded.processor
    items = [prepare_image(proc, load_image(p)) for p in paths[:3]]
    assert all(it.mm_token_type_ids is not None for it in items)
    for batch in (collate(items, proc.tokenizer.pad_token_id), collate_flat(items, proc.tokenizer.pad_token_id)):
        assert set(batch) == set(DOC_KEYS)
        # image positions are typed 1, prompt tokens 0, padding 0
        image_token = proc.image_token_id
        assert torch.equal(batch["mm_token_type_ids"] == 1, batch["input_ids"] == image_token)


@pytest.mark.parametrize("kind", KINDS)
def test_embed_images_matches_colpali_engine(loaded, reference, paths, image_dir, kind):
    emb = loaded[kind]
    assert emb.kind == kind
    got = emb.embed_images(paths)
    for rel, g in zip(_rel(paths, image_dir), got):
        assert isinstance(g, np.ndarray) and g.dtype == np.float32  # numpy by default
        if kind == "colqwen":
            assert g.ndim == 2 and g.shape[1] == 128
        else:
            assert g.ndim == 1 and g.shape[0] == emb.loaded.dim
        _close(g, reference[kind][rel], f"{kind} {rel}")
    # PIL images in, same result
    pil = emb.embed_images([load_image(p) for p in paths[:2]])
    for rel, g in zip(_rel(paths[:2], image_dir), pil):
        _close(g, reference[kind][rel], f"{kind} PIL {rel}")


@pytest.mark.parametrize("kind", KINDS)
def test_stored_embeddings_match_colpali_engine(loaded, reference, image_dir, tmp_path, kind):
    emb = loaded[kind]
    report = emb.embed_directory(image_dir, store=tmp_path / "store", batch_size=4, workers=0)
    assert report.failed == [] and report.embedded == len(CLEAN_IMAGES)
    table = Store(tmp_path / "store").only_table()
    rows = table.to_arrow(["path", "n_vectors", "embedding", "dtype"]).to_pylist()
    assert sorted(r["path"] for r in rows) == sorted(CLEAN_IMAGES)
    for r in rows:
        assert r["dtype"] == "float32"
        stored = embedding_to_numpy(r["embedding"], table.info.kind, table.info.dim)
        if kind == "colqwen":
            assert r["n_vectors"] == stored.shape[0]
        _close(stored, reference[kind][r["path"]], f"stored {kind} {r['path']}")


@pytest.mark.parametrize("kind", KINDS)
def test_batch_size_and_order_independence(loaded, paths, kind):
    emb = loaded[kind]
    base = emb.embed_images(paths, batch_size=1)
    for bs in (3, 8):
        for i, (a, b) in enumerate(zip(base, emb.embed_images(paths, batch_size=bs))):
            _close(b, a, f"{kind} batch {bs} image {i}")
    order = list(range(len(paths)))
    random.Random(7).shuffle(order)
    shuffled = emb.embed_images([paths[i] for i in order], batch_size=3)
    for pos, i in enumerate(order):
        _close(shuffled[pos], base[i], f"{kind} shuffled image {i}")


@pytest.mark.parametrize("kind", KINDS)
def test_directory_batch_size_independence(loaded, image_dir, tmp_path, kind):
    emb = loaded[kind]
    stores = {}
    for bs in (1, 8):
        emb.embed_directory(image_dir, store=tmp_path / f"s{bs}", batch_size=bs, workers=0)
        t = Store(tmp_path / f"s{bs}").only_table()
        stores[bs] = {
            r["path"]: embedding_to_numpy(r["embedding"], t.info.kind, t.info.dim)
            for r in t.to_arrow(["path", "embedding"]).to_pylist()
        }
    assert stores[1].keys() == stores[8].keys()
    for p in stores[1]:
        _close(stores[8][p], stores[1][p], f"{kind} {p}")


@pytest.mark.parametrize("kind", KINDS)
def test_image_only(tiny_models, loaded, paths, kind):
    from nomic_memory import Embedder

    full = loaded[kind]
    lean = Embedder(str(tiny_models[kind]), backend="cpu", image_only=True)
    lm = lean.loaded
    assert lm.image_only
    table = lm.model.language_model.embed_tokens
    assert isinstance(table, CompactEmbedding)
    # Only the document prompt's tokens (+ pad and the image token) are kept.
    assert 0 < table.weight.shape[0] <= 40 < table.num_full_embeddings
    assert lm.image_only_saved_bytes > 0
    full_table = full.loaded.model.language_model.embed_tokens.weight
    assert lm.image_only_saved_bytes == (full_table.shape[0] - table.weight.shape[0]) * full_table.shape[1] * 4
    assert any("image-only" in n for n in lm.notes)

    for i, (a, b) in enumerate(zip(full.embed_images(paths), lean.embed_images(paths))):
        _close(b, a, f"image-only {kind} image {i}")

    with pytest.raises(ValueError, match="image-only"):
        lean.embed_queries(["where is the invoice?"])
    # The compact table itself refuses text tokens rather than returning garbage.
    text_ids = lm.processor.tokenizer("zebra crossing", add_special_tokens=False)["input_ids"]
    outside = [t for t in text_ids if t not in table.kept_ids]
    assert outside
    with pytest.raises(ValueError, match="without --image-only"):
        table(torch.tensor([outside]))
    # The full model still embeds queries.
    q = full.embed_queries(["where is the invoice?"])
    assert len(q) == 1 and np.isfinite(q[0]).all()
    assert isinstance(full.embed_queries("one query"), np.ndarray)  # one text in, one array out
    assert torch.is_tensor(full.embed_images(paths[0], as_tensor=True))
