"""The operator page and its assets are served by the API app, with the right content types.

No lifespan here (no `with TestClient`): serving static files needs no model or store.
"""

from __future__ import annotations

import re
from pathlib import Path

from fastapi.testclient import TestClient

from app.api.main import create_app
from app.config import Config


def test_root_serves_the_operator_page_and_every_asset_it_names(tmp_path: Path) -> None:
    client = TestClient(create_app(Config(NOMINAL_DATA=tmp_path / "data")))
    page = client.get("/")
    assert page.status_code == 200 and page.headers["content-type"] == "text/html; charset=utf-8"
    assert '<html lang="en">' in page.text and 'aria-live="polite"' in page.text

    assets = re.findall(r'(?:src|href)="(/static/[^"]+)"', page.text)
    assert sorted(assets) == ["/static/app.js", "/static/style.css"]
    expected = {".js": ("text/javascript", "application/javascript"), ".css": ("text/css",)}
    for asset in assets:
        answer = client.get(asset)
        assert answer.status_code == 200, asset
        assert answer.headers["content-type"].split(";")[0] in expected[Path(asset).suffix], asset
        assert answer.content, asset
        assert "://" not in answer.text, f"{asset}: no CDN or remote font, a plant has no internet"
    assert "://" not in page.text, "no CDN or remote asset: a plant has no internet"


def test_the_page_leaves_the_api_and_its_docs_alone(tmp_path: Path) -> None:
    client = TestClient(create_app(Config(NOMINAL_DATA=tmp_path / "data")))
    assert client.get("/docs").status_code == 200
    schema = client.get("/openapi.json").json()
    assert "/" not in schema["paths"] and "/v1/settings" in schema["paths"], "the page is not an API operation"
    missing = client.get("/static/nothing-here.js")
    assert missing.status_code == 404
