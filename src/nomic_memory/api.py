"""The Python API the CLI is a thin shell over.

>>> from nomic_memory import Embedder
>>> emb = Embedder("colnomic-3b")                      # or a hub id / local directory
>>> vectors = emb.embed_images(["page1.png", pil_image])
>>> report = emb.embed_directory("scans/", store="~/my-store")
"""

from __future__ import annotations

from pathlib import Path

import torch

from .backends import Backend, select_backend
from .loading import DEFAULT_SEED, LoadedModel, load_model
from .pipeline import RunReport, embed_directory, embed_pil_images
from .store import Store, default_store_path
from .variants import VARIANTS


class Embedder:
    """A loaded retriever.  ``model`` is a variant name, a hub id or a local directory."""

    def __init__(self, model: str | None = None, *, backend: str | Backend = "auto", kind: str | None = None,
                 image_only: bool = False, seed: int = DEFAULT_SEED, revision: str | None = None,
                 max_visual_tokens: int | None = None):
        self.backend = backend if isinstance(backend, Backend) else select_backend(backend)
        variant, name = (model, None) if (model is None or model in VARIANTS) else (None, model)
        self.seed = seed
        self.loaded: LoadedModel = load_model(name, variant, backend=self.backend, kind=kind,
                                              image_only=image_only, seed=seed, revision=revision,
                                              max_visual_tokens=max_visual_tokens)

    @property
    def kind(self) -> str:
        return self.loaded.kind

    def embed_images(self, images: list, batch_size: int = 8) -> list[torch.Tensor]:
        """Embeddings (float32, CPU) in input order: ``(n_tokens, 128)`` per image for ColNomic,
        ``(dim,)`` for Nomic.  ``images`` are paths or PIL images."""
        return [e.float() for e in embed_pil_images(self.loaded, list(images), batch_size)]

    def embed_queries(self, texts: list[str], template: str | None = None) -> list[torch.Tensor]:
        from .encode import embed_queries

        return [e.float() for e in embed_queries(self.loaded, list(texts), template=template)]

    def embed_directory(self, directory: str | Path, store: str | Path | Store | None = None,
                        **kwargs) -> RunReport:
        """Embed a directory into a store (resumable: unchanged files are skipped)."""
        return embed_directory(self.loaded, directory, store if store is not None else default_store_path(),
                               seed=self.seed, **kwargs)
