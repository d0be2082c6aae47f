"""Watcher benchmark: ``nomic-memory watch`` as a real process on a real folder, tiny model, CPU.

Three measurements, each with its own watcher process (``python -m nomic_memory.cli watch DIR
--json``; its per-run JSON reports are read as they come):

* **latency** (``--rounds`` rounds of ``--files`` files): one file at a time is written under
  a temporary name and renamed into the watched folder (a drop: the file appears whole); this
  process then searches the store (``Index.search_embeddings`` with ``where path = ...``, after
  a table refresh, every 20 ms) until the file is found.  Latency = drop -> found.  The
  watcher's own report says how long the run embedding it took (``embed_seconds``); the
  overhead beyond embedding = latency - embed_seconds.  Per round: p50 / p95; medians over
  rounds reported.
* **burst** (``--burst`` files): that many distinct PNGs written as fast as Python can into 10
  sub-folders of the watched folder.  Measured: time until every row is stored, runs and
  batches the watcher used, files embedded according to its reports (must equal ``--burst``:
  none twice), rows and distinct keys in the store, and the watcher's peak RSS (VmHWM).
* **soak** (``--soak-seconds``): every 0.5 s one file is added, one rewritten, one deleted
  (about 200 files live).  The watcher's RSS is sampled every 5 s; growth = median of the last
  third of the samples over the median of the first third (after ``--warmup`` seconds).  At the
  end the store must equal the folder.

    uv run python benchmarks/bench_watch.py --rounds 3 --files 50 --burst 10000 --soak-seconds 600
    uv run python benchmarks/bench_watch.py --rounds 1 --files 10 --burst 500 --soak-seconds 30   # quick
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import os
import shutil
import signal
import statistics
import subprocess
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
from PIL import Image

from common import REPO, cli, cli_env, on_cpu, size_options


def png(seed: int, w: int = 64, h: int = 48) -> bytes:
    rng = np.random.default_rng(seed)
    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8)).save(buf, "PNG")
    return buf.getvalue()


class WatchProcess:
    """The CLI watcher, its JSON reports collected with the time they arrived."""

    def __init__(self, folder: Path, store: Path, model: Path, *extra: str):
        cmd = cli("watch", folder, *on_cpu(store, model), "--json", "--no-progress", *extra)
        self.proc = subprocess.Popen(
            cmd, cwd=REPO, env=cli_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )
        self.reports: list[tuple[float, dict]] = []
        self.ready = threading.Event()
        self.lock = threading.Lock()
        threading.Thread(target=self._read, daemon=True).start()
        threading.Thread(target=self._read_err, daemon=True).start()
        self.wait(self.ready.is_set, 300, "the catch-up and the model")  # "Watching ... for changes"

    def _read_err(self) -> None:
        for line in self.proc.stderr:
            if line.startswith("Watching "):
                self.ready.set()

    def _read(self) -> None:
        for line in self.proc.stdout:
            if line.startswith("{"):
                with self.lock:
                    self.reports.append((time.monotonic(), json.loads(line)))

    def wait(self, pred, timeout: float, what: str) -> None:
        deadline = time.monotonic() + timeout
        while not pred():
            if time.monotonic() > deadline or self.proc.poll() is not None:
                raise SystemExit(f"timed out waiting for {what}")
            time.sleep(0.05)

    def status(self, key: str) -> int:
        """VmRSS / VmHWM of the watcher, bytes."""
        for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1]) * 1024
        return 0

    def stop(self) -> None:
        self.proc.send_signal(signal.SIGINT)
        self.proc.wait(120)


def rows(store: Path) -> tuple[int, int, dict]:
    from nomic_memory import Store

    s = Store(store)
    if not s.table_names():
        return 0, 0, {}
    d = s.only_table().to_arrow(["root", "path", "page", "content_hash"]).to_pydict()
    return len(d["path"]), len(set(zip(d["root"], d["path"], d["page"]))), dict(zip(d["path"], d["content_hash"]))


def pct(xs: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(xs), q))


# ------------------------------------------------------------------ latency
def latency(base: Path, model: Path, rounds: int, files: int) -> dict:
    from nomic_memory import Embedder, Index

    folder, store, staging = base / "lat", base / "lat-store", base / "staging"
    for d in (folder, staging):
        d.mkdir()
    (folder / "seed.png").write_bytes(png(0))  # the table exists before the first drop
    w = WatchProcess(folder, store, model)
    emb = Embedder(str(model), backend="cpu")
    idx = Index.open(store, model=emb)
    q = idx.embed_queries(["a page"])[0]
    per_round = []
    for r in range(rounds):
        lat, over = [], []
        for i in range(files):
            name = f"r{r}-f{i:03d}.png"
            (staging / name).write_bytes(png(10_000 * (r + 1) + i))
            n_before = len(w.reports)
            t0 = time.monotonic()
            os.replace(staging / name, folder / name)
            while True:
                idx.table.refresh()
                if idx.search_embeddings([q], 1, where=f"path = '{name}'")[0]:
                    break
                if time.monotonic() - t0 > 60:
                    raise SystemExit(f"{name} not searchable after 60 s")
                time.sleep(0.02)
            t = time.monotonic() - t0
            w.wait(lambda n=n_before: len(w.reports) > n, 30, "the run's report")
            embed_s = sum(rep["embed_seconds"] for _, rep in w.reports[n_before:])
            lat.append(t)
            over.append(t - embed_s)
        per_round.append(
            {
                "p50": pct(lat, 50),
                "p95": pct(lat, 95),
                "max": max(lat),
                "overhead_p95": pct(over, 95),
                "embed_p95": pct([a - b for a, b in zip(lat, over)], 95),
            }
        )
        print(
            f"latency round {r + 1}: p50 {per_round[-1]['p50']:.3f} s, p95 {per_round[-1]['p95']:.3f} s, "
            f"p95 beyond embedding {per_round[-1]['overhead_p95']:.3f} s",
            flush=True,
        )
    w.stop()
    med = {k: statistics.median(p[k] for p in per_round) for k in per_round[0]}
    return {"rounds": per_round, "median": med, "files_per_round": files}


# ------------------------------------------------------------------ burst
def burst(base: Path, model: Path, n: int, batch_size: int) -> dict:
    folder, store = base / "burst", base / "burst-store"
    folder.mkdir()
    w = WatchProcess(folder, store, model, "--batch-size", str(batch_size))
    rss0 = w.status("VmRSS")
    payloads = [png(i, 40 + i % 24, 32 + i % 16) for i in range(200)]
    t0 = time.monotonic()
    for i in range(n):  # distinct files: a shared image with the file's number appended after the PNG end
        d = folder / f"d{i % 10}"
        d.mkdir(exist_ok=True)
        (d / f"f{i:05d}.png").write_bytes(payloads[i % 200] + i.to_bytes(4, "little"))
    t_written = time.monotonic() - t0
    w.wait(lambda: sum(r["embedded"] for _, r in w.reports) >= n, 3600, "the burst to be embedded")
    t_done = time.monotonic() - t0
    time.sleep(3)  # anything more it would do
    reports = [r for _, r in w.reports if r["trigger"] != "catch-up"]
    peak = w.status("VmHWM")
    w.stop()
    total, unique, by_path = rows(store)
    want = {p.relative_to(folder).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest() for p in folder.rglob("*.png")}
    out = {
        "files": n,
        "seconds_to_write": t_written,
        "seconds_until_all_stored": t_done,
        "runs": len(reports),
        "batches": sum(r["batches"] for r in reports),
        "embedded_per_reports": sum(r["embedded"] for r in reports),
        "rows": total,
        "distinct_keys": unique,
        "store_equals_folder": by_path == want,
        "failed": sum(len(r["failed"]) for r in reports),
        "rss_idle_mb": rss0 / 2**20,
        "peak_rss_mb": peak / 2**20,
    }
    out["embed_baseline"] = embed_baseline(folder, base / "burst-embed-store", model, batch_size)
    print(f"burst: {json.dumps(out)}", flush=True)
    return out


def embed_baseline(folder: Path, store: Path, model: Path, batch_size: int) -> dict:
    """The same files through ``nomic-memory embed`` (one process, one run): wall time and peak RSS."""
    cmd = cli("embed", folder, *on_cpu(store, model), "--batch-size", batch_size, "--json", "--no-progress")
    t0 = time.monotonic()
    proc = subprocess.Popen(cmd, cwd=REPO, env=cli_env(), stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    peak = 0
    out: list[str] = []
    threading.Thread(target=lambda: out.append(proc.stdout.read()), daemon=True).start()
    while proc.poll() is None:
        try:
            for line in Path(f"/proc/{proc.pid}/status").read_text().splitlines():
                if line.startswith("VmHWM:"):
                    peak = max(peak, int(line.split()[1]) * 1024)
        except OSError:
            pass
        time.sleep(0.2)
    wall = time.monotonic() - t0
    time.sleep(0.5)
    rep = json.loads(out[0].strip().splitlines()[-1]) if out and out[0].strip() else {}
    return {
        "process_seconds": wall,
        "run_seconds": rep.get("seconds"),
        "embedded": rep.get("embedded"),
        "embed_seconds": rep.get("embed_seconds"),
        "peak_rss_mb": peak / 2**20,
    }


# ------------------------------------------------------------------ soak
def soak(base: Path, model: Path, seconds: float, warmup: float) -> dict:
    folder, store = base / "soak", base / "soak-store"
    folder.mkdir()
    live: list[Path] = []
    for i in range(200):
        p = folder / f"s{i:05d}.png"
        p.write_bytes(png(i))
        live.append(p)
    w = WatchProcess(folder, store, model)
    rng = np.random.default_rng(0)
    samples: list[tuple[float, int]] = []
    t0 = time.monotonic()
    k, next_sample = 200, t0 + warmup
    while time.monotonic() - t0 < seconds:
        p = folder / f"s{k:05d}.png"
        p.write_bytes(png(k))
        live.append(p)
        victim = live.pop(int(rng.integers(0, len(live) - 1)))
        victim.unlink()
        live[int(rng.integers(0, len(live)))].write_bytes(png(1_000_000 + k))
        k += 1
        if time.monotonic() >= next_sample:
            samples.append((time.monotonic() - t0, w.status("VmRSS")))
            next_sample += 5
        time.sleep(0.5)
    time.sleep(5)
    w.wait(
        lambda: rows(store)[2] == {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in folder.glob("*.png")},
        120,
        "the store to equal the folder",
    )
    w.stop()
    vals = [v for _, v in samples]
    third = max(1, len(vals) // 3)
    first, last = statistics.median(vals[:third]), statistics.median(vals[-third:])
    out = {
        "seconds": seconds,
        "warmup": warmup,
        "changes": 3 * (k - 200),
        "samples": len(vals),
        "rss_first_third_mb": first / 2**20,
        "rss_last_third_mb": last / 2**20,
        "growth_pct": 100 * (last / first - 1),
        "rss_min_mb": min(vals) / 2**20,
        "rss_max_mb": max(vals) / 2**20,
        "runs": len(w.reports),
        "store_equals_folder": True,
    }
    print(f"soak: {json.dumps(out)}", flush=True)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    size_options(ap, rounds=3, files=50, burst=10_000, batch_size=8, soak_seconds=600.0, warmup=60.0)
    ap.add_argument("--only", choices=["latency", "burst", "soak"])
    ap.add_argument("--out", type=Path, default=None, help="write the results as JSON here")
    args = ap.parse_args()
    from nomic_memory.model.tiny import build_tiny_model

    base = Path(tempfile.mkdtemp(prefix="bench-watch-"))
    try:
        model = build_tiny_model(base / "tiny", "colqwen")
        res: dict = {}
        if args.only in (None, "latency") and args.rounds:
            res["latency"] = latency(base, model, args.rounds, args.files)
        if args.only in (None, "burst") and args.burst:
            res["burst"] = burst(base, model, args.burst, args.batch_size)
        if args.only in (None, "soak") and args.soak_seconds:
            res["soak"] = soak(base, model, args.soak_seconds, min(args.warmup, args.soak_seconds / 3))
        print(json.dumps(res, indent=1))
        if args.out:
            args.out.write_text(json.dumps(res, indent=1))
    finally:
        shutil.rmtree(base, ignore_errors=True)


if __name__ == "__main__":
    main()
