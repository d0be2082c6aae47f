"""--image-only memory saving, measured.

Builds a random model with Qwen2.5-VL-3B's text width and full 151,936-token vocabulary on a
shallow stack (nomic_memory.model.tiny SIZES["vocab3b"]), then runs `nomic-memory embed` on the same
folder with and without --image-only, each in a fresh process, several times, and prints the
median memory of the loaded model (RSS when embedding starts) and peak RSS during embedding.

    uv run python benchmarks/image_only_memory.py [--runs 3] [--images 16] [--batch-size 8]
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

from nomic_memory.ingest.samples import make_sample_images

# A page scan, a 4:3 photo and a square photo, repeated (nomic_memory.ingest.samples).
SPECS = [("page", 1240, 1754, "jpg"), ("photo", 1024, 768, "jpg"), ("photo", 800, 800, "jpg")]


def make_images(d: Path, n: int) -> None:
    make_sample_images(d, n, specs=SPECS)


def run_once(model: Path, images: Path, store: Path, batch_size: int, image_only: bool, dtype: str) -> dict:
    cmd = [
        sys.executable,
        "-m",
        "nomic_memory.cli",
        "embed",
        str(images),
        "--model-name",
        str(model),
        "--backend",
        "cpu",
        "--store",
        str(store),
        "--batch-size",
        str(batch_size),
        "--workers",
        "0",
        "--json",
        "--no-progress",
        "--dtype",
        dtype,
    ] + (["--image-only"] if image_only else [])
    out = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if out.returncode != 0:
        raise SystemExit(out.stdout + out.stderr)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--images", type=int, default=16)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument(
        "--dtypes",
        default="bfloat16,float32",
        help="compute dtypes to measure; on CPU, float32 weights stay a lazily paged mmap "
        "of the checkpoint, bfloat16 (like CUDA) materialises them",
    )
    args = ap.parse_args()
    from nomic_memory.model.tiny import build_tiny_model

    with tempfile.TemporaryDirectory() as td:
        td = Path(td)
        model = build_tiny_model(td / "model", "colqwen", "vocab3b")
        (td / "imgs").mkdir()
        make_images(td / "imgs", args.images)
        mb = 2**20
        for dtype in args.dtypes.split(","):
            res: dict[str, list[dict]] = {"full": [], "image-only": []}
            for r in range(args.runs):
                for mode in res:
                    store = td / f"store-{dtype}-{mode}-{r}"
                    rep = run_once(model, td / "imgs", store, args.batch_size, mode == "image-only", dtype)
                    res[mode].append(rep["memory"])
            print(f"\ncompute dtype {dtype}")
            print(
                f"{'mode':<11} {'model resident (MB)':>20} {'peak while embedding (MB)':>26} {'above model (MB)':>17}"
            )
            rows = {}
            for mode, reps in res.items():
                base = statistics.median(m["baseline_bytes"] for m in reps) / mb
                peak = statistics.median(m["peak_bytes"] for m in reps) / mb
                rows[mode] = (base, peak)
                print(f"{mode:<11} {base:>20.1f} {peak:>26.1f} {peak - base:>17.1f}")
            saved = rows["full"][1] - rows["image-only"][1]
            print(
                f"image-only saves {saved:.1f} MB of peak RSS ({100 * saved / rows['full'][1]:.1f} %), "
                f"median of {args.runs} runs, {args.images} images, batch {args.batch_size}"
            )


if __name__ == "__main__":
    main()
