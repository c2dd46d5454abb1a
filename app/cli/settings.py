"""`nominal settings` (list, show, delete) and `nominal backbones`."""

from __future__ import annotations

from typing import Annotated

import typer

from app.cli.context import JsonOpt, state
from app.cli.output import Output
from app.runtime import service_for
from indexing.backbones import available_backbones

app = typer.Typer(help="List, show and delete machine settings.", invoke_without_command=True)


@app.callback()
def list_settings(ctx: typer.Context, json_out: JsonOpt = False) -> None:
    """List machine settings with their backbone, k, image count and threshold."""
    if ctx.invoked_subcommand is not None:
        return
    out = Output(json_mode=json_out)
    with service_for(state(ctx).config) as service:
        statuses = [service.status(s.name) for s in service.list_settings()]
    out.data([_summary(s) for s in statuses])
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
    """Everything about one setting: configuration, active version, latest calibration."""
    out = Output(json_mode=json_out)
    with service_for(state(ctx).config) as service:
        status = service.status(setting)
    out.data(_summary(status))
    for key, value in _summary(status).items():
        if key != "calibration":
            out.line(f"{key:>18}: {value}")
    if status.calibration:
        c = status.calibration
        out.line(f"{'calibration':>18}: {c.policy} threshold {c.threshold:.4f} (AP {c.average_precision}, ROC-AUC {c.roc_auc})")


@app.command("delete")
def delete(
    ctx: typer.Context,
    setting: Annotated[str, typer.Argument()],
    yes: Annotated[bool, typer.Option("--yes", "-y", help="Do not ask for confirmation.")] = False,
) -> None:
    """Delete a setting, all its collection versions and calibrations."""
    if not yes:
        typer.confirm(f"Delete machine setting {setting!r} and all its nominal images?", abort=True)
    with service_for(state(ctx).config) as service:
        service.delete_setting(setting)
    Output(json_mode=False).line(f"deleted {setting!r}")


def backbones(json_out: JsonOpt = False) -> None:
    """List the backbones a setting can use."""
    out = Output(json_mode=json_out)
    names = available_backbones()
    out.data(names)
    for name in names:
        out.line(name)


def _summary(status) -> dict:
    return {
        "setting": status.setting.name,
        "backbone": status.setting.backbone,
        "k": status.setting.k,
        "scoring": status.setting.scoring,
        "tiling": status.setting.tiling,
        "description": status.setting.description,
        "images": status.count,
        "active_version": status.active.version if status.active else None,
        "active_collection": status.active.collection if status.active else None,
        "calibration": status.calibration.to_dict() if status.calibration else None,
    }
