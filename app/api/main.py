"""The FastAPI application: `create_app(config)` wires the routes to one store, service and job runner.

Run it with `nominal serve` (or `uvicorn --factory app.api.main:create_app`).
One process owns one model per backbone, loaded at start-up. Handlers hand their
blocking work to FastAPI's thread pool (`off_the_loop`), never the event loop; the
model work inside it (forward passes, patch searches) runs on the process's one
`ComputeThread` (`indexing.compute`), whichever thread asked, in every worker process
alike. Jobs (uploads, re-indexes) go to the runner `build_runner` chose: a thread of
this process, or Celery workers.
"""

from __future__ import annotations

import logging
from functools import partial
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI
from fastapi_offline import FastAPIOffline

from app import web
from app.api import errors
from app.api.limits import BodyLimit
from app.api.metrics import Metrics, drift_reports, search_modes
from app.api.routes import (
    calibrations, drift, feedback, health, history, images, inspect, jobs, review, settings, training,
)
from app.api.runtime import ApiRuntime
from app.config import Config, get_config
from app.runtime import backbone_pool, build_history, build_runner, build_service, open_configured_store
from indexing.compute import ComputeThread
from indexing.image_store import ImageStore

log = logging.getLogger("nominal.api")

DESCRIPTION = """
PASS/FAIL verdicts on production images by comparison with known-good (nominal) parts.

1. `PUT /v1/settings/{setting}` creates a machine setting.
2. `POST /v1/settings/{setting}/images` uploads PASS images (a job; poll `GET /v1/jobs/{id}`).
3. `POST /v1/settings/{setting}/calibrations` sets the threshold from labelled PASS and FAIL images.
4. `POST /v1/settings/{setting}/inspect` answers PASS/FAIL with score, threshold and nearest nominal images.

Send `X-API-Key` when the server has keys configured (read: inspect and read; admin: everything).
"""


def create_app(config: Config | None = None) -> FastAPI:
    config = config or get_config()
    key_roles = config.key_roles()  # a malformed NOMINAL_API_KEYS fails here, at start-up
    metrics = Metrics()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        store = open_configured_store(config)
        compute = ComputeThread()  # the one thread of this process that runs torch (see indexing/compute.py)
        try:
            history = build_history(config)
            service = build_service(config, store, backbone_pool(config, compute), history=history)
            for name in {config.backbone, *(s.backbone for s in service.list_settings())}:
                service.backbones.get(name)  # load once now, not on the first request
            runner = build_runner(config, service)
            metrics.drift_source = partial(drift_reports, config, service, history)
            metrics.bank_source = service.bank_stats
            metrics.search_source = partial(search_modes, service)
            app.state.runtime = ApiRuntime(
                config=config, store=store, service=service, images=ImageStore(config.image_root),
                runner=runner, metrics=metrics, key_roles=key_roles, history=history,
            )
            try:
                yield
            finally:
                runner.close()
                history.close()
        finally:
            compute.close()
            store.close()

    # /docs and /redoc load their JS and CSS from this package, not from a CDN (a plant has no internet).
    app = FastAPIOffline(title="Nominal", version="0.1.0", description=DESCRIPTION, lifespan=lifespan,
                         static_url="/docs/assets", redirect_slashes=False)
    errors.install(app)
    app.add_middleware(metrics.middleware)
    app.add_middleware(BodyLimit, max_bytes=config.max_request_bytes)
    for module in (settings, images, inspect, history, review, drift, calibrations, training, feedback, jobs, health):
        app.include_router(module.router)
    web.install(app)  # the operator page at /, after the API routes so it never shadows them
    return app
