"""``nomic-memory mcp``: serve a store to assistants over the Model Context Protocol."""

from __future__ import annotations

import sys
from enum import Enum
from typing import Optional

import typer

from nomic_memory.cli.common import (
    EXIT_FATAL,
    EXIT_USAGE,
    BackendChoice,
    fail,
    resolve_store,
    setup_logging,
    store_option,
)
from nomic_memory.cli.serve import is_loopback
from nomic_memory.errors import NomicMemoryError


class TransportChoice(str, Enum):
    stdio = "stdio"
    http = "http"


def mcp(
    store: Optional[str] = store_option(),
    table: Optional[str] = typer.Option(
        None, "--table", metavar="NAME", help="Table (model) to serve, if the store has several."
    ),
    transport: TransportChoice = typer.Option(
        "stdio", "--transport", help="stdio (the client starts this command) or http (Streamable HTTP at /mcp)."
    ),
    host: str = typer.Option(
        "127.0.0.1", "--host", metavar="ADDRESS", help="http: address to bind; anything but loopback needs --token."
    ),
    port: int = typer.Option(
        8765, "--port", metavar="N", min=0, max=65535, help="http: port to bind (0: any free port)."
    ),
    token: Optional[str] = typer.Option(
        None,
        "--token",
        metavar="TOKEN",
        envvar="NOMIC_MEMORY_MCP_TOKEN",
        help="http: require 'Authorization: Bearer TOKEN' (or set NOMIC_MEMORY_MCP_TOKEN).",
    ),
    allow_write: bool = typer.Option(
        False, "--allow-write", help="Offer the add_folder tool (embeds a folder into the store)."
    ),
    backend: BackendChoice = typer.Option(
        "auto", "--backend", help="Device for the query model (auto: CUDA, MPS, CPU)."
    ),
    model_name: Optional[str] = typer.Option(
        None, "--model-name", metavar="PATH", help="Load the query model from here instead of the id the table records."
    ),
    template: Optional[str] = typer.Option(
        None, "--template", metavar="TEXT", help='Format text queries first, e.g. "Query: {}".'
    ),
    verbose: bool = typer.Option(False, "--verbose", "-v", help="Log what happens (INFO) on stderr."),
) -> None:
    """Serve the store to AI assistants (Model Context Protocol): search, get_page, stats tools."""
    setup_logging(verbose)
    if token is not None and not token.strip():
        raise fail("--token is empty", EXIT_USAGE)
    if transport is TransportChoice.http and not is_loopback(host) and not token:
        raise fail(
            f"--host {host} is reachable from other machines: protect it with --token TOKEN "
            "(or NOMIC_MEMORY_MCP_TOKEN)",
            EXIT_USAGE,
        )
    if template is not None and "{}" not in template:
        raise fail(f'--template {template!r} has no {{}} where the query goes (e.g. "Query: {{}}")', EXIT_USAGE)
    # late: as above
    from nomic_memory.serve.mcp import (  # late: pyarrow and the MCP SDK; the CLI starts without them
        create_mcp_server,
        open_page_store,
        widen_stdout_pipe,
    )

    try:
        pages = open_page_store(
            resolve_store(store),
            table,
            backend=backend.value,
            model_name=model_name,
            template=template,
            allow_write=allow_write,
        )
    except NomicMemoryError as e:
        raise fail(str(e), EXIT_FATAL)
    server = create_mcp_server(pages)
    if transport is TransportChoice.stdio:
        print(
            f"nomic-memory MCP server on stdio: table {pages.index.table.name} of {pages.index.store.path}",
            file=sys.stderr,
            flush=True,
        )
        widen_stdout_pipe()
        server.run("stdio")
        return
    _run_http(server, pages, host, port, token)


def _run_http(server, pages, host: str, port: int, token: str | None) -> None:
    import threading
    import time

    import uvicorn

    from nomic_memory.serve.mcp import bearer_app  # late: the MCP SDK; the CLI starts without it

    app = server.streamable_http_app(host=host)
    if token:
        app = bearer_app(app, token)
    srv = uvicorn.Server(uvicorn.Config(app, host=host, port=port, log_level="warning"))

    def announce():
        while not srv.started and not srv.should_exit:
            time.sleep(0.05)
        for s in getattr(srv, "servers", []) or []:
            for sock in s.sockets:
                addr = sock.getsockname()
                shown = f"[{addr[0]}]" if ":" in addr[0] else addr[0]
                print(
                    f"nomic-memory MCP server (Streamable HTTP): table {pages.index.table.name} at "
                    f"http://{shown}:{addr[1]}/mcp",
                    file=sys.stderr,
                    flush=True,
                )
                return

    threading.Thread(target=announce, daemon=True).start()
    srv.run()
