"""Dependencies of the routes, as type aliases: the process runtime and the two API-key roles."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, HTTPException, Request, Security
from fastapi.security import APIKeyHeader

from app.api.runtime import ApiRuntime

_api_key = APIKeyHeader(name="X-API-Key", auto_error=False, description="An API key from NOMINAL_API_KEYS.")


def get_runtime(request: Request) -> ApiRuntime:
    return request.app.state.runtime


RuntimeDep = Annotated[ApiRuntime, Depends(get_runtime)]


def _role(runtime: ApiRuntime, key: str | None) -> str:
    if not runtime.key_roles:  # no keys configured: the server only listens on loopback
        return "admin"
    if not key:
        raise HTTPException(401, "missing X-API-Key header", headers={"WWW-Authenticate": "APIKey"})
    role = runtime.key_roles.get(key)
    if role is None:
        raise HTTPException(401, "unknown API key", headers={"WWW-Authenticate": "APIKey"})
    return role


def require_read(runtime: RuntimeDep, key: Annotated[str | None, Security(_api_key)] = None) -> str:
    return _role(runtime, key)


def require_admin(runtime: RuntimeDep, key: Annotated[str | None, Security(_api_key)] = None) -> str:
    role = _role(runtime, key)
    if role != "admin":
        raise HTTPException(403, "this API key may only read: an admin key is needed to change settings, images or calibrations")
    return role


ReadAccess = Depends(require_read)
AdminAccess = Depends(require_admin)
