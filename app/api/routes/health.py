"""Liveness, readiness (store and, when configured, broker reachable) and Prometheus metrics."""

from __future__ import annotations

from fastapi import APIRouter, Response
from fastapi.responses import JSONResponse

from app.api.deps import RuntimeDep
from app.api.schemas import Health

router = APIRouter(tags=["health"])


@router.get("/healthz")
def healthz() -> Health:
    """The process answers."""
    return Health(status="ok")


@router.get("/readyz", responses={503: {"model": Health}})
def readyz(runtime: RuntimeDep) -> Response:
    """Ready to serve: the vector store answers (and the broker, when one is configured)."""
    checks: dict[str, str] = {}
    try:
        runtime.store.collections()
        checks["store"] = "ok"
    except Exception as error:  # noqa: BLE001 - any failure means not ready; say which
        checks["store"] = f"unavailable: {error}"
    try:
        checked = runtime.runner.ping()
        if checked is not None:
            checks[checked] = "ok"
    except Exception as error:  # noqa: BLE001 - the broker is the one thing a runner needs beyond the store
        checks["broker"] = f"unavailable: {error}"
    ok = all(value == "ok" for value in checks.values())
    body = Health(status="ok" if ok else "unavailable", checks=checks)
    return JSONResponse(body.model_dump(), status_code=200 if ok else 503)


@router.get("/metrics", response_class=Response)
def metrics(runtime: RuntimeDep) -> Response:
    return runtime.metrics.exposition()
