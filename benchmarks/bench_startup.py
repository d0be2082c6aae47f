"""Start-up as the user waits: three ``nomic-memory`` commands timed as whole processes.

* ``nomic-memory --version``;
* ``nomic-memory search "invoice table" --store S -k 10 --json --no-server --backend cpu``: one
  search in a new process (imports, the store opened, the tiny model loaded, one query);
* the same search without ``--no-server`` while a ``nomic-memory serve`` of S runs (the command
  finds the server and asks it).

Each command runs ``--warmup`` times uncounted, then ``--runs`` times; for each run the wall time
(start to exit, measured here) and the CPU seconds of the finished process and its children
(user + system, the kernel's accounting from ``wait4``); medians
printed as JSON.  The store is the 200 random pages of ``bench_mcp.py`` (built the first time).

    uv run python benchmarks/bench_startup.py                   # .venv/bin/nomic-memory
    uv run python benchmarks/bench_startup.py --uv              # each command as `uv run --no-sync nomic-memory ...`
    uv run python benchmarks/bench_startup.py --only version search
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench_mcp import build
from common import REPO, cli_env

QUERY = "invoice table"


def run_once(argv: list[str], env: dict[str, str]) -> dict:
    """One run of ``argv``: wall s, CPU s (user + system of it and its children), exit code.  (No peak
    memory: a forked child's maximum resident size counts this process's pages; use
    ``/usr/bin/time -v`` for that.)"""
    t0 = time.perf_counter()
    p = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=REPO, env=env)
    _, status, ru = os.wait4(p.pid, 0)
    wall = time.perf_counter() - t0
    p.returncode = os.waitstatus_to_exitcode(status)
    return {
        "wall": wall,
        "cpu": ru.ru_utime + ru.ru_stime,
        "rc": p.returncode,
    }


def measure(argv: list[str], env: dict[str, str], runs: int, warmup: int) -> dict:
    for _ in range(warmup):
        run_once(argv, env)
    got = [run_once(argv, env) for _ in range(runs)]
    bad = sorted({g["rc"] for g in got if g["rc"] != 0})
    return {
        "wall_s": round(statistics.median(g["wall"] for g in got), 3),
        "cpu_s": round(statistics.median(g["cpu"] for g in got), 3),
        "wall_s_all": [round(g["wall"], 3) for g in got],
        **({"exit_codes": bad} if bad else {}),
    }


def start_server(prefix: list[str], store: Path, env: dict[str, str]) -> subprocess.Popen:
    """``nomic-memory serve`` of ``store``, returned once a search finds it (at most 5 minutes)."""
    server = subprocess.Popen(
        [*prefix, "serve", "--store", str(store), "--backend", "cpu", "--port", "0"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        cwd=REPO,
        env=env,
    )
    probe = [*prefix, "search", QUERY, "--store", str(store), "-k", "10", "--json"]
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise SystemExit(f"the server exited ({server.returncode}) before answering")
        out = subprocess.run(probe, capture_output=True, text=True, cwd=REPO, env=env).stdout
        if "server_seconds" in out:
            return server
        time.sleep(1)
    server.terminate()
    raise SystemExit("the server did not answer a search within 5 minutes")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--uv", action="store_true", help="run each command as `uv run --no-sync nomic-memory ...`")
    ap.add_argument(
        "--only", nargs="+", choices=("version", "search", "server"), default=["version", "search", "server"]
    )
    ap.add_argument("--work", default=str(Path(tempfile.gettempdir()) / "nomic-memory-bench-mcp"))
    args = ap.parse_args()
    script = Path(sys.executable).parent / "nomic-memory"
    prefix = [shutil.which("uv") or "uv", "run", "--no-sync", "nomic-memory"] if args.uv else [str(script)]
    env = cli_env()
    _, store = build(Path(args.work), 200)
    search = [*prefix, "search", QUERY, "--store", str(store), "-k", "10", "--json"]
    out: dict = {"command": prefix, "load_average": [round(x, 2) for x in os.getloadavg()]}
    if "version" in args.only:
        out["version"] = measure([*prefix, "--version"], env, args.runs, args.warmup)
    if "search" in args.only:
        out["search_in_process"] = measure([*search, "--no-server", "--backend", "cpu"], env, args.runs, args.warmup)
    if "server" in args.only:
        server = start_server(prefix, store, env)
        try:
            out["search_via_server"] = measure(search, env, args.runs, args.warmup)
        finally:
            server.terminate()
            server.wait(30)
    out["load_average_after"] = [round(x, 2) for x in os.getloadavg()]
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
