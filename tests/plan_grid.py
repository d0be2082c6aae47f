"""The grid of planner configurations whose numbers tests/data/plan_golden.json pins down.

The golden file was written by the planner before it was split into one function per phase;
``test_plan_numbers_unchanged`` checks the split planner gives identical bytes for every
configuration.  Regenerate (only for an intended change of the model):
``uv run python tests/plan_grid.py tests/data/plan_golden.json``.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import sys

from nomic_memory.perf.plan import Arch, plan_memory

MIXED = [768, 4, 391, 768, 713, 16, 756, 100]


def grid():
    for variant, B, backend, attn, forward, io, mixed in itertools.product(
        ["colnomic-3b", "nomic-7b"],
        [1, 3, 8, 32],
        ["cuda", "cpu"],
        ["sdpa", "eager", "flash_attention_2"],
        ["lean", "colpali"],
        [False, True],
        [False, True],
    ):
        kind = "biqwen" if variant.startswith("nomic") else "colqwen"
        tc = (MIXED * 4)[:B] if mixed else None
        yield dict(
            variant=variant,
            batch_size=B,
            kind=kind,
            backend=backend,
            attn=attn,
            forward=forward,
            image_only=io,
            token_counts=tc,
        )


def digest(p) -> str:
    rec = {
        "weights": p.weights_bytes,
        "act": p.activation_bytes,
        "peak": p.peak_bytes,
        "phases": p.phases,
        "components": {k: [[c.name, c.bytes] for c in v] for k, v in p.components.items()},
        "weight_components": [[c.name, c.bytes] for c in p.weights],
        "seq_len": p.seq_len,
        "visual_tokens": p.visual_tokens,
    }
    return hashlib.sha256(json.dumps(rec, sort_keys=True).encode()).hexdigest()[:16]


def plan(g: dict):
    return plan_memory(
        Arch.for_variant(g["variant"]),
        batch_size=g["batch_size"],
        kind=g["kind"],
        backend=g["backend"],
        attn=g["attn"],
        forward=g["forward"],
        image_only=g["image_only"],
        token_counts=g["token_counts"],
    )


def key(g: dict) -> str:
    return ",".join(str(v) for v in g.values())


if __name__ == "__main__":
    rows = [[key(g), plan(g).peak_bytes, digest(plan(g))] for g in grid()]
    with open(sys.argv[1], "w") as f:
        f.write("[\n" + ",\n".join(json.dumps(r) for r in rows) + "\n]\n")
    print(len(rows), "configurations")
