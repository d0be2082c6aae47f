"""Import throughput (rows/s) against embed's store-write phase, and the import's peak memory.

Same rows, same store code, in one run (interleaved, medians of ``--runs``):

* ``embed write``: what ``embed`` spends committing its results: ``EmbeddingTable.upsert`` of
  batches of 8 records already in memory (the vectors a model returned), as the run's store
  sink calls it: no model, no decoding, only the store write;
* ``import``: ``nomic-memory import`` of the same rows from a float16 parquet file into a new
  store: both passes (every row checked, then written in batches of 128), table creation and
  end-of-run compaction included;
* ``import, batches of 8``: the same with embed's commit size;
* ``import rerun``: the same import again (every row already stored: nothing is written).

``--memory`` also imports sources of several sizes, each written as ONE parquet row group, each
in a fresh child process, and reports how far its peak RSS rose (the import streams: the rise does
not grow with the source), against reading the same file whole.

    uv run python benchmarks/import_throughput.py [--rows 2000] [--vectors 256] [--runs 3] [--memory]
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from nomic_memory.store.importer import ImportStamp, import_embeddings
from nomic_memory.store.table import Record, Store, TableInfo

STAMP = ImportStamp("bench/colqwen", "r1", "colqwen", 128, "bench-colqwen", 0, "fp", frozenset({"fp"}))


def vectors(n: int, per_row: int, seed: int) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.standard_normal((per_row, 128)).astype(np.float16) for _ in range(n)]


def write_source(path: Path, vecs: list[np.ndarray], row_group_rows: int | None = None) -> None:
    per_row = vecs[0].shape[0]
    flat = pa.array(np.concatenate([v.reshape(-1) for v in vecs]), type=pa.float16())
    inner = pa.FixedSizeListArray.from_arrays(flat, 128)
    emb = pa.ListArray.from_arrays(pa.array(np.arange(len(vecs) + 1, dtype=np.int32) * per_row), inner)
    t = pa.table(
        {"path": [f"d{i // 100}/p{i}.png" for i in range(len(vecs))], "page": [0] * len(vecs), "embedding": emb}
    )
    pq.write_table(t, path, row_group_size=row_group_rows or len(vecs))


def embed_write(store: Path, vecs: list[np.ndarray]) -> float:
    """Seconds to commit the rows as embed's store sink does (batches of 8, known new)."""
    info = TableInfo(STAMP.model_id, STAMP.revision, "colqwen", 128, "fp", "float16")
    t0 = time.perf_counter()
    table = Store(store).create_or_open(STAMP.table_name, info)
    for s in range(0, len(vecs), 8):
        recs = [
            Record("/bench", f"d{i // 100}/p{i}.png", "h" * 64, 1000, 0.0, 640, 480, vecs[i], "bfloat16")
            for i in range(s, min(s + 8, len(vecs)))
        ]
        table.upsert(recs, known_new={(r.path, r.page) for r in recs})
    table.maintain()
    return time.perf_counter() - t0


def run_import(src: Path, store: Path, batch_rows: int) -> float:
    t0 = time.perf_counter()
    import_embeddings(src, store, STAMP, root="/bench", batch_rows=batch_rows)
    return time.perf_counter() - t0


def _status(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field):
                return int(line.split()[1]) * 1024
    raise KeyError(field)


def _peak_growth(fn) -> int:
    """Bytes the process's peak RSS rose above its RSS while ``fn`` ran (Linux: the peak is reset
    first through /proc/self/clear_refs)."""
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")
    base = _status("VmRSS:")
    fn()
    return _status("VmHWM:") - base


def _child(small: str, src: str, store: str, q) -> None:
    import_embeddings(small, store + "-warm", STAMP, root="/bench")  # libraries, allocator: warm
    grew = _peak_growth(lambda: import_embeddings(src, store, STAMP, root="/bench"))
    whole = _peak_growth(lambda: pq.read_table(src))  # the non-streaming reference: the file in memory
    q.put((grew, whole))


def memory(tmp: Path, rows: int, per_row: int) -> None:
    src, small = tmp / f"one-row-group-{rows}.parquet", tmp / "small.parquet"
    vecs = vectors(rows, per_row, 7)
    write_source(src, vecs)
    write_source(small, vecs[:300])
    del vecs  # the child imports; this process only waits
    raw = rows * per_row * 128 * 2
    ctx = mp.get_context("spawn")
    q = ctx.Queue()
    p = ctx.Process(target=_child, args=(str(small), str(src), str(tmp / f"mem-store-{rows}"), q))
    p.start()
    grew, whole = q.get()
    p.join()
    print(
        f"memory: {rows} rows x {per_row} vectors, float16 = {raw / 2**20:.0f} MiB of vectors in ONE row group "
        f"({src.stat().st_size / 2**20:.0f} MiB file): the import's peak RSS rose {grew / 2**20:.0f} MiB; "
        f"reading the file whole (pyarrow.parquet.read_table) {whole / 2**20:.0f} MiB"
    )


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", type=int, default=2000)
    ap.add_argument("--vectors", type=int, default=256)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--memory", action="store_true")
    ap.add_argument("--memory-rows", default="3000,12000", help="comma-separated source sizes (rows)")
    a = ap.parse_args()
    vecs = vectors(a.rows, a.vectors, 0)
    times: dict[str, list[float]] = {"embed write": [], "import": [], "import, batches of 8": [], "import rerun": []}
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        src = tmp / "src.parquet"
        write_source(src, vecs, row_group_rows=1000)
        embed_write(tmp / "warm-e", vecs[:50])  # first use of LanceDB and the store code: not timed
        run_import(src, tmp / "warm-i", 128)
        for r in range(a.runs):  # interleaved: machine load hits every mode alike
            times["embed write"].append(embed_write(tmp / f"e{r}", vecs))
            times["import"].append(run_import(src, tmp / f"i{r}", 128))
            times["import rerun"].append(run_import(src, tmp / f"i{r}", 128))
            times["import, batches of 8"].append(run_import(src, tmp / f"i8-{r}", 8))
        base = statistics.median(times["embed write"])
        print(f"{a.rows} rows x {a.vectors} vectors (128-d, float16), medians of {a.runs} runs")
        for mode, ts in times.items():
            m = statistics.median(ts)
            print(f"{mode:22s} {m:7.2f} s  {a.rows / m:8.0f} rows/s  ({base / m:.2f}x embed write's rows/s)")
        if a.memory:
            for n in map(int, a.memory_rows.split(",")):
                memory(tmp, n, a.vectors)


if __name__ == "__main__":
    main()
