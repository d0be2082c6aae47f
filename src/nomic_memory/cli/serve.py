"""``nomic-memory serve``: the resident search service."""

from __future__ import annotations

import ipaddress
from pathlib import Path
from typing import Optional

import typer

from nomic_memory.cli.common import (
    EXIT_FATAL,
    EXIT_USAGE,
    QUERY_BACKEND,
    QUERY_MODEL_NAME,
    TEMPLATE,
    BackendChoice,
    allow_mismatch_option,
    fail,
    host_option,
    number_option,
    open_for_queries,
    port_option,
    setup_logging,
    store_option,
    table_option,
    value_option,
    verbose_option,
)
from nomic_memory.errors import NomicMemoryError, UsageError
from nomic_memory.serve.registry import register, unregister


def is_loopback(host: str) -> bool:
    """Only this machine can reach ``host`` (127.0.0.0/8, ::1, localhost)."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def token_option(envvar: str, help: str):
    """``--token TOKEN`` (or ``$envvar``): the bearer token a server asks of every client."""
    return typer.Option(None, "--token", metavar="TOKEN", envvar=envvar, help=help)


def check_access(host: str | None, token: str | None, envvar: str, no_auth: bool | None = None) -> None:
    """A server's --host and --token, refused (exit 2) before anything loads: an empty token, and
    an address other machines reach without one (``host`` None: nothing is bound; ``no_auth``:
    the command's --no-auth, which serves such an address open; None: the command has none)."""
    if token is not None and not token.strip():
        raise fail("--token is empty", EXIT_USAGE)
    if token and no_auth:
        raise fail("--token and --no-auth contradict each other", EXIT_USAGE)
    if host is not None and not is_loopback(host) and not token and not no_auth:
        open_hint = "" if no_auth is None else ", or pass --no-auth to serve it open"
        raise fail(
            f"--host {host} is reachable from other machines: protect it with --token TOKEN (or {envvar}){open_hint}",
            EXIT_USAGE,
        )


def serve(
    store: Optional[str] = store_option(),
    table: Optional[str] = table_option("serve"),
    host: str = host_option("Address to bind; anything but loopback needs --token or --no-auth."),
    port: int = port_option(8000, "Port to bind (0: any free port).", metavar="PORT", envvar="NOMIC_MEMORY_PORT"),
    backend: BackendChoice = QUERY_BACKEND,
    token: Optional[str] = token_option(
        "NOMIC_MEMORY_TOKEN", "Require 'Authorization: Bearer TOKEN' on every API route (or set NOMIC_MEMORY_TOKEN)."
    ),
    no_auth: bool = typer.Option(
        False, "--no-auth", help="Serve without a token on a non-loopback address (anyone who can reach it can search)."
    ),
    allow_host: Optional[list[str]] = value_option(
        "--allow-host",
        "HOST",
        "Also accept requests addressed to this host name (repeatable; '*': any). Loopback names and --host are always accepted.",
    ),
    cors_origin: Optional[list[str]] = value_option(
        "--cors-origin", "ORIGIN", "Allow browser calls from this origin (repeatable); CORS is off otherwise."
    ),
    template: Optional[str] = TEMPLATE,
    model_name: Optional[str] = QUERY_MODEL_NAME,
    allow_mismatch: bool = allow_mismatch_option("Serve"),
    max_body_mb: float = number_option(
        32.0, "--max-body-mb", "Largest request body (uploads included), MB.", metavar="MB", min=0.001
    ),
    max_image_pixels: int = number_option(
        40_000_000, "--max-image-pixels", "Largest uploaded image, pixels (judged before decoding).", min=1
    ),
    max_query_tokens: int = number_option(
        512,
        "--max-query-tokens",
        "Longest text query, in tokens (query prompt included); longer ones are refused (422).",
        min=8,
    ),
    batch_window_ms: float = number_option(
        5.0,
        "--batch-window-ms",
        "How long a search waits for others to share its forward and scan.",
        metavar="MS",
        min=0.0,
    ),
    exact_batching: bool = typer.Option(
        False,
        "--exact-batching",
        help="Batch only queries of equal length: scores bit-identical to a lone search (default: one padded forward, equal to float32 rounding).",
    ),
    watch: Optional[list[Path]] = value_option(
        "--watch",
        "DIR",
        "Keep the store in sync with this folder while serving, as `nomic-memory watch` does, with the server's model (repeatable).",
    ),
    verbose: bool = verbose_option("requests and what happens"),
) -> None:
    """Serve a store over HTTP: a search API and a search page showing why pages matched."""
    setup_logging(verbose)
    check_access(host, token, "NOMIC_MEMORY_TOKEN", no_auth)
    from nomic_memory.search.index import Index  # late: pyarrow; the CLI starts without it
    from nomic_memory.serve.app import create_app  # late: torch and FastAPI (a second); the CLI starts without it
    from nomic_memory.serve.service import (  # late: torch (a second); the CLI starts without it
        SearchService,
        ServeConfig,
    )

    cfg = ServeConfig(
        token=token or None,
        cors_origins=list(cors_origin or []),
        host=host,
        allow_hosts=list(allow_host or []),
        max_query_tokens=max_query_tokens,
        max_body_bytes=int(max_body_mb * (1 << 20)),
        max_image_pixels=max_image_pixels,
        batch_window_ms=batch_window_ms,
        exact_batching=exact_batching,
    )
    try:
        idx = open_for_queries(Index.open, store, table, backend, model_name, template, allow_mismatch=allow_mismatch)
        service = SearchService(idx, cfg)  # loads and checks the model now
        if watch:
            _watch_in_background(watch, idx, service)
    except NomicMemoryError as e:
        raise fail(str(e), EXIT_FATAL)
    import uvicorn

    server = _uvicorn_server(
        uvicorn.Config(
            create_app(service, cfg),
            host=host,
            port=port,
            log_level="warning",
            access_log=verbose,
            timeout_keep_alive=30,
        )
    )
    entry = {
        "token": cfg.token,
        "table": idx.table.name,
        "table_given": table is not None,
        "model_id": idx.info.model_id,
        "kind": idx.info.kind,
        "template": template,
        "model_name": model_name,
        "warnings": list(idx.warnings),
        "max_k": cfg.max_k,
        "max_queries": cfg.max_queries,
    }
    _announce(server, idx, host, lambda url: server.registered.append(_register(idx.store.path, url, entry)))
    try:
        server.run()
    finally:
        unregister(server.registered[0] if server.registered else None)


def _uvicorn_server(config):
    """A uvicorn server that removes its address files (``registered``) as it starts shutting down."""
    import uvicorn  # late: the CLI starts without it

    class Server(uvicorn.Server):
        """uvicorn's server, removing its address file as it starts shutting down (uvicorn re-raises
        SIGTERM/SIGINT once shut down, so code after ``run()`` never runs then)."""

        registered: list

        async def shutdown(self, sockets=None):
            for path in getattr(self, "registered", []):
                unregister(path)
            await super().shutdown(sockets)

    server = Server(config)
    server.registered = []
    return server


def _register(store, url: str, entry: dict):
    """Leave the address (and token) where `nomic-memory search` on this store finds it."""
    import time

    try:
        return register(store, {**entry, "url": url, "started": time.time()})
    except OSError:  # no writable per-user directory: searches simply do not find this server
        return None


def _watch_in_background(dirs: list[Path], idx, service) -> None:
    """A watcher thread that embeds with the server's loaded model into the served table; the
    server sees its rows as they are committed, and stops it (after the batch in flight) on exit."""
    import threading

    from nomic_memory.api import Embedder  # late: torch (a second); the CLI starts without it
    from nomic_memory.cli.watch import ConsoleListener  # late: only with --watch
    from nomic_memory.run.watch import Watcher, WatchOptions  # late: pyarrow and watchdog; the CLI starts without them
    from nomic_memory.store.table import Store  # late: pyarrow; the CLI starts without it

    if idx.warnings:  # --allow-mismatch let another model serve this table: it must not write to it
        raise UsageError(
            "--watch embeds with the server's model, which does not match the table "
            f"{idx.table.name!r}: drop --allow-mismatch, or serve with the table's model"
        )

    class Listener(ConsoleListener):
        def run_started(self, root, trigger, paths):
            ui = super().run_started(root, trigger, paths)

            def progress(kind: str, data: dict) -> None:
                ui(kind, data)
                if kind in ("batch", "pruned", "done"):
                    service.table_changed()

            return progress

    emb = Embedder.from_loaded(service.lm)
    store = Store(idx.store.path) if idx.store.local else idx.store
    watcher = Watcher(
        emb,
        dirs,
        store,
        WatchOptions(table_name=idx.table.name),
        Listener(progress=False, json_out=False, batch_size=8, model=emb.loaded.model_id, err=True),
    )
    watcher.start_observing()  # events from now on; the catch-up runs in the thread

    def run() -> None:
        try:
            watcher.run()
        except NomicMemoryError as e:  # e.g. the model cannot embed documents: serving goes on
            typer.echo(f"Error: watching stopped: {e}", err=True)

    thread = threading.Thread(target=run, name="nomic-memory-watch", daemon=True)
    thread.start()

    def stop() -> None:
        watcher.stop()
        thread.join()

    service.on_stop.append(stop)


def _announce(server, idx, host: str, on_listening=None) -> None:
    """Print the URL once uvicorn is listening (port 0 resolves to the real port then)."""
    import sys

    def listening(address: str, shown: str, port: int) -> None:
        print(
            f"Serving table {idx.table.name} ({idx.info.kind}, {idx.table.count()} rows) at http://{shown}:{port}/",
            file=sys.stderr,
            flush=True,
        )
        if on_listening is not None:
            local = {"0.0.0.0": "127.0.0.1", "::": "[::1]"}.get(address, shown)
            on_listening(f"http://{local}:{port}")

    when_listening(server, listening)


def when_listening(server, listening) -> None:
    """Call ``listening(address, shown, port)`` from a thread once uvicorn's ``server`` listens
    (port 0 has resolved to the real port then): ``shown`` is the address as a URL writes it."""
    import threading
    import time

    def wait() -> None:
        while not server.started and not server.should_exit:
            time.sleep(0.05)
        for s in getattr(server, "servers", []) or []:
            for sock in s.sockets:
                address, port = sock.getsockname()[:2]
                listening(address, f"[{address}]" if ":" in address else address, port)
                return

    threading.Thread(target=wait, daemon=True).start()
