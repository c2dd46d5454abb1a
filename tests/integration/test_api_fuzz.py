"""No request, however malformed, makes the API answer 5xx: schemathesis walks every operation of the OpenAPI schema."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import schemathesis
from hypothesis import HealthCheck, settings
from schemathesis.python import asgi

from app.api.main import create_app
from app.config import Config

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def api(tmp_path_factory: pytest.TempPathFactory, hazelnut: Path) -> Iterator[tuple[object, asgi.ASGIClient]]:
    app = create_app(Config(NOMINAL_DATA=tmp_path_factory.mktemp("fuzz") / "data"))
    with asgi.get_client(app) as client:  # runs the lifespan once: store open, model loaded
        client.put("/v1/settings/hz", json={"k": 1})
        for path in sorted((hazelnut / "train" / "good").glob("*.jpg"))[:3]:
            client.post("/v1/settings/hz/images", files=[("files", (path.name, path.read_bytes()))])
        yield app, client


@pytest.fixture(scope="module")
def api_schema(api):
    app, _ = api
    return schemathesis.openapi.from_asgi("/openapi.json", app)


schema = schemathesis.pytest.from_fixture("api_schema")


@schema.parametrize()
@settings(max_examples=15, deadline=None, derandomize=True, database=None, suppress_health_check=list(HealthCheck))
def test_no_input_produces_a_server_error(case, api) -> None:
    _, client = api
    response = case.call(session=client)
    assert response.status_code < 500, f"{case.method} {case.formatted_path}: {response.status_code} {response.text[:500]}"
