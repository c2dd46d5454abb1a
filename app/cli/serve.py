"""`nominal serve`: the HTTP API and the operator page on the configured store."""

from __future__ import annotations

import ipaddress
from typing import Annotated

import typer

from app.cli.context import state
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


def run_server(config: Config, *, host: str = LOOPBACK, port: int = 8000, workers: int = 1) -> None:
    """Start uvicorn on the API; refuses unsafe choices with a warning instead of an error."""
    import uvicorn

    from app.api.main import create_app

    out = Output(json_mode=False)
    if not config.key_roles() and not _is_loopback(host):
        out.warn(f"no NOMINAL_API_KEYS configured: listening on {LOOPBACK} only, not {host}")
        host = LOOPBACK
    if workers > 1 and not config.qdrant_url:
        out.warn("the embedded store admits one process: serving with 1 worker (set QDRANT_URL for more)")
        workers = 1
    store = config.qdrant_url or f"embedded store in {config.data}"
    out.err.print(f"Nominal on http://{host}:{port} (operator page: http://{host}:{port}/, "
                  f"docs: http://{host}:{port}/docs), {store}", highlight=False)
    if workers == 1:
        _serve_with_torch_on_main_thread(uvicorn.Server(uvicorn.Config(create_app(config), host=host, port=port, log_level="info")))
    else:
        # Each worker process builds its own app (and model) from the environment.
        uvicorn.run("app.api.main:create_app", factory=True, host=host, port=port, workers=workers, log_level="info")


def _serve_with_torch_on_main_thread(server) -> None:
    """uvicorn on a thread; this (main) thread runs every torch call (see `indexing.torch_thread`).

    uvicorn installs no signal handlers off the main thread, so SIGINT and SIGTERM
    are caught here and ask it to shut down; torch calls are served until it has
    (its shutdown may still wait for a job's last batch).
    """
    import signal
    import threading

    from indexing.torch_thread import serve_torch_calls

    thread = threading.Thread(target=server.run, name="uvicorn")

    def stop(signum: int, frame: object) -> None:
        server.should_exit = True

    previous = {sig: signal.signal(sig, stop) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        serve_torch_calls(until=lambda: not thread.is_alive(), on_ready=thread.start)
    finally:
        server.should_exit = True
        if thread.is_alive():
            thread.join()
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False
