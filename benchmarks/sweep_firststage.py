"""The first stage's settings swept on an index saved by ``bench_firststage.py million --save DIR``
(or ``--assemble``): for each (probe, refine, depth), the first stage's latency and its candidate
recall@10 against the exact scores saved with it, for the same queries as that command.

    uv run python benchmarks/sweep_firststage.py --load /tmp/nm_fs/m1m --pages 1000000
    uv run python benchmarks/sweep_firststage.py --load /tmp/nm_fs/m1m --pages 1000000 --grid 16,500,200 16,500,400
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench_firststage as bf  # noqa: E402
from nomic_memory.search import firststage as fs  # noqa: E402
from synthetic_pages import PageGenerator, PageSpec  # noqa: E402

GRID = [(16, 500, 200), (16, 2000, 200), (16, 8000, 200), (32, 2000, 200), (64, 2000, 200), (16, 2000, 1000)]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--load", type=Path, required=True)
    ap.add_argument("--pages", type=int, required=True)
    ap.add_argument("--queries", type=int, default=20)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument(
        "--grid",
        nargs="+",
        help="probe,refine,depth triples (default: " + " ".join(",".join(map(str, g)) for g in GRID) + ")",
    )
    a = ap.parse_args()
    grid = [tuple(int(x) for x in t.split(",")) for t in a.grid] if a.grid else GRID
    ix, exact, _ = bf._load_built(a.load)
    g = PageGenerator(PageSpec(seed=a.seed))
    sources = np.random.default_rng(a.seed + 1).choice(a.pages, a.queries, replace=False)  # as `million`
    qs = [g.query(int(p)) for p in sources]
    for probe, refine, depth in grid:
        s = dataclasses.replace(fs.Settings(), probe=probe, refine=refine)
        lat, rec, src = [], [], []
        for qi, q in enumerate(qs):
            t0 = time.perf_counter()
            c = ix.candidates(q, s, depth=depth)
            lat.append(time.perf_counter() - t0)
            rec.append(bf.recall10(exact[qi], c))
            src.append(int(sources[qi]) in set(c.tolist()))
        row = {"probe": probe, "refine": refine, "depth": depth, "p50_ms": round(1000 * float(np.median(lat)), 1)}
        row |= {"candidate_recall10": round(float(np.mean(rec)), 3), "source_page_in": float(np.mean(src))}
        print(json.dumps(row), flush=True)


if __name__ == "__main__":
    main()
