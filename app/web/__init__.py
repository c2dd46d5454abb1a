"""The operator page: static HTML, CSS and JS served by the API process itself.

No build step and no CDN: a plant network has no internet, and there is no second
server to start. The page only calls the public `/v1` API, with the operator's
API key from the browser session.
"""

from __future__ import annotations

from pathlib import Path

from fastapi import FastAPI
from fastapi.responses import FileResponse
from fastapi.staticfiles import StaticFiles

STATIC = Path(__file__).parent / "static"


def install(app: FastAPI) -> None:
    """Serve the page at `/` and its assets under `/static`; `/v1` and `/docs` stay as they are."""
    app.mount("/static", StaticFiles(directory=STATIC), name="static")

    # Not in the OpenAPI schema: it is a page for people, not an API operation.
    @app.get("/", include_in_schema=False)
    def operator_page() -> FileResponse:
        return FileResponse(STATIC / "index.html", media_type="text/html; charset=utf-8",
                            headers={"Cache-Control": "no-cache"})
