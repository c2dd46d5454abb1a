"""Machine settings: create or update, list, read, delete."""

from __future__ import annotations

from fastapi import APIRouter, Response

from app.api.deps import AdminAccess, ReadAccess, RuntimeDep
from app.api.schemas import SettingPublic, SettingPut, SettingsPublic
from indexing.backbones import available_backbones

router = APIRouter(tags=["settings"])


@router.get("/v1/backbones", dependencies=[ReadAccess])
def list_backbones() -> list[str]:
    """Backbone names a setting can use (OpenCLIP as the pattern `openclip:<model>:<pretrained>`)."""
    return available_backbones()


@router.get("/v1/settings", dependencies=[ReadAccess])
def list_settings(runtime: RuntimeDep) -> SettingsPublic:
    service = runtime.service
    return SettingsPublic(settings=[SettingPublic.of(service.status(s.name)) for s in service.list_settings()])


@router.put("/v1/settings/{setting}", dependencies=[AdminAccess])
def put_setting(setting: str, body: SettingPut, runtime: RuntimeDep) -> SettingPublic:
    """Create a machine setting or change the fields given; changing the backbone of a filled setting needs a re-index (409)."""
    runtime.service.put_setting(setting, **body.model_dump())
    return SettingPublic.of(runtime.service.status(setting))


@router.get("/v1/settings/{setting}", dependencies=[ReadAccess])
def get_setting(setting: str, runtime: RuntimeDep) -> SettingPublic:
    return SettingPublic.of(runtime.service.status(setting))


@router.delete("/v1/settings/{setting}", status_code=204, dependencies=[AdminAccess])
def delete_setting(setting: str, runtime: RuntimeDep) -> Response:
    """Delete a setting with every collection version, calibration and label it owns."""
    runtime.service.delete_setting(setting)
    return Response(status_code=204)
