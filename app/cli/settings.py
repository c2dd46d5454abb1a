"""`nominal settings` (list, show, set, delete) and `nominal backbones`."""

from __future__ import annotations

from typing import Annotated

import typer

from app.cli.choices import SCORING_HELP, TILING_HELP, Scoring, Tiling
from app.cli.context import JsonOpt, state
from app.api.schemas import SettingPublic, SettingsPublic
from app.cli.output import Output, fmt
from app.runtime import service_for
from indexing.backbones import available_backbones

app = typer.Typer(help="List, show, configure and delete machine settings.", invoke_without_command=True)


@app.callback()
def list_settings(ctx: typer.Context, json_out: JsonOpt = False) -> None:
    """List machine settings with their backbone, k, image count and the threshold verdicts use."""
    if ctx.invoked_subcommand is not None:
        return
    out = Output(json_mode=json_out)
    with service_for(state(ctx).config) as service:
        statuses = [service.status(s.name) for s in service.list_settings()]
    out.data(SettingsPublic(settings=[SettingPublic.of(s) for s in statuses]))
    if not statuses:
        out.line("No machine settings yet: create one with `nominal index SETTING DIR`.")
        return
    out.table(
        "machine settings",
        ["setting", "backbone", "k", "scoring", "images", "version", "threshold", "policy"],
        [
            [s.setting.name, s.setting.backbone, s.setting.k, s.setting.scoring, s.count,
             s.active.version if s.active else None,
             s.calibration.threshold if s.calibration else None,
             s.calibration.policy if s.calibration else "uncalibrated"]
            for s in statuses
        ],
    )


@app.command("show")
def show(ctx: typer.Context, setting: Annotated[str, typer.Argument()], json_out: JsonOpt = False) -> None:
    """Everything about one setting: configuration, its versions (for `nominal rollback`), the calibration in use.

    Example: nominal settings show line-3
    """
    out = Output(json_mode=json_out)
    with service_for(state(ctx).config) as service:
        status = service.status(setting)
        versions = service.versions_of(setting)
    public = SettingPublic.of(status)
    out.data({**public.model_dump(mode="json"), "versions": [
        {"version": v.version, "state": v.state, "images": v.count, "backbone": v.backbone, "created_at": v.created_at,
         "active": status.active is not None and v.version == status.active.version} for v in versions]})
    for key, value in public.model_dump(exclude={"calibration", "candidate_calibration", "calibration_note", "reindex_note"}).items():
        out.line(f"{key:>21}: {'-' if value is None else value}")
    if status.reindex_note:
        out.line(f"{'re-index needed':>21}: {status.reindex_note} (`nominal reindex {setting} <folder>`)")
    c = status.calibration
    out.line(f"{'calibration':>21}: " + (
        f"{c.id} {c.policy} threshold {c.threshold:.4f} (AP {fmt(c.average_precision)}, ROC-AUC {fmt(c.roc_auc)})"
        if c else "none: verdicts are UNCALIBRATED"))
    if status.calibration_note:
        out.line(f"{'':>21}  {status.calibration_note}")
    if status.candidate:
        out.line(f"{'candidate calibration':>21}: {status.candidate.id} {status.candidate.policy} threshold "
                 f"{status.candidate.threshold:.4f}, not in use (`nominal calibrations {setting}` to activate it)")
    out.table("versions", ["version", "state", "images", "backbone", "created", ""], [
        [v.version, v.state, v.count, v.backbone, v.created_at[:19].replace("T", " "),
         "active" if status.active and v.version == status.active.version else ""] for v in versions])


@app.command("set")
def set_setting(
    ctx: typer.Context,
    setting: Annotated[str, typer.Argument(help="Machine setting name (created when it does not exist).")],
    scoring: Annotated[Scoring | None, typer.Option(help=SCORING_HELP + " New settings: fused (global on CLIP, which has no feature maps).")] = None,
    tiling: Annotated[Tiling | None, typer.Option(help=TILING_HELP + " New settings: auto.")] = None,
    k: Annotated[int | None, typer.Option(help="Nearest nominal neighbours averaged into a global score.")] = None,
    backbone: Annotated[str | None, typer.Option(help="For a new setting (see `nominal backbones`); an indexed "
                                                      "setting changes backbone by `nominal reindex --backbone`.")] = None,
    description: Annotated[str | None, typer.Option(help="Free text shown with the setting.")] = None,
    json_out: JsonOpt = False,
) -> None:
    """Create a setting, or change the fields given (as `PUT /v1/settings/{name}`), then show it.

    A change of scoring or tiling applies to the patch bank at the next re-index; until then
    `nominal settings show` says "re-index needed".

    Example: nominal settings set line-3 --scoring patch --tiling auto
    """
    with service_for(state(ctx).config) as service:
        service.put_setting(setting, backbone=backbone, k=k, scoring=scoring.value if scoring else None,
                            tiling=tiling.value if tiling else None, description=description)
    show(ctx, setting, json_out)


@app.command("delete")
def delete(
    ctx: typer.Context,
    setting: Annotated[str, typer.Argument()],
    yes: Annotated[bool, typer.Option("--yes", "-y", help="Do not ask for confirmation.")] = False,
) -> None:
    """Delete a setting, all its collection versions and calibrations."""
    with service_for(state(ctx).config) as service:
        service.get_setting(setting)  # an unknown setting is said before any question is asked
        if not yes:
            typer.confirm(f"Delete machine setting {setting!r} and all its nominal images?", abort=True)
        service.delete_setting(setting)
    Output(json_mode=False).line(f"deleted {setting!r}")


def backbones(json_out: JsonOpt = False) -> None:
    """List the backbones a setting can use."""
    out = Output(json_mode=json_out)
    names = available_backbones()
    out.data(names)
    for name in names:
        out.line(name)
