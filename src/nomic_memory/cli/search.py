"""``nomic-memory search``: query a store by text or by image (registered on the main CLI app)."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Optional

import typer

from nomic_memory.cli.common import (
    EXIT_OK,
    EXIT_USAGE,
    QUERY_BACKEND,
    QUERY_MODEL_NAME,
    TEMPLATE,
    VERBOSE,
    BackendChoice,
    allow_mismatch_option,
    check_template,
    exit_without_teardown,
    fail,
    json_option,
    number_option,
    open_for_queries,
    setup_logging,
    store_option,
    table_option,
    value_option,
)
from nomic_memory.cli.remote import search_via_server
from nomic_memory.cli.results import print_results
from nomic_memory.errors import NomicMemoryError
from nomic_memory.locations import default_store_path


# Long: the options checked in the order a user meets them, then the server or the in-process search and its output.
def search(
    query: Optional[list[str]] = typer.Argument(
        None, metavar="QUERY", help="Text query (several: one scan answers them all)."
    ),
    store: Optional[str] = store_option(),
    k: int = typer.Option(10, "-k", "--top-k", min=1, metavar="N", help="How many results per query."),
    json_out: bool = json_option("Print the results as JSON (nothing else on stdout)."),
    table: Optional[str] = table_option("search"),
    image: Optional[list[str]] = value_option(
        "--image",
        "FILE",
        "Search by this image, or by a page of a PDF or multi-page TIFF: FILE#N (page N; page 1 without #N). Repeatable.",
    ),
    template: Optional[str] = TEMPLATE,
    where: Optional[str] = value_option(
        "--where",
        "SQL",
        "Only rows matching this SQL predicate over path, root, page, mtime, size, width, height, e.g. \"page > 2 AND path LIKE 'reports/%'\".",
    ),
    exact: bool = typer.Option(
        False, "--exact", help="Score every row (do not use the search index, which large tables use by themselves)."
    ),
    approx: bool = typer.Option(
        False,
        "--approx",
        help="Deprecated: the older hand-built approximate index (build it with --build-index); the search index needs neither.",
    ),
    build_index: bool = typer.Option(False, "--build-index", help="Build (or rebuild) the approximate index first."),
    index_method: Optional[str] = value_option(
        "--index-method",
        "METHOD",
        "pooled (k-means-pooled copy; the default to build) or lance (LanceDB IVF_PQ); --approx uses whichever exists.",
    ),
    pool_factor: int = number_option(4, "--pool-factor", "pooled index: vectors per pooled vector.", min=1),
    rerank: Optional[int] = number_option(
        None,
        "--rerank",
        "Candidates re-ranked exactly (index: 100, more as the table outgrows its codebook: ~160 at 100,000 rows; --approx: max(10k, 100)).",
        min=1,
    ),
    backend: BackendChoice = QUERY_BACKEND,
    model_name: Optional[str] = QUERY_MODEL_NAME,
    allow_mismatch: bool = allow_mismatch_option("Search"),
    no_server: bool = typer.Option(
        False, "--no-server", help="Search in this process even when a server of the store is running."
    ),
    verbose: bool = VERBOSE,
) -> None:
    """Search the store: rank stored images against a text query or a query image."""
    if not verbose:
        # LanceDB and Lance log their own warnings (index training, deprecations) from Rust,
        # read once at import: --json promises nothing but the document, and a user nothing
        # they cannot act on.  LANCE_LOG / LANCEDB_LOG set by the user still win.
        os.environ.setdefault("LANCE_LOG", "error")
        os.environ.setdefault("LANCEDB_LOG", "error")
    setup_logging(verbose)
    texts = list(query or [])
    images = list(image or [])
    if not texts and not images and not build_index:
        raise fail("give a text query, --image FILE, or --build-index", EXIT_USAGE)
    if exact and approx:
        raise fail("--exact and --approx exclude each other", EXIT_USAGE)
    check_template(template)
    if texts and not (images or no_server or approx or build_index or index_method or model_name or allow_mismatch):
        _answer_from_server(store or default_store_path(), table, texts, k, where, template, json_out)
    from nomic_memory.model.colpali import query_only_process  # late: the model package imports torch
    from nomic_memory.store.lancedb_import import import_lancedb  # late: the CLI starts without the store

    query_only_process()  # this process embeds queries and searches: the model's code without scipy,
    import_lancedb(pandas=False)  # and pyarrow without pandas (nothing here hands it a pandas object)
    exit_without_teardown()  # once the answer is out (and what it wrote committed), nothing is left to tidy
    from nomic_memory.search.approx import APPROX_METHODS  # late: pyarrow; the CLI starts without it
    from nomic_memory.search.index import Index, check_where  # late: pyarrow; the CLI starts without it
    from nomic_memory.search.queries import QueryError, check_text_query  # late: the search package imports pyarrow

    try:  # the same rule as the server's
        texts = [check_text_query(t) for t in texts]
    except QueryError as e:
        raise fail(str(e), EXIT_USAGE)
    if index_method is not None and index_method not in APPROX_METHODS:
        raise fail(f"unknown --index-method {index_method!r}; choose {' or '.join(APPROX_METHODS)}", EXIT_USAGE)
    if index_method is not None and not (approx or build_index):
        raise fail("--index-method chooses the approximate index: use it with --approx or --build-index", EXIT_USAGE)
    _check_images(images)
    idx = open_for_queries(Index.open, store, table, backend, model_name, template, allow_mismatch=allow_mismatch)
    try:  # a bad filter is refused before the model loads
        where = check_where(idx.table.table.to_lance(), where)
    except NomicMemoryError as e:
        raise fail(str(e), EXIT_USAGE)
    if build_index:
        _build_index(idx, index_method or "pooled", pool_factor, json_out and not texts and not images)
        if not texts and not images:
            raise typer.Exit(EXIT_OK)
    queries: list = texts + [Path(ref) for ref in images]  # a Path is an image query (a str is text)
    tl = time.perf_counter()
    _ = idx.model  # load (and check) the query model
    t0 = time.perf_counter()
    embs = idx.embed_queries(queries)
    t1 = time.perf_counter()
    results = idx.search_embeddings(
        embs, k, exact=exact, approx=approx, rerank=rerank, method=index_method, where=where
    )
    t2 = time.perf_counter()
    timing = {
        "load_seconds": round(t0 - tl, 4),
        "embed_seconds": round(t1 - t0, 4),
        "search_seconds": round(t2 - t1, 4),
    }
    meta = {
        "store": str(idx.store.path),
        "table": idx.table.name,
        "model": idx.info.model_id,
        "kind": idx.info.kind,
        "warnings": idx.warnings,
        "via": idx.last_via,
    }
    _output(
        meta,
        queries,
        [[h.to_dict() for h in hits] for hits in results],
        json_out,
        k=k,
        approx=approx,
        where=where,
        timing=timing,
    )
    raise typer.Exit(EXIT_OK)


def _answer_from_server(store_path, table, texts: list[str], k: int, where, template, json_out: bool) -> None:
    """Print the answer of a running server of this store and exit, if one can give the in-process answer."""
    where = where if where and where.strip() else None
    found = search_via_server(store_path, table=table, texts=texts, k=k, where=where, template=template)
    if found is not None:  # the same hits, and no model to load
        meta, results, timing = found
        _output(meta, texts, results, json_out, k=k, approx=False, where=where, timing=timing)
        raise typer.Exit(EXIT_OK)


def _output(meta: dict, queries: list, results: list, json_out: bool, **kw) -> None:
    if json_out:
        _print_json(meta, queries, results, **kw)
    else:
        kw.pop("k", None)
        print_results(meta, queries, results, **kw)


def _build_index(idx, method: str, pool_factor: int, print_json: bool) -> None:
    typer.echo(f"Building the {method} index of table {idx.table.name} ...", err=True)
    desc = idx.build_approx_index(method, pool_factor=pool_factor)
    typer.echo(f"Built the {method} index in {desc['seconds']:.2f} s", err=True)
    if print_json:
        typer.echo(json.dumps({"index": desc}))


def _kind(query) -> str:
    return "text" if isinstance(query, str) else "image"


def _print_json(meta: dict, queries: list, results: list, *, k: int, approx: bool, where, timing: dict) -> None:
    """One JSON document: ``queries`` (each query with its own results) and ``results`` (one
    list of hits per query, in query order)."""
    server = {"server": meta["server"]} if meta.get("server") else {}
    if meta.get("via"):
        server["via"] = meta["via"]  # index or exact: how this process found the candidates
    out = {
        "store": meta["store"],
        "table": meta["table"],
        "model": meta["model"],
        "kind": meta["kind"],
        "k": k,
        "approx": approx,
        "where": where,
        **server,
        **timing,
        "warnings": meta["warnings"],
        "results": results,
        "queries": [{"query": str(q), "kind": _kind(q), "results": r} for q, r in zip(queries, results)],
    }
    typer.echo(json.dumps(out))


def _check_images(images: list[str]) -> None:
    """Before the model loads: a missing file or page (``FILE#N``) is one line, exit 1."""
    if not images:
        return
    from nomic_memory.ingest.pageref import resolve_page_ref  # late: PIL, pypdfium2

    try:
        for ref in images:
            resolve_page_ref(ref)
    except NomicMemoryError as e:
        raise fail(f"--image {e}")
