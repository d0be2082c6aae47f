"""Ray engine throughput: 1 vs N model actors on one machine.

Builds the random ``medium`` ColQwen2.5 model (~90 MB, where the model's cost dominates Python and
Ray overheads) and a folder of JPEGs, starts one local Ray cluster, then embeds the folder into a
fresh store with ``Embedder.embed_directory(engine="ray")`` for each actor count (and, as a reference, with the local
pipeline), interleaving the configurations, ``--runs`` times each.  Reports medians of:

* ``images/s``: what the run report says: images over the streaming phase's wall time, which for
  Ray includes starting the actor processes and loading one model per actor;
* ``steady images/s``: images after the first result over the time from the first result to the
  last (the rate once the actors are up);
* the largest per-worker peak RSS.

    uv run --extra ray python benchmarks/bench_ray.py [--runs 3] [--images 32] [--workers 1,2]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import tempfile
import time
from pathlib import Path

from nomic_memory.ingest.samples import make_sample_images

# A page scan, a 4:3 photo and a square photo, repeated (nomic_memory.ingest.samples).
SPECS = [("page", 1240, 1754, "jpg"), ("photo", 1024, 768, "jpg"), ("photo", 800, 800, "jpg")]


def make_images(d: Path, n: int) -> None:
    make_sample_images(d, n, specs=SPECS)


class Clock:
    """Collects the times of the ``batch`` events."""

    def __init__(self):
        self.batches: list[tuple[float, int]] = []

    def __call__(self, kind: str, data: dict) -> None:
        if kind == "batch":
            self.batches.append((time.perf_counter(), data["embedded"]))

    def steady(self) -> float:
        if len(self.batches) < 2:
            return float("nan")
        (t0, n0), (t1, n1) = self.batches[0], self.batches[-1]
        return (n1 - n0) / (t1 - t0) if t1 > t0 else float("nan")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--images", type=int, default=32)
    ap.add_argument("--batch-size", type=int, default=4)
    ap.add_argument("--workers", default="1,2", help="model actor counts to compare")
    ap.add_argument("--size", default="medium", help="random model size (nomic_memory.model.tiny.SIZES)")
    ap.add_argument("--no-local", action="store_true", help="skip the local-pipeline reference")
    ap.add_argument("--json", type=Path, help="also write the raw results here")
    args = ap.parse_args()

    # isort: off
    import nomic_memory.run.ray_engine  # noqa: F401  (before ray: opts out of the uv hook)
    import ray

    # isort: on
    from nomic_memory import Embedder
    from nomic_memory.model.backends import select_backend
    from nomic_memory.model.loading import load_model
    from nomic_memory.model.tiny import build_tiny_model

    cpu = select_backend("cpu")
    counts = [int(w) for w in args.workers.split(",")]
    with tempfile.TemporaryDirectory() as td:
        td = Path(td)
        model = build_tiny_model(td / "model", "colqwen", args.size)
        make_images(td / "imgs", args.images)
        ray.init(num_cpus=os.cpu_count(), include_dashboard=False, logging_level="WARNING")
        lm = None if args.no_local else load_model(str(model), backend=cpu)
        results: dict[str, list[dict]] = {}
        for run in range(args.runs):
            configs = [f"ray-{w}" for w in counts] + ([] if args.no_local else ["local"])
            for cfg in configs:
                store = td / f"store-{cfg}-{run}"
                clock = Clock()
                if cfg == "local":
                    rep = Embedder.from_loaded(lm).embed_directory(
                        td / "imgs", store, batch_size=args.batch_size, on_event=clock
                    )
                else:
                    rep = Embedder(str(model), backend=cpu, lazy=True).embed_directory(
                        td / "imgs",
                        store,
                        engine="ray",
                        batch_size=args.batch_size,
                        workers=int(cfg.split("-")[1]),
                        on_event=clock,
                    )
                assert rep.embedded == args.images and not rep.failed, rep.to_dict()
                peaks = [m.peak_bytes for m in rep.worker_memory.values()] or [rep.memory.peak_bytes]
                r = {
                    "images_per_second": rep.images_per_second,
                    "steady_images_per_second": clock.steady(),
                    "embed_seconds": rep.embed_seconds,
                    "seconds": rep.seconds,
                    "workers_used": len(rep.worker_memory) or 1,
                    "peak_mb": max(peaks) / 2**20,
                }
                results.setdefault(cfg, []).append(r)
                print(
                    f"run {run + 1} {cfg}: "
                    + ", ".join(f"{k}={v:.3f}" if isinstance(v, float) else f"{k}={v}" for k, v in r.items()),
                    flush=True,
                )
                shutil.rmtree(store, ignore_errors=True)
        ray.shutdown()

    print(
        f"\n{args.images} images, batch {args.batch_size}, {args.size} ColQwen2.5, CPU backend, "
        f"{os.cpu_count()} CPUs; medians of {args.runs} runs\n"
    )
    print("| engine | model actors | images/s (report) | steady images/s | embed wall (s) | peak RSS per worker (MB) |")
    print("|---|---:|---:|---:|---:|---:|")
    med = {}
    for cfg, rs in results.items():
        m = {k: statistics.median(r[k] for r in rs) for k in rs[0] if k != "workers_used"}
        med[cfg] = m
        eng, n = ("local", "-") if cfg == "local" else ("ray", cfg.split("-")[1])
        print(
            f"| {eng} | {n} | {m['images_per_second']:.3f} | {m['steady_images_per_second']:.3f} | "
            f"{m['embed_seconds']:.1f} | {m['peak_mb']:.0f} |"
        )
    if args.json:
        args.json.write_text(json.dumps({"results": results, "medians": med}, indent=1))


if __name__ == "__main__":
    main()
