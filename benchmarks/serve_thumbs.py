"""Server benchmark: peak memory of six simultaneous first ``/thumb`` requests for one large page.

One ``--side`` x ``--side`` PNG (mostly flat, so a small file that decodes to side^2 x 3 bytes)
is embedded with the tiny ColQwen model; then, for each ``max_decodes`` setting, ``--runs``
times: a fresh server process (uvicorn over ``create_app``, CPU), its thumbnail cache emptied,
six GET /thumb/{id} sent at once; measured: the server's peak RSS (``VmHWM``) over its RSS just
before the requests.  ``max_decodes=6`` lets all six decode at once (how the server behaved
before decodes were bounded); 2 is the default.  Medians, and the ratio to ``max_decodes=6``.

    uv run python benchmarks/serve_thumbs.py --side 13000 --runs 3
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path

import httpx

SERVER = """
import sys, uvicorn
from nomic_memory.search.index import Index
from nomic_memory.serve.app import create_app
from nomic_memory.serve.service import SearchService, ServeConfig
svc = SearchService(Index.open(sys.argv[1], backend="cpu"), ServeConfig(max_decodes=int(sys.argv[2])))
server = uvicorn.Server(uvicorn.Config(create_app(svc), host="127.0.0.1", port=0, log_level="warning"))
import threading, time
def announce():
    while not server.started:
        time.sleep(0.05)
    print(server.servers[0].sockets[0].getsockname()[1], flush=True)
threading.Thread(target=announce, daemon=True).start()
server.run()
"""


def status_kb(pid: int, key: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1])
    raise KeyError(key)


def make_store(base: Path, side: int) -> Path:
    from PIL import Image, ImageDraw

    from nomic_memory import Embedder
    from nomic_memory.model.tiny import build_tiny_model

    pages = base / "pages"
    pages.mkdir()
    img = Image.new("RGB", (side, side), "white")
    d = ImageDraw.Draw(img)
    for j, i in enumerate(range(0, side // 2, side // 16)):
        d.rectangle([i, i, side - i - 1, side - i - 1], outline=(40 * j % 251, 80, 160), width=side // 64)
    img.save(pages / "poster.png")
    del img, d
    model = build_tiny_model(base / "model", "colqwen")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        Embedder(str(model), backend="cpu").embed_directory(pages, store=base / "store", workers=0)
    print(f"{side} x {side} PNG, {(pages / 'poster.png').stat().st_size / 1024:.0f} kB", flush=True)
    return base / "store"


def one_run(store: Path, max_decodes: int, n: int = 6) -> float:
    """MB of peak RSS over the RSS before ``n`` simultaneous first thumbnail requests."""
    shutil.rmtree(store / "_nomic_memory_thumbs", ignore_errors=True)
    proc = subprocess.Popen(
        [sys.executable, "-c", SERVER, str(store), str(max_decodes)], stdout=subprocess.PIPE, text=True
    )
    try:
        url = f"http://127.0.0.1:{proc.stdout.readline().strip()}"
        hit = httpx.post(url + "/search", json={"queries": ["poster"], "k": 1}, timeout=300).json()["results"][0][0]
        time.sleep(1)
        before = status_kb(proc.pid, "VmRSS")

        async def many():
            async with httpx.AsyncClient(base_url=url, timeout=600) as c:
                return await asyncio.gather(*[c.get(f"/thumb/{hit['id']}") for _ in range(n)])

        rs = asyncio.run(many())
        assert all(r.status_code == 200 for r in rs), [r.text[:200] for r in rs]
        return (status_kb(proc.pid, "VmHWM") - before) / 1024
    finally:
        proc.terminate()
        proc.wait(30)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--side", type=int, default=13000)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--settings", default="6,2,1")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="nm-thumbs-") as tmp:
        store = make_store(Path(tmp), args.side)
        results: dict[int, list[float]] = {}
        for _ in range(args.runs):
            for m in (int(x) for x in args.settings.split(",")):
                results.setdefault(m, []).append(one_run(store, m))
                print(f"max_decodes={m}: +{results[m][-1]:.0f} MB", flush=True)
        base = statistics.median(results[max(results)])
        print("| max_decodes | peak RSS over idle, MB (runs) | median | vs all at once |\n|---:|---|---:|---:|")
        for m, v in results.items():
            med = statistics.median(v)
            print(f"| {m} | {', '.join(f'{x:.0f}' for x in v)} | {med:.0f} | {med / base:.2f} |")


if __name__ == "__main__":
    main()
