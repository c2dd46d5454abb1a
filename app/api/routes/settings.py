"""Machine settings: create or update, list, read, delete; re-index into a new version, roll back."""

from __future__ import annotations

from fastapi import APIRouter, Response

from app.api.deps import AdminAccess, ReadAccess, RuntimeDep
from app.api.errors import ApiError
from app.api.schemas import (
    JobAccepted, ReindexRequest, SettingPublic, SettingPut, SettingsPublic, VersionPublic, VersionsPublic,
)
from indexing.backbones import available_backbones
from indexing.errors import BackboneChangeNeedsReindex, NoImages, SourceNotAllowed, UnknownBackbone
from indexing.sources import read_source

router = APIRouter(tags=["settings"])


@router.get("/v1/backbones", dependencies=[ReadAccess])
def list_backbones() -> list[str]:
    """Backbone names a setting can use (OpenCLIP as the pattern `openclip:<model>:<pretrained>`)."""
    return available_backbones()


@router.get("/v1/settings", dependencies=[ReadAccess])
def list_settings(runtime: RuntimeDep) -> SettingsPublic:
    service = runtime.service
    return SettingsPublic(settings=[SettingPublic.of(service.status(s.name)) for s in service.list_settings()])


@router.put("/v1/settings/{setting}", dependencies=[AdminAccess], responses={201: {"description": "Created."}})
def put_setting(setting: str, body: SettingPut, runtime: RuntimeDep, response: Response) -> SettingPublic:
    """Create a machine setting (201) or change the fields given (200).

    The backbone is the active version's: once a setting has a version, a change of
    backbone is a re-index (`POST .../reindex` with `backbone`); a PUT naming another answers 409.
    """
    existed = any(s.name == setting for s in runtime.service.list_settings())
    try:
        runtime.service.put_setting(setting, **body.model_dump())
    except BackboneChangeNeedsReindex as error:
        raise ApiError(409, ["body", "backbone"], str(error), "backbone_change_needs_reindex") from error
    if not existed:
        response.status_code = 201
    return SettingPublic.of(runtime.service.status(setting))


@router.get("/v1/settings/{setting}", dependencies=[ReadAccess])
def get_setting(setting: str, runtime: RuntimeDep) -> SettingPublic:
    return SettingPublic.of(runtime.service.status(setting))


@router.get("/v1/settings/{setting}/versions", dependencies=[ReadAccess])
def list_versions(setting: str, runtime: RuntimeDep) -> VersionsPublic:
    """The setting's collection versions: what a rollback can return to."""
    versions = runtime.service.versions_of(setting)
    active = runtime.service.active_version(setting)
    return VersionsPublic(versions=[
        VersionPublic(version=v.version, state=v.state, images=v.count, backbone=v.backbone, created_at=v.created_at,
                      active=active is not None and v.version == active.version)
        for v in versions
    ])


@router.delete("/v1/settings/{setting}", status_code=204, dependencies=[AdminAccess])
def delete_setting(setting: str, runtime: RuntimeDep) -> Response:
    """Delete a setting with every collection version, calibration and label it owns."""
    runtime.service.delete_setting(setting)
    return Response(status_code=204)


@router.post("/v1/settings/{setting}/reindex", status_code=202, dependencies=[AdminAccess])
def reindex_setting(setting: str, body: ReindexRequest, runtime: RuntimeDep) -> JobAccepted:
    """Build a new version from `source`, check it, then switch to it in one step (a job; cancel with DELETE /v1/jobs/{id}).

    Inspections are answered from the current version until the switch. The
    source is read on the server (and by its workers), not uploaded, and only
    inside the directories NOMINAL_SOURCE_ROOTS names (403 otherwise).
    """
    runtime.service.get_setting(setting)  # 404 before a job is queued
    if body.backbone:
        try:
            runtime.service.backbones.get(body.backbone)  # an unknown backbone is refused now, not by a failed job
        except UnknownBackbone as error:
            raise ApiError(422, ["body", "backbone"], str(error), "unknown_backbone") from error
    roots = runtime.config.source_root_paths()
    if not roots:
        raise ApiError(
            403, ["body", "source"],
            "re-index over HTTP is off: the server's NOMINAL_SOURCE_ROOTS names no directory sources may be read from",
            "source_not_allowed",
        )
    try:
        total = len(read_source(body.source, roots))
    except SourceNotAllowed as error:
        raise ApiError(403, ["body", "source"], str(error), "source_not_allowed") from error
    except NoImages as error:
        raise ApiError(422, ["body", "source"], str(error), "no_images") from error
    # The job lists the source again and opens every file inside the same roots, wherever it runs:
    # what was checked here may have changed by then (a swapped symlink, a new file matching a glob).
    job = runtime.runner.submit_reindex(
        setting, body.source, backbone=body.backbone, roots=[str(root) for root in roots]
    )
    return JobAccepted(job_id=job.id, state=job.state, total=job.total or total, url=f"/v1/jobs/{job.id}")


@router.post("/v1/settings/{setting}/rollback", dependencies=[AdminAccess])
def rollback_setting(setting: str, runtime: RuntimeDep) -> SettingPublic:
    """Switch back to the version active before the last re-index (409 if there is none)."""
    runtime.service.rollback(setting)
    return SettingPublic.of(runtime.service.status(setting))
