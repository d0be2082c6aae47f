"""A PLAID baseline (fast-plaid) on the synthetic pages of ``synthetic_pages.py``, for the First
stage section of BENCHMARKS.md.

fast-plaid pins an exact torch build (``torch==2.11.0``), so it is never a dependency of this
project: it runs in an environment of its own, and this script imports nothing from
``nomic_memory`` (numpy, torch and fast-plaid only)::

    uv venv /tmp/plaid-env --python 3.11
    uv pip install --python /tmp/plaid-env/bin/python fast-plaid
    /tmp/plaid-env/bin/python benchmarks/bench_plaid.py --pages 20000 --queries 20 --runs 3

The queries are those of ``bench_firststage.py million`` with the same ``--pages`` and ``--seed``
(the same source pages), and recall@10 is measured the same way: the exact float32 MaxSim top 10,
computed here in the pass that generates the pages, against the top 10 that PLAID returns (its
scores come from its compressed residuals, so they are approximate as well as its candidates).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from synthetic_pages import PageGenerator, PageSpec  # noqa: E402


def maxsim_pages(qs: list[np.ndarray], v: np.ndarray, offs: np.ndarray) -> np.ndarray:
    """Exact float32 MaxSim of every query against every page of one batch: ``(queries, pages)``."""
    out = np.empty((len(qs), len(offs) - 1), np.float32)
    for qi, q in enumerate(qs):
        sims = q.astype(np.float32) @ v.T  # (T, vectors)
        out[qi] = np.maximum.reduceat(sims, offs[:-1], axis=1).sum(axis=0)
    return out


def dir_bytes(d: Path) -> int:
    return sum(f.stat().st_size for f in d.rglob("*") if f.is_file())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--pages", type=int, default=20000)
    ap.add_argument("--queries", type=int, default=20)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--nbits", type=int, default=2, help="residual bits per dimension (PLAID/ColBERTv2: 2)")
    ap.add_argument("--full-scores", type=int, nargs="+", default=[256, 1024, 4096])
    ap.add_argument("--probe", type=int, default=8)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--index", type=Path, default=None, help="index folder (default: a temporary one)")
    a = ap.parse_args()
    from fast_plaid import search

    torch.set_num_threads(a.threads)
    g = PageGenerator(PageSpec(seed=a.seed))
    rng = np.random.default_rng(a.seed + 1)
    sources = rng.choice(a.pages, a.queries, replace=False)  # as bench_firststage.py million
    qs = [g.query(int(p)) for p in sources]
    t0 = time.perf_counter()
    docs, exact = [], np.zeros((len(qs), a.pages), np.float32)
    for start, v, o in g.batches(a.pages, 500):
        exact[:, start : start + len(o) - 1] = maxsim_pages(qs, v, o)
        docs += [torch.from_numpy(v[o[i] : o[i + 1]].astype(np.float16)) for i in range(len(o) - 1)]
    gen_s = time.perf_counter() - t0
    index = a.index or Path(tempfile.mkdtemp(prefix="plaid-"))
    shutil.rmtree(index, ignore_errors=True)
    t1 = time.perf_counter()
    ix = search.FastPlaid(index=str(index), device="cpu")
    ix.create(documents_embeddings=[d.float() for d in docs], nbits=a.nbits)
    build_s = time.perf_counter() - t1
    del docs
    want = [set(np.argsort(-exact[qi], kind="stable")[:10].tolist()) for qi in range(len(qs))]
    res: dict = {
        "pages": a.pages,
        "queries": a.queries,
        "nbits": a.nbits,
        "threads": a.threads,
        "torch": torch.__version__,
        "generate_and_exact_s": round(gen_s, 1),
        "build_s": round(build_s, 1),
        "index_bytes": dir_bytes(index),
        "bytes_per_page": round(dir_bytes(index) / a.pages),
        # fast-plaid keeps a float32 copy of the input (embeddings.npy) beside its compressed
        # index; what a search reads is the rest (codes, residuals, centroids, inverted lists)
        "bytes_per_page_without_raw_copy": round(
            (dir_bytes(index) - sum(f.stat().st_size for f in index.glob("embeddings*.npy"))) / a.pages
        ),
    }
    tq = [torch.from_numpy(q).unsqueeze(0) for q in qs]
    ix.search(queries_embeddings=tq[0], top_k=10, show_progress=False)  # warm-up
    for nfull in a.full_scores:
        runs = []
        for _ in range(a.runs):
            lat, cpu, rec, found = [], [], [], []
            for qi, q in enumerate(tq):
                w, c = time.perf_counter(), time.process_time()
                hits = ix.search(
                    queries_embeddings=q, top_k=10, n_full_scores=nfull, n_ivf_probe=a.probe, show_progress=False
                )[0]
                lat.append(time.perf_counter() - w)
                cpu.append(time.process_time() - c)
                got = {int(d) for d, _ in hits}
                rec.append(len(got & want[qi]) / 10)
                found.append(int(sources[qi]) in got)
            runs.append((np.percentile(lat, 50), np.percentile(lat, 95), np.mean(rec), np.median(cpu), np.mean(found)))
        res[f"full_scores_{nfull}"] = {
            "p50_ms": round(1000 * statistics.median(r[0] for r in runs), 1),
            "p95_ms": round(1000 * statistics.median(r[1] for r in runs), 1),
            "cpu_p50_ms": round(1000 * statistics.median(r[3] for r in runs), 1),
            "recall10": round(statistics.median(r[2] for r in runs), 3),
            "source_page_in_top10": round(statistics.median(r[4] for r in runs), 3),
            "load": os.getloadavg()[0],
        }
        print(json.dumps(res), flush=True)
    if a.index is None:
        shutil.rmtree(index, ignore_errors=True)


if __name__ == "__main__":
    main()
