"""``nomic-memory mcp``: serve a store to assistants over the Model Context Protocol."""

from __future__ import annotations

import sys
from enum import Enum
from typing import Optional

import typer

from nomic_memory.cli.common import (
    EXIT_FATAL,
    QUERY_BACKEND,
    QUERY_MODEL_NAME,
    TEMPLATE,
    VERBOSE,
    BackendChoice,
    check_template,
    fail,
    host_option,
    open_for_queries,
    port_option,
    setup_logging,
    store_option,
    table_option,
)
from nomic_memory.cli.serve import check_access, token_option, when_listening
from nomic_memory.errors import NomicMemoryError


class TransportChoice(str, Enum):
    stdio = "stdio"
    http = "http"


def mcp(
    store: Optional[str] = store_option(),
    table: Optional[str] = table_option("serve"),
    transport: TransportChoice = typer.Option(
        "stdio", "--transport", help="stdio (the client starts this command) or http (Streamable HTTP at /mcp)."
    ),
    host: str = host_option("http: address to bind; anything but loopback needs --token."),
    port: int = port_option(8765, "http: port to bind (0: any free port)."),
    token: Optional[str] = token_option(
        "NOMIC_MEMORY_MCP_TOKEN", "http: require 'Authorization: Bearer TOKEN' (or set NOMIC_MEMORY_MCP_TOKEN)."
    ),
    allow_write: bool = typer.Option(
        False, "--allow-write", help="Offer the add_folder tool (embeds a folder into the store)."
    ),
    backend: BackendChoice = QUERY_BACKEND,
    model_name: Optional[str] = QUERY_MODEL_NAME,
    template: Optional[str] = TEMPLATE,
    verbose: bool = VERBOSE,
) -> None:
    """Serve the store to AI assistants (Model Context Protocol): search, get_page, stats tools."""
    setup_logging(verbose)
    check_access(host if transport is TransportChoice.http else None, token, "NOMIC_MEMORY_MCP_TOKEN")
    check_template(template)
    from nomic_memory.serve.mcp import (  # late: pyarrow and the MCP SDK; the CLI starts without them
        create_mcp_server,
        open_page_store,
        widen_stdout_pipe,
    )

    try:
        pages = open_for_queries(open_page_store, store, table, backend, model_name, template, allow_write=allow_write)
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
    import uvicorn

    from nomic_memory.serve.mcp import bearer_app  # late: the MCP SDK; the CLI starts without it

    app = server.streamable_http_app(host=host)
    if token:
        app = bearer_app(app, token)
    srv = uvicorn.Server(uvicorn.Config(app, host=host, port=port, log_level="warning"))

    def announce(address: str, shown: str, port: int) -> None:
        print(
            f"nomic-memory MCP server (Streamable HTTP): table {pages.index.table.name} at http://{shown}:{port}/mcp",
            file=sys.stderr,
            flush=True,
        )

    when_listening(srv, announce)
    srv.run()
