"""The LangChain and LlamaIndex retrievers against the real libraries: the same pages, order and
scores as :meth:`Index.search`, each with its page image."""

from __future__ import annotations

import base64
import importlib
import io
import sys
import warnings

import pytest
from PIL import Image

from conftest import make_image

QUERIES = ["a red bicycle", "quarterly revenue table"]


@pytest.fixture(scope="module")
def store(tmp_path_factory, tiny_colqwen):
    from nomic_memory import Embedder

    base = tmp_path_factory.mktemp("retrievers")
    for i in range(7):
        make_image(base / "pages" / f"p{i}.png", 160 + 20 * i, 140, seed=i)
    make_image(base / "pages" / "big.png", 1600, 900, seed=20)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        emb = Embedder(str(tiny_colqwen), backend="cpu")
        emb.embed_directory(base / "pages", store=base / "store", workers=0)
    return {"path": base / "store", "emb": emb, "pages": base / "pages"}


@pytest.fixture(scope="module")
def index(store):
    from nomic_memory import Index

    return Index.open(store["path"], backend="cpu")


def decoded(b64: str) -> Image.Image:
    img = Image.open(io.BytesIO(base64.b64decode(b64)))
    assert img.format == "JPEG"
    return img


def expected_size(path) -> tuple[int, int]:
    w, h = Image.open(path).size
    scale = min(1.0, 768 / max(w, h))
    return round(w * scale), round(h * scale)


def test_langchain_documents_equal_index_search(store, index):
    pytest.importorskip("langchain_core", reason="the langchain extra (uv sync --extra langchain)")
    from langchain_core.documents import Document
    from langchain_core.retrievers import BaseRetriever

    from nomic_memory.retrievers.langchain import NomicMemoryRetriever

    r = NomicMemoryRetriever.from_store(store["path"], k=8, model=store["emb"])
    assert isinstance(r, BaseRetriever)
    for q in QUERIES:
        docs = r.invoke(q)
        want = index.search(q, k=8)
        assert all(isinstance(d, Document) for d in docs)
        assert [
            (
                d.id,
                d.metadata["id"],
                d.metadata["path"],
                d.metadata["root"],
                d.metadata["page"],
                d.metadata["rank"],
                d.metadata["score"],
            )
            for d in docs
        ] == [(w.id, w.id, w.path, w.root, w.page, w.rank, w.score) for w in want]
        for d in docs:
            assert d.metadata["image_mime_type"] == "image/jpeg"
            assert decoded(d.metadata["image_base64"]).size == expected_size(d.metadata["file"])
            assert d.page_content == d.metadata["path"]
    # a filter, no images, and the async path LangChain offers every retriever
    r2 = NomicMemoryRetriever(index=index, k=3, where="width > 1000", images=False)
    import asyncio

    docs = asyncio.run(r2.ainvoke(QUERIES[0]))
    assert [d.metadata["path"] for d in docs] == ["big.png"] and "image_base64" not in docs[0].metadata
    assert docs[0].metadata["score"] == index.search(QUERIES[0], k=3, where="width > 1000")[0].score


def test_llamaindex_nodes_equal_index_search(store, index):
    pytest.importorskip("llama_index.core", reason="the llamaindex extra (uv sync --extra llamaindex)")
    from llama_index.core.retrievers import BaseRetriever
    from llama_index.core.schema import ImageNode, NodeWithScore

    from nomic_memory.retrievers.llamaindex import NomicMemoryRetriever

    r = NomicMemoryRetriever(index, k=8)
    assert isinstance(r, BaseRetriever)
    for q in QUERIES:
        nodes = r.retrieve(q)
        want = index.search(q, k=8)
        assert all(isinstance(n, NodeWithScore) and isinstance(n.node, ImageNode) for n in nodes)
        assert [
            (n.node.node_id, n.score, n.node.metadata["path"], n.node.metadata["page"], n.node.metadata["rank"])
            for n in nodes
        ] == [(w.id, w.score, w.path, w.page, w.rank) for w in want]
        for n in nodes:
            assert n.node.image_mimetype == "image/jpeg" and n.node.image_path == n.node.metadata["file"]
            assert decoded(n.node.image).size == expected_size(n.node.image_path)


def test_a_page_whose_file_is_gone_comes_without_image(store, tmp_path, tiny_colqwen):
    pytest.importorskip("langchain_core", reason="the langchain extra (uv sync --extra langchain)")
    pytest.importorskip("llama_index.core", reason="the llamaindex extra (uv sync --extra llamaindex)")
    from nomic_memory import Embedder, Index
    from nomic_memory.retrievers.langchain import NomicMemoryRetriever
    from nomic_memory.retrievers.llamaindex import NomicMemoryRetriever as LlamaRetriever

    for i in range(2):
        make_image(tmp_path / "pages" / f"q{i}.png", 120, 100, seed=40 + i)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        Embedder(str(tiny_colqwen), backend="cpu").embed_directory(tmp_path / "pages", store=tmp_path / "s", workers=0)
    (tmp_path / "pages" / "q0.png").unlink()
    idx = Index.open(tmp_path / "s", backend="cpu")
    docs = {d.metadata["path"]: d for d in NomicMemoryRetriever(index=idx, k=2).invoke("x")}
    assert "no longer there" in docs["q0.png"].metadata["image_error"]
    assert "image_base64" not in docs["q0.png"].metadata and "image_base64" in docs["q1.png"].metadata
    nodes = {n.node.metadata["path"]: n for n in LlamaRetriever(idx, k=2).retrieve("x")}
    assert nodes["q0.png"].node.image is None and nodes["q1.png"].node.image


@pytest.mark.parametrize("module, library", [("langchain", "langchain_core"), ("llamaindex", "llama_index")])
def test_missing_library_is_one_clear_error(monkeypatch, module, library):
    from nomic_memory.errors import MissingExtra

    for name in list(sys.modules):
        if name == library or name.startswith(library + "."):
            monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, library, None)  # import of it fails as if not installed
    monkeypatch.delitem(sys.modules, f"nomic_memory.retrievers.{module}", raising=False)
    with pytest.raises(MissingExtra, match=rf"nomic-memory\[{module}\]"):
        importlib.import_module(f"nomic_memory.retrievers.{module}")
