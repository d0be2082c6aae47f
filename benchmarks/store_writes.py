"""Per-batch commit cost on a table that already holds N rows: plain append (what a run did when
it believed the rows new), the locked append (look the batch's keys up again under the table's
write lock, then append: what ``EmbeddingTable.upsert`` does now), and ``merge_insert`` on the key.

    uv run python benchmarks/store_writes.py [--rows 5000] [--batches 20] [--vectors 64]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time

import numpy as np

from nomic_memory.store.table import Record, Store, TableInfo


def records(start: int, n: int, vectors: int, rng) -> list[Record]:
    return [
        Record(
            "/photos",
            f"dir{i % 50}/img{i:07d}.jpg",
            "h" * 64,
            1000,
            0.0,
            640,
            480,
            rng.standard_normal((vectors, 128)).astype(np.float32),
            "bfloat16",
        )
        for i in range(start, start + n)
    ]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", type=int, default=5000)
    ap.add_argument("--batches", type=int, default=20)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--vectors", type=int, default=64)
    a = ap.parse_args()
    rng = np.random.default_rng(0)
    info = TableInfo("m", "r", "colqwen", 128, "fp", "float16")
    modes = ("append", "locked_append", "merge_insert")
    times: dict[str, list[float]] = {m: [] for m in modes}
    with tempfile.TemporaryDirectory() as d:
        tables = {}
        for m in modes:  # one table per mode, same content
            t = Store(d).create_or_open(m, info)
            for s in range(0, a.rows, 1000):
                t.table.add(t._arrow(records(s, min(1000, a.rows - s), a.vectors, rng)))
            t.optimize()
            tables[m] = t
        for b in range(a.batches):  # interleaved: machine load hits every mode alike
            recs = records(a.rows + b * a.batch_size, a.batch_size, a.vectors, rng)
            for m in modes:
                t = tables[m]
                t0 = time.perf_counter()
                if m == "append":
                    t.table.add(t._arrow(recs))
                elif m == "locked_append":
                    t.upsert(recs, known_new={r.path for r in recs})
                else:
                    t.upsert(recs)
                times[m].append(time.perf_counter() - t0)
    results = {m: statistics.median(v) for m, v in times.items()}
    base = results["append"]
    for mode, s in results.items():
        print(f"{mode:14s} median {1000 * s:7.1f} ms per batch of {a.batch_size}  ({s / base:.2f}x append)")


if __name__ == "__main__":
    main()
