"""`nominal serve`: the HTTP API (and, once there is one, the operator page) on the configured store."""

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
    """Serve the HTTP API: verdicts, nominal images, calibrations, jobs; OpenAPI docs at /docs.

    With no NOMINAL_API_KEYS the server accepts every request, so it listens on
    127.0.0.1 only whatever --host says. Set keys (KEY:read or KEY:admin, comma
    separated) to listen on other addresses.

    Examples:

      nominal serve                                  # http://127.0.0.1:8000/docs

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
    out.err.print(f"Nominal on http://{host}:{port} (docs: http://{host}:{port}/docs), {store}", highlight=False)
    if workers == 1:
        uvicorn.run(create_app(config), host=host, port=port, log_level="info")
    else:
        # Each worker process builds its own app (and model) from the environment.
        uvicorn.run("app.api.main:create_app", factory=True, host=host, port=port, workers=workers, log_level="info")


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False
