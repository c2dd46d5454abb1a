"""`nominal serve`: the HTTP API and the operator page on the configured store."""

from __future__ import annotations

import errno
import ipaddress
import socket
from typing import Annotated

import typer

from app.cli.context import state
from app.cli.errors import CliError
from app.cli.output import Output
from app.config import Config

LOOPBACK = "127.0.0.1"


def serve(
    ctx: typer.Context,
    host: Annotated[str, typer.Option(help="Address to listen on. Without NOMINAL_API_KEYS only loopback is allowed.")] = LOOPBACK,
    port: Annotated[int, typer.Option(min=1, max=65535, envvar="NOMINAL_PORT", help="TCP port.")] = 8000,
    workers: Annotated[int, typer.Option(min=1, help="uvicorn worker processes (needs QDRANT_URL: the embedded store admits one process).")] = 1,
) -> None:
    """Serve the operator page at / and the HTTP API: verdicts, nominal images, calibrations, jobs; docs at /docs.

    With no NOMINAL_API_KEYS the server accepts every request, so it listens on
    127.0.0.1 only whatever --host says. Set keys (KEY:read or KEY:admin, comma
    separated) to listen on other addresses.

    Examples:

      nominal serve                                  # http://127.0.0.1:8000/

      NOMINAL_API_KEYS=s3cret:admin,lin3:read nominal serve --host 0.0.0.0

      QDRANT_URL=http://qdrant:6333 nominal serve --host 0.0.0.0 --workers 4
    """
    run_server(state(ctx).config, host=host, port=port, workers=workers)


def listening_host(config: Config, host: str) -> str:
    """The address to listen on: without API keys, loopback only (with a warning if another was asked)."""
    if not config.key_roles() and not _is_loopback(host):
        Output(json_mode=False).warn(f"no NOMINAL_API_KEYS configured: listening on {LOOPBACK} only, not {host}")
        return LOOPBACK
    return host


def bind(host: str, port: int) -> socket.socket:
    """The listening socket, bound now: a port in use stops the command before any work, exit status 1.

    The server is handed this very socket, so nothing can take the port in between.
    """
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn: no wait on a closed server's TIME_WAIT
    try:
        sock.bind((host, port))
    except OSError as error:
        sock.close()
        reason = "is already in use" if error.errno == errno.EADDRINUSE else f"cannot be bound ({error.strerror})"
        raise CliError(f"port {port} on {host} {reason}: stop what listens there, or choose another with --port") from None
    sock.set_inheritable(True)  # uvicorn's worker processes inherit it
    return sock


def run_server(config: Config, *, host: str = LOOPBACK, port: int = 8000, workers: int = 1,
               sock: socket.socket | None = None) -> None:
    """Serve the API on `sock` (bound here if not given); exit status 1 when it never started.

    Unsafe choices are corrected with a warning: no API keys means loopback only, and
    the embedded store admits one worker process.
    """
    import uvicorn

    from app.api.main import create_app

    out = Output(json_mode=False)
    host = listening_host(config, host)
    if workers > 1 and not config.qdrant_url:
        out.warn("the embedded store admits one process: serving with 1 worker (set QDRANT_URL for more)")
        workers = 1
    sock = sock or bind(host, port)
    store = config.qdrant_url or f"embedded store in {config.data}"
    out.err.print(f"Nominal on http://{host}:{port} (operator page: http://{host}:{port}/, "
                  f"docs: http://{host}:{port}/docs), {store}", highlight=False)
    with sock:
        if workers == 1:
            server = uvicorn.Server(uvicorn.Config(create_app(config), log_level="info"))
            server.run(sockets=[sock])
            if not server.started:
                raise CliError("the server stopped before it started serving: see the log lines above")
        else:
            # Each worker process builds its own app (and model) from the environment.
            uvicorn.run("app.api.main:create_app", factory=True, fd=sock.fileno(), workers=workers, log_level="info")


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False
