"""``nomic-memory search``: query a store by text or by image (registered on the main CLI app)."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import List, Optional

import typer

from .common import EXIT_FATAL, EXIT_OK, EXIT_USAGE, BackendChoice, fail, setup_logging


def search(
    query: Optional[List[str]] = typer.Argument(None, help="Text query (several: one scan answers them all)."),
    store: Optional[str] = typer.Option(None, "--store", help="Store directory or object-storage URI (s3://...; default: see README)."),
    k: int = typer.Option(10, "-k", "--top-k", min=1, help="How many results per query."),
    json_out: bool = typer.Option(False, "--json", help="Print the results as JSON (nothing else on stdout)."),
    table: Optional[str] = typer.Option(None, "--table", help="Table (model) to search, if the store has several."),
    image: Optional[List[Path]] = typer.Option(None, "--image", help="Search by this image (repeatable)."),
    template: Optional[str] = typer.Option(None, "--template", help='Format text queries first, e.g. "Query: {}".'),
    approx: bool = typer.Option(False, "--approx", help="Use the approximate index (build it with --build-index)."),
    build_index: bool = typer.Option(False, "--build-index", help="Build (or rebuild) the approximate index first."),
    index_method: Optional[str] = typer.Option(None, "--index-method", help="pooled (k-means-pooled copy; the default to build) or lance (LanceDB IVF_PQ); --approx uses whichever exists."),
    pool_factor: int = typer.Option(4, "--pool-factor", min=1, help="pooled index: vectors per pooled vector."),
    rerank: Optional[int] = typer.Option(None, "--rerank", min=1, help="--approx: candidates re-ranked exactly (default max(10k, 100))."),
    backend: BackendChoice = typer.Option("auto", "--backend", help="Device for the query model (auto: CUDA, MPS, CPU)."),
    model_name: Optional[str] = typer.Option(None, "--model-name", help="Load the query model from here instead of the id the table records."),
    allow_mismatch: bool = typer.Option(False, "--allow-mismatch", help="Search even if the model's revision/projection differ from the table's."),
    verbose: bool = typer.Option(False, "--verbose", "-v"),
) -> None:
    """Search the store: rank stored images against a text query or a query image."""
    setup_logging(verbose)
    from ..backends import BackendUnavailable
    from ..loading import ModelLoadError
    from ..search import APPROX_METHODS, Index, SearchError
    from ..store import StoreError, default_store_path

    texts = list(query or [])
    images = list(image or [])
    if not texts and not images and not build_index:
        raise fail("give a text query, --image FILE, or --build-index", EXIT_USAGE)
    if index_method is not None and index_method not in APPROX_METHODS:
        raise fail(f"unknown --index-method {index_method!r}; choose {' or '.join(APPROX_METHODS)}", EXIT_USAGE)
    for p in images:
        if not p.is_file():
            raise fail(f"no such image file: {p}")
    store_path = store or default_store_path()
    try:
        idx = Index.open(store_path, table, backend=backend.value, model_name=model_name,
                         allow_mismatch=allow_mismatch, template=template)
        if build_index:
            method = index_method or "pooled"
            typer.echo(f"Building the {method} index of table {idx.table.name} ...", err=True)
            desc = idx.build_approx_index(method, pool_factor=pool_factor)
            typer.echo(f"Built the {method} index in {desc['seconds']:.2f} s", err=True)
            if not texts and not images:
                if json_out:
                    typer.echo(json.dumps({"index": desc}))
                raise typer.Exit(EXIT_OK)
        queries: list = texts + images
        tl = time.perf_counter()
        _ = idx.model  # load (and check) the query model
        t0 = time.perf_counter()
        embs = idx.embed_queries(queries)
        t1 = time.perf_counter()
        results = idx.search_embeddings(embs, k, approx=approx, rerank=rerank, method=index_method)
        t2 = time.perf_counter()
    except (StoreError, SearchError, ModelLoadError, BackendUnavailable, ValueError) as e:
        raise fail(str(e), EXIT_FATAL)
    labels = [str(q) for q in queries]
    if json_out:
        out = {"store": str(idx.store.path), "table": idx.table.name, "model": idx.info.model_id,
               "kind": idx.info.kind, "k": k, "approx": approx,
               "load_seconds": round(t0 - tl, 4), "embed_seconds": round(t1 - t0, 4), "search_seconds": round(t2 - t1, 4),
               "warnings": idx.warnings,
               "results": [h.to_dict() for h in results[0]],
               "queries": [{"query": q, "kind": "text" if isinstance(src, str) else "image",
                            "results": [h.to_dict() for h in hits]}
                           for q, src, hits in zip(labels, queries, results)]}
        typer.echo(json.dumps(out))
        raise typer.Exit(EXIT_OK)
    from rich.console import Console
    from rich.table import Table

    console = Console()
    for q, src, hits in zip(labels, queries, results):
        title = f"{'image' if not isinstance(src, str) else 'query'}: {q}"
        t = Table(title=title, title_justify="left")
        t.add_column("rank", justify="right")
        t.add_column("score", justify="right")
        t.add_column("path", overflow="fold")
        t.add_column("page", justify="right")
        for h in hits:
            t.add_row(str(h.rank), f"{h.score:.4f}", h.file, str(h.page))
        console.print(t)
    mode = "approximate" if approx else "exact"
    console.print(f"{mode} search of {idx.table.name} ({idx.info.kind}): model loaded in {t0 - tl:.2f} s, embedded {len(queries)} "
                  f"quer{'y' if len(queries) == 1 else 'ies'} in {t1 - t0:.3f} s, searched in {t2 - t1:.3f} s",
                  style="dim")
    raise typer.Exit(EXIT_OK)
