"""MCP benchmark: the ``search`` tool of ``nomic-memory mcp`` over the stdio transport against
``Index.search`` in this process, on the same store and the same queries.

A store of ``--pages`` pages (random images, embedded with the tiny ColQwen model) is searched
with ``--queries`` distinct text queries (k=``--k``), in ``--rounds`` rounds after a warm-up round
(the model loaded on both sides, the page images of the hits cached).  Each query is searched in
turn in this process (A: ``Index.search``, the model warm) and through the MCP SDK's own client
over stdio (B: JSON-RPC to the ``nomic-memory mcp`` subprocess, its answer parsed, with the
page images the tool attaches), so a drifting machine moves both; the ratio B/A is taken pair by
pair and its median reported, with each side's median latency.  Also measured: the ``stats`` tool
(the protocol's round trip with almost no work), B with ``k`` above the 10 pages that carry
images (the JSON of every hit, images of ten), the cost of the images (pair by pair: the same
query with and without them), and each side's CPU time per search (this process's for A; for B
this process's plus the server process's, from the kernel's accounting): on a shared machine
wall times swing with other load, CPU seconds much less.

    uv run python benchmarks/bench_mcp.py                       # 200 pages, 20 queries, 3 rounds
    uv run python benchmarks/bench_mcp.py --pages 1000 --rounds 5
    uv run python benchmarks/bench_mcp.py --threads 1          # one torch CPU thread on both sides
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
import warnings
from pathlib import Path

import anyio
import numpy as np
import psutil

from common import REPO, cli, cli_env, queries, tiny_model

# Between two measured calls: torch's OpenMP threads keep spinning for a while after a parallel
# region, and on a 2-core machine the spinning of one side's threads would slow the other's call.
PAUSE = 0.3


def build(base: Path, pages: int) -> tuple[Path, Path]:
    """A tiny model and a store of ``pages`` embedded random pages (made once per ``base``)."""
    from PIL import Image

    from nomic_memory.api import Embedder

    model = tiny_model(base / "tiny-colqwen")
    folder, store = base / f"pages{pages}", base / f"store{pages}"
    if not store.exists():
        rng = np.random.default_rng(0)
        folder.mkdir(parents=True, exist_ok=True)
        for i in range(pages):
            w, h = int(rng.integers(160, 400)), int(rng.integers(160, 400))
            Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(folder / f"p{i:05d}.png")
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            Embedder(str(model), backend="cpu").embed_directory(folder, store=store, workers=0)
    return model, store


async def measure(store: Path, qs: list[str], k: int, rounds: int) -> dict:
    from mcp import Client, StdioServerParameters

    from nomic_memory.search.index import Index

    idx = Index.open(store, backend="cpu")
    command, *args = cli("mcp", "--store", store, "--backend", "cpu")
    params = StdioServerParameters(command=command, cwd=str(REPO), env=cli_env(), args=args)
    a_times, w_times, b_times, ratios, w_ratios, stats_times, big_k = [], [], [], [], [], [], []
    a_cpu, b_cpu, bare_times, bare_ratios = [], [], [], []
    me = psutil.Process()

    def cpu(p) -> float:
        t = p.cpu_times()
        return t.user + t.system

    async with Client(params, mode="legacy") as c:
        server = me.children(recursive=True)[-1]  # the nomic-memory mcp subprocess
        t = time.perf_counter()
        await c.call_tool("search", {"query": qs[0], "k": k})
        first_call = time.perf_counter() - t  # the server's model load and the first images
        for q in qs:  # warm-up round: both models warm, every hit's image cached
            idx.search(q, k)
            r = await c.call_tool("search", {"query": q, "k": k})
            assert not r.is_error, r.content[0].text
        for _ in range(rounds):
            for q in qs:
                c0, t0 = cpu(me), time.perf_counter()
                want = idx.search(q, k)  # A
                a_times.append(time.perf_counter() - t0)
                await anyio.sleep(PAUSE)
                a_cpu.append(cpu(me) - c0)  # with its threads' spinning after the call
                c1, s1, t1 = cpu(me), cpu(server), time.perf_counter()
                r = await c.call_tool("search", {"query": q, "k": k})  # B
                b_times.append(time.perf_counter() - t1)
                await anyio.sleep(PAUSE)
                b_cpu.append((cpu(me) - c1) + (cpu(server) - s1))  # the client's parsing and the server's work
                t2 = time.perf_counter()
                await anyio.to_thread.run_sync(idx.search, q, k)  # A on a worker thread, as the server runs it
                w_times.append(time.perf_counter() - t2)
                await anyio.sleep(PAUSE)
                got = json.loads(r.content[0].text)["results"]
                assert [h["id"] for h in got] == [h.id for h in want]  # the same answer
                ratios.append(b_times[-1] / a_times[-1])
                w_ratios.append(b_times[-1] / w_times[-1])
                t4 = time.perf_counter()
                await c.call_tool("search", {"query": q, "k": k, "images": False})  # B without the images
                bare_times.append(time.perf_counter() - t4)
                bare_ratios.append(bare_times[-1] / a_times[-1])
                await anyio.sleep(PAUSE)
                t3 = time.perf_counter()
                await c.call_tool("stats", {})
                stats_times.append(time.perf_counter() - t3)
                await anyio.sleep(PAUSE)
        for q in qs:
            t0 = time.perf_counter()
            await c.call_tool("search", {"query": q, "k": 50})
            big_k.append(time.perf_counter() - t0)
            await anyio.sleep(PAUSE)
    med = statistics.median
    return {
        "pages": idx.table.count(),
        "k": k,
        "queries": len(qs),
        "rounds": rounds,
        "pairs": len(ratios),
        "in_process_ms": round(1000 * med(a_times), 2),
        "in_process_worker_thread_ms": round(1000 * med(w_times), 2),
        "mcp_stdio_ms": round(1000 * med(b_times), 2),
        "ratio_median": round(med(ratios), 3),
        "ratio_p10_p90": [round(float(x), 3) for x in np.percentile(ratios, [10, 90])],
        "ratio_vs_worker_thread_median": round(med(w_ratios), 3),
        "ratio_vs_worker_thread_p10_p90": [round(float(x), 3) for x in np.percentile(w_ratios, [10, 90])],
        "mcp_stdio_no_images_ms": round(1000 * med(bare_times), 2),
        "ratio_no_images_median": round(med(bare_ratios), 3),
        "images_cost_ms": round(1000 * med([b - n for b, n in zip(b_times, bare_times)]), 2),  # paired, same query
        "in_process_cpu_ms": round(1000 * med(a_cpu), 1),
        "mcp_stdio_cpu_ms": round(1000 * med(b_cpu), 1),
        "cpu_ratio": round(med(b_cpu) / med(a_cpu), 3),
        "stats_tool_ms": round(1000 * med(stats_times), 2),
        "mcp_k50_ms": round(1000 * med(big_k), 2),
        "first_call_s": round(first_call, 2),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--pages", type=int, default=200)
    ap.add_argument("--queries", type=int, default=20)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--k", type=int, default=10)
    ap.add_argument(
        "--threads",
        type=int,
        default=None,
        help="OMP_NUM_THREADS for both sides (torch's CPU threads; default: torch's own choice)",
    )
    ap.add_argument("--work", default=str(Path(tempfile.gettempdir()) / "nomic-memory-bench-mcp"))
    args = ap.parse_args()
    if args.threads:  # before torch is imported, here and in the server (which inherits the environment)
        os.environ["OMP_NUM_THREADS"] = str(args.threads)
    _, store = build(Path(args.work), args.pages)
    out = anyio.run(measure, store, queries(args.queries), args.k, args.rounds)
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
