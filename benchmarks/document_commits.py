"""Per-batch commit cost while one long document is stored page by page: does it grow with the
pages already stored?

Each run writes ``--pages`` pages of one document (``big.pdf``) in batches of ``--batch-size``,
as a run's store sink does (``upsert`` with the batch's keys believed new, after the run's one
``index`` read), into a fresh table, in its own process (so its peak RSS is its own).  Modes:

* ``lookup-all`` - the previous lookup, reproduced: under the write lock, the batch's paths looked
  up with ``root = R AND path IN (...)`` over the whole table (every stored page of the document
  comes back), then an append;
* ``upsert`` - ``EmbeddingTable.upsert`` as it is now (only what other writers committed since
  the run's read is looked at).

Reports pages/s over the first and the last 1,000 pages, over the whole run, and peak RSS;
medians of ``--runs`` runs, modes interleaved run by run.

    uv run python benchmarks/document_commits.py [--pages 5000] [--runs 3] [--vectors 16]
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import tempfile
import time

import numpy as np

from common import size_options


def _lookup_all(t, records) -> None:
    """The lookup ``upsert`` made before: every stored row of the batch's paths, then an append."""
    from nomic_memory.store.table import KEY_COLUMNS, _sql_str, path_to_key

    with t._lock():
        t.refresh()
        paths = sorted({path_to_key(r.path) for r in records})
        where = f"root = {_sql_str(path_to_key(records[0].root))} AND path IN ({', '.join(map(_sql_str, paths))})"
        d = t.table.search().where(where).select(list(KEY_COLUMNS)).limit(None).to_arrow().to_pydict()
        present = set(zip(d["root"], d["path"], d["page"]))
        fresh = [r for r in records if (path_to_key(r.root), path_to_key(r.path), r.page) not in present]
        t.table.add(t._arrow(fresh))


def one_run(mode: str, pages: int, batch: int, vectors: int) -> dict:
    from nomic_memory.store.table import Record, Store, TableInfo

    rng = np.random.default_rng(0)
    with tempfile.TemporaryDirectory() as d:
        t = Store(d).create_or_open("t", TableInfo("m", "r", "colqwen", 128, "fp", "float16"))
        t.stored_keys("/docs")  # the run's one read of what is stored
        stamps = [time.perf_counter()]
        for start in range(0, pages, batch):
            recs = [
                Record(
                    "/docs",
                    "big.pdf",
                    "h" * 64,
                    1,
                    0.0,
                    56,
                    72,
                    rng.standard_normal((vectors, 128)),
                    "float32",
                    page=p + 1,
                )
                for p in range(start, min(pages, start + batch))
            ]
            if mode == "upsert":
                t.upsert(recs, known_new={(r.path, r.page) for r in recs})
            else:
                _lookup_all(t, recs)
            stamps.append(time.perf_counter())
        assert t.count() == pages
    per = 1000 // batch  # batches in 1,000 pages
    return {
        "first_1000": per * batch / (stamps[per] - stamps[0]),
        "last_1000": per * batch / (stamps[-1] - stamps[-1 - per]),
        "overall": pages / (stamps[-1] - stamps[0]),
        "rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    }


def main() -> None:
    ap = argparse.ArgumentParser()
    size_options(ap, pages=5000, batch_size=8, vectors=16, runs=3)
    ap.add_argument("--modes", default="lookup-all,upsert")
    ap.add_argument("--child", default=None, help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.child:
        print(json.dumps(one_run(a.child, a.pages, a.batch_size, a.vectors)))
        return
    modes = a.modes.split(",")
    res: dict[str, list[dict]] = {m: [] for m in modes}
    for _ in range(a.runs):
        for m in modes:
            out = subprocess.run(
                [
                    sys.executable,
                    __file__,
                    "--child",
                    m,
                    "--pages",
                    str(a.pages),
                    "--batch-size",
                    str(a.batch_size),
                    "--vectors",
                    str(a.vectors),
                ],
                capture_output=True,
                text=True,
                check=True,
            ).stdout
            res[m].append(json.loads(out.strip().splitlines()[-1]))
    print(
        f"{a.pages} pages of one document, batches of {a.batch_size}, {a.vectors} vectors per page; "
        f"medians of {a.runs} runs"
    )
    print(f"{'mode':12s} {'pages/s first 1000':>19s} {'last 1000':>10s} {'overall':>8s} {'peak RSS MB':>12s}")
    for m, runs in res.items():
        med = {k: statistics.median(r[k] for r in runs) for k in runs[0]}
        print(f"{m:12s} {med['first_1000']:19.0f} {med['last_1000']:10.0f} {med['overall']:8.0f} {med['rss_mb']:12.0f}")


if __name__ == "__main__":
    main()
