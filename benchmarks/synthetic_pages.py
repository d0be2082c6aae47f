"""Synthetic page embeddings with the structure of real ColPali/ColNomic pages, streamed.

Random unit vectors have no neighbours to find (every index loses on them, see BENCHMARKS.md,
Search); real page embeddings do.  This generator reproduces what matters for a first stage:

* **topics**: ``topics`` groups of pages; each topic has a vocabulary of ``topic_words`` content
  prototypes, correlated with each other (drawn around the topic's own direction);
* **recurrence within a page**: a page uses a few dozen words of its topic (Zipf-weighted), so the
  same kind of patch recurs many times on one page, and across the topic's pages;
* **page-specific content**: every page also has ``own_words`` prototypes of its own (the names,
  numbers and pictures only it holds), which is what lets a query tell its page from its siblings;
* **a background share** (``background``, ~40 %): margins and blank paper, a handful of tightly
  clustered prototypes shared by every page;
* **queries**: ``q_content`` noisy copies (cosine ~0.75) of one page's content patches plus
  ``q_prompt`` fixed prompt-token vectors (the "Query: " tokens every query starts with).

Every page is a pure function of ``(seed, page number)``: pages can be generated in any order, in
batches, as many times as needed, so a million pages (96 GB of float32) never has to be stored.
Noise is drawn from a fixed bank of unit vectors (random row, random sign) rather than fresh
Gaussians, which makes a page ~10x cheaper to generate with the same statistics for this purpose.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

DIM = 128


def _unit(x: np.ndarray) -> np.ndarray:
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


@dataclass(frozen=True)
class PageSpec:
    seed: int = 0
    topics: int = 500
    topic_words: int = 96
    background_words: int = 24
    background: float = 0.4  # share of background patches on a page
    words_per_page: int = 32  # topic words a page uses
    own_words: int = 12  # words no other page has
    vectors: tuple[int, int] = (700, 800)  # vectors per page, uniform in [lo, hi]
    patch_noise: float = 0.45  # ||noise|| relative to the unit prototype (cosine ~0.9)
    word_spread: float = 0.9  # a topic word around its topic's direction
    q_content: int = 16
    q_prompt: int = 4
    q_noise: float = 0.9  # cosine ~0.75 between a query token and the patch it copies


class PageGenerator:
    """``pages(start, stop)`` -> ``(vectors float32 (total, 128), offsets (n+1,))``; ``query(p)``."""

    def __init__(self, spec: PageSpec = PageSpec(), bank_size: int = 1 << 17):
        self.spec = spec
        rng = np.random.default_rng([spec.seed, 0])
        topic_dirs = _unit(rng.standard_normal((spec.topics, DIM), dtype=np.float32))
        words = (
            topic_dirs[:, None, :]
            + spec.word_spread
            * _unit(rng.standard_normal((spec.topics, spec.topic_words, DIM), dtype=np.float32))
            * 1.2
        )
        self.words = _unit(words).astype(np.float32)  # (topics, topic_words, DIM)
        bg_dir = _unit(rng.standard_normal(DIM, dtype=np.float32))
        self.bg = _unit(bg_dir + 0.5 * _unit(rng.standard_normal((spec.background_words, DIM), dtype=np.float32)))
        self.prompt = _unit(rng.standard_normal((spec.q_prompt, DIM), dtype=np.float32))
        self.bank = _unit(rng.standard_normal((bank_size, DIM), dtype=np.float32))
        # topic popularity: Zipf-like, so some topics are crowded (the hard case for recall)
        w = 1.0 / np.arange(1, spec.topics + 1) ** 0.7
        self.topic_p = w / w.sum()

    def _noise(self, rng, n: int, scale: float) -> np.ndarray:
        idx = rng.integers(0, len(self.bank), n)
        sign = rng.integers(0, 2, n).astype(np.float32) * 2 - 1
        return self.bank[idx] * (sign * scale)[:, None]

    def _layout(self, p: int):
        """Page ``p``'s topic, words, own words and patch assignment (no vectors yet)."""
        s = self.spec
        rng = np.random.default_rng([s.seed, 1, p])
        topic = int(rng.choice(s.topics, p=self.topic_p))
        mine = rng.choice(s.topic_words, size=s.words_per_page, replace=False)
        own = _unit(
            self.words[topic, rng.integers(0, s.topic_words, s.own_words)]
            + 0.9 * _unit(rng.standard_normal((s.own_words, DIM), dtype=np.float32))
        )
        n = int(rng.integers(s.vectors[0], s.vectors[1] + 1))
        vocab = np.concatenate([self.words[topic, mine], own])  # content words of this page
        zipf = 1.0 / np.arange(1, len(vocab) + 1) ** 0.8
        zipf = rng.permutation(zipf / zipf.sum())
        is_bg = rng.random(n) < s.background
        word = np.where(is_bg, rng.integers(0, s.background_words, n), rng.choice(len(vocab), size=n, p=zipf))
        return rng, vocab, is_bg, word, n

    def page(self, p: int) -> np.ndarray:
        rng, vocab, is_bg, word, n = self._layout(p)
        proto = np.where(
            is_bg[:, None], self.bg[np.minimum(word, len(self.bg) - 1)], vocab[np.minimum(word, len(vocab) - 1)]
        )
        return _unit(proto + self._noise(rng, n, self.spec.patch_noise)).astype(np.float32)

    def pages(self, start: int, stop: int) -> tuple[np.ndarray, np.ndarray]:
        docs = [self.page(p) for p in range(start, stop)]
        offsets = np.zeros(len(docs) + 1, np.int64)
        offsets[1:] = np.cumsum([len(d) for d in docs])
        return (np.concatenate(docs) if docs else np.zeros((0, DIM), np.float32)), offsets

    def batches(self, n_pages: int, batch: int = 256, start: int = 0):
        """Stream pages ``start .. n_pages`` in batches: ``(first page, vectors, offsets)``."""
        for a in range(start, n_pages, batch):
            v, o = self.pages(a, min(a + batch, n_pages))
            yield a, v, o

    def query(self, p: int, qseed: int = 0) -> np.ndarray:
        """A query whose answer is page ``p``: noisy copies of some of its content patches plus
        the prompt tokens."""
        s = self.spec
        x = self.page(p)
        _, _, is_bg, _, _ = self._layout(p)
        rng = np.random.default_rng([s.seed, 2, p, qseed])
        content = np.flatnonzero(~is_bg)
        pick = x[rng.choice(content, size=min(s.q_content, len(content)), replace=False)]
        q = _unit(pick + self._noise(rng, len(pick), s.q_noise))
        return np.concatenate([self.prompt, q]).astype(np.float32)


__all__ = ["DIM", "PageGenerator", "PageSpec"]
