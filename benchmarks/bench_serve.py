"""Server benchmark: ``nomic-memory serve`` under concurrent clients, against its baselines.

A store of ``--docs`` pages x ``--vectors`` random unit float16 vectors (the tiny ColQwen model's
128-d, written directly with the Store API under the tiny model's table name and TableInfo, so
the server's model check passes) is searched over loopback by ``--clients`` concurrent clients,
each sending ``--per-client`` text queries one after another (k=10).  Measured, ``--runs`` times
(medians reported):

* the server: queries/s over all requests, p50/p95 request latency, failures (must be 0);
* (a) one ``nomic-memory search`` process per query (the whole process: import, model load, one
  scan), on ``--cli-samples`` of the queries: queries/s = 1 / median wall time;
* (b) the floor: ``Index.search_many`` in this process on the same queries (one embedding pass,
  one scan), queries/s = queries / wall time;
* a soak: the same clients looping for ``--soak-seconds``; the server's RSS sampled every 5 s;
  growth = median of the last third of the samples over the median of the first third (after a
  30 s warm-up): single samples swing by several percent with each batch's working set.
  ``--runs 0`` runs only the soak.

    uv run python benchmarks/bench_serve.py --runs 3 --soak-seconds 180
    uv run python benchmarks/bench_serve.py --docs 2000 --runs 1 --soak-seconds 20   # quick
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np

from common import REPO, cli, cli_env, queries, size_options, tiny_model


def build_store(path: Path, model_dir: Path, docs: int, vectors: int, seed: int = 0) -> str:
    """Write the synthetic table (once) and return its name."""
    from nomic_memory.model.backends import select_backend
    from nomic_memory.model.loading import load_model
    from nomic_memory.store.table import Record, Store, TableInfo

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        lm = load_model(str(model_dir), None, backend=select_backend("cpu"), kind="colqwen")
    info = TableInfo(lm.model_id, lm.revision, lm.kind, lm.dim, lm.fingerprint, "float16", 0)
    store = Store(path)
    if lm.table_name in store.table_names() and store.open_table(lm.table_name).count() == docs:
        return lm.table_name
    table = store.create_or_open(lm.table_name, info)
    rng = np.random.default_rng(seed)
    chunk = 1000
    for a in range(0, docs, chunk):
        n = min(chunk, docs - a)
        x = rng.standard_normal((n, vectors, info.dim), dtype=np.float32)
        x /= np.linalg.norm(x, axis=2, keepdims=True)
        x = x.astype(np.float16)
        recs = [
            Record(
                root="/synthetic",
                path=f"doc{a + i:06d}.png",
                content_hash=f"{a + i:016x}",
                size=1,
                mtime=0.0,
                width=224,
                height=224,
                embedding=x[i],
                dtype="float32",
            )
            for i in range(n)
        ]
        table.upsert(recs, known_new={r.path for r in recs})
    table.optimize()
    return lm.table_name


def start_server(store: Path) -> tuple[subprocess.Popen, str]:
    proc = subprocess.Popen(
        cli("serve", "--store", store, "--port", "0", "--backend", "cpu"),
        cwd=REPO,
        env=cli_env(),
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.time() + 300
    while time.time() < deadline:
        line = proc.stderr.readline()
        m = re.search(r"(http://127\.0\.0\.1:\d+)/", line)
        if m:
            return proc, m.group(1)
        if not line and proc.poll() is not None:
            break
    proc.kill()
    raise RuntimeError("the server did not start")


async def load(url: str, qs: list[str], clients: int, per_client: int, until: float | None = None) -> dict:
    """``clients`` concurrent clients, each sending its queries in turn (looping until ``until``)."""
    import httpx

    lat: list[float] = []
    failures = 0
    sent = 0

    async def client(c, i):
        nonlocal failures, sent
        j = 0
        while j < per_client or (until is not None and time.perf_counter() < until):
            q = qs[(i * per_client + j) % len(qs)]
            t = time.perf_counter()
            try:
                r = await c.post("/search", json={"queries": [q], "k": 10})
                ok = r.status_code == 200 and len(r.json()["results"][0]) == 10
            except Exception:
                ok = False
            lat.append(time.perf_counter() - t)
            failures += not ok
            sent += 1
            j += 1

    limits = __import__("httpx").Limits(max_connections=clients + 4)
    t0 = time.perf_counter()
    async with httpx.AsyncClient(base_url=url, timeout=600, limits=limits) as c:
        await asyncio.gather(*[client(c, i) for i in range(clients)])
    wall = time.perf_counter() - t0
    return {
        "queries": sent,
        "failures": failures,
        "seconds": wall,
        "qps": sent / wall,
        "p50_ms": 1000 * float(np.percentile(lat, 50)),
        "p95_ms": 1000 * float(np.percentile(lat, 95)),
    }


def cli_per_query(store: Path, qs: list[str]) -> list[float]:
    out = []
    for q in qs:
        t = time.perf_counter()
        r = subprocess.run(
            cli("search", "--store", store, "--json", "-k", "10", "--backend", "cpu", q),
            cwd=REPO,
            env=cli_env(),
            capture_output=True,
            text=True,
        )
        if r.returncode != 0:
            raise RuntimeError(r.stderr)
        out.append(time.perf_counter() - t)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--path", type=Path, default=Path(tempfile.gettempdir()) / "nomic-memory-bench-serve")
    size_options(ap, docs=20_000, vectors=32, clients=64, per_client=10, runs=3, cli_samples=3, soak_seconds=180.0)
    args = ap.parse_args()

    import psutil

    from nomic_memory.search.index import Index

    args.path.mkdir(parents=True, exist_ok=True)
    model = tiny_model(args.path / "tiny-colqwen")
    store = args.path / f"store-{args.docs}x{args.vectors}"
    t = time.perf_counter()
    table = build_store(store, model, args.docs, args.vectors)
    print(f"store {store} table {table}: ready in {time.perf_counter() - t:.1f} s", file=sys.stderr)
    qs = queries(args.clients * args.per_client)

    proc, url = start_server(store)
    res: dict = {
        "docs": args.docs,
        "vectors": args.vectors,
        "clients": args.clients,
        "per_client": args.per_client,
        "cpus": os.cpu_count(),
        "server": [],
        "floor": [],
    }
    try:
        ps = psutil.Process(proc.pid)
        asyncio.run(load(url, qs[: args.clients], args.clients, 1))  # warm-up
        idx = Index.open(store, backend="cpu")
        if args.runs:
            _ = idx.model
        for r in range(args.runs):
            s = asyncio.run(load(url, qs, args.clients, args.per_client))
            t = time.perf_counter()
            hits = idx.search_many(qs, 10)
            floor = len(qs) / (time.perf_counter() - t)
            assert all(len(h) == 10 for h in hits)
            res["server"].append(s)
            res["floor"].append(floor)
            print(
                f"run {r + 1}: server {s['qps']:.1f} q/s (p50 {s['p50_ms']:.0f} ms, p95 {s['p95_ms']:.0f} ms, "
                f"{s['failures']} failed); search_many {floor:.1f} q/s",
                file=sys.stderr,
            )
        res["counters"] = json.loads(__import__("httpx").get(url + "/stats").text)["counters"]
        cli = cli_per_query(store, qs[: args.cli_samples]) if args.runs else []
        res["cli_seconds"] = cli
        # soak: RSS every 5 s while the clients loop
        rss = []
        until = time.perf_counter() + args.soak_seconds

        async def soak():
            task = asyncio.create_task(load(url, qs, args.clients, 1, until=until))
            while not task.done():
                rss.append((round(time.perf_counter() - until + args.soak_seconds, 1), ps.memory_info().rss))
                await asyncio.sleep(5)
            return await task

        res["soak"] = asyncio.run(soak())
        res["soak"]["rss_mb"] = [(s, round(b / 2**20, 1)) for s, b in rss]
    finally:
        proc.terminate()
        proc.wait(60)
    med = lambda xs: statistics.median(xs) if xs else float("nan")  # noqa: E731
    warm = [b for s, b in res["soak"]["rss_mb"] if s >= min(30.0, args.soak_seconds / 3)] or [
        b for _, b in res["soak"]["rss_mb"]
    ]
    third = max(1, len(warm) // 3)
    res["summary"] = {
        "failures": sum(s["failures"] for s in res["server"]) + res["soak"]["failures"],
        "soak_seconds": args.soak_seconds,
        "soak_queries": res["soak"]["queries"],
        "soak_qps": round(res["soak"]["qps"], 2),
        "rss_first_third_mb": med(warm[:third]),
        "rss_last_third_mb": med(warm[-third:]),
        "rss_min_mb": min(warm),
        "rss_max_mb": max(warm),
        "rss_growth": round(med(warm[-third:]) / med(warm[:third]) - 1, 4),
    }
    if res["server"]:
        server_qps, floor_qps = med([s["qps"] for s in res["server"]]), med(res["floor"])
        res["summary"].update(
            {
                "server_qps": round(server_qps, 2),
                "server_p50_ms": round(med([s["p50_ms"] for s in res["server"]]), 1),
                "server_p95_ms": round(med([s["p95_ms"] for s in res["server"]]), 1),
                "floor_qps": round(floor_qps, 2),
                "server_vs_floor": round(server_qps / floor_qps, 3),
                "server_vs_floor_paired": round(med([s["qps"] / f for s, f in zip(res["server"], res["floor"])]), 3),
                "cli_qps": round(1 / med(cli), 4),
                "server_vs_cli": round(server_qps * med(cli), 1),
            }
        )
    print(json.dumps(res["summary"], indent=1))
    out = args.path / "bench_serve.json"
    out.write_text(json.dumps(res, indent=1))
    print(f"full results: {out}", file=sys.stderr)


if __name__ == "__main__":
    main()
