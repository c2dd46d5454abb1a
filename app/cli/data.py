"""`nominal index`, `nominal calibrate`, `nominal calibrations`, `nominal inspect`: the steps one at a time."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from app.api.schemas import CalibrationPublic, CalibrationsPublic, CalibrationSummary, InspectPublic, VerdictPublic
from app.cli.context import JsonOpt, state
from app.cli.errors import EXIT_ERROR, CliError
from app.cli.output import Output
from app.runtime import service_for
from indexing.calibration import parse_policy
from indexing.datasets import find_images
from indexing.errors import BadImage, InvalidCalibration, NominalError
from indexing.images import ImageInput, decode


def image_inputs(paths: list[Path]) -> list[ImageInput]:
    return [ImageInput.from_path(path) for path in find_images(paths)]


def index(
    ctx: typer.Context,
    setting: Annotated[str, typer.Argument(help="Machine setting name (created on first use).")],
    paths: Annotated[list[Path], typer.Argument(help="Image files, folders (searched recursively) or globs.")],
    skip_bad: Annotated[bool, typer.Option("--skip-bad", help="Skip unreadable images (reported) instead of refusing all.")] = False,
    json_out: JsonOpt = False,
) -> None:
    """Store PASS (nominal) images for a machine setting.

    Each image is embedded with the setting's backbone and stored once, by content
    (the same file indexed twice is kept once). Without --skip-bad one bad image
    refuses the whole call and nothing is written.

    Example: nominal index line-3 photos/2026-11-23/pass/
    """
    out = Output(json_mode=json_out)
    images = image_inputs(paths)
    with service_for(state(ctx).config) as service, out.progress() as bars:
        try:
            result = service.index(setting, images, skip_bad=skip_bad, progress=bars)
        except BadImage as error:
            raise CliError(f"{error} (--skip-bad indexes the others and lists what it skipped)") from None
    out.data(result)
    for skipped in result.skipped:
        out.warn(f"skipped {skipped.source}: {skipped.reason}")
    out.line(f"{result.indexed} of {result.received} images indexed into {setting!r}; it now holds {result.count}.")


def calibrate(
    ctx: typer.Context,
    setting: Annotated[str, typer.Argument(help="Machine setting name.")],
    pass_dir: Annotated[Optional[list[Path]], typer.Option("--pass", help="Labelled PASS images (validation set).")] = None,
    fail_dir: Annotated[Optional[list[Path]], typer.Option("--fail", help="Labelled FAIL images (validation set).")] = None,
    policy: Annotated[
        Optional[str],
        typer.Option(
            help="f1 (max F1), precision>=P, recall>=R, fpr<=F (these need FAIL images), or quantile[:ALPHA]. "
            "Default: f1 with FAIL images, quantile:0.01 without.",
        ),
    ] = None,
    feedback: Annotated[bool, typer.Option("--feedback/--no-feedback", help="Add the images operators marked FAIL (missed defects).")] = True,
    activate: Annotated[bool, typer.Option("--activate/--no-activate", help="Make it live unless it is degenerate; --no-activate records a candidate only.")] = True,
    compare: Annotated[
        bool,
        typer.Option(
            "--compare",
            help="Also compare every scorer the setting can run (global k=1/3/5; patch max, top-3, top-10 mean) "
            "by 5-fold cross-validation on these labelled images only; kept in the calibration record.",
        ),
    ] = False,
    json_out: JsonOpt = False,
) -> None:
    """Choose the PASS/FAIL threshold from a precision-recall curve, record it, and make it live when that is safe.

    Without --pass, the stored nominal images are scored leave-one-out. Without
    FAIL images, only quantile policies apply (the threshold leaves ALPHA of PASS
    images above it). A calibration that catches none of its FAIL images, or
    flags most of its PASS images, is recorded but held back: verdicts keep the
    threshold they had until `nominal calibrations SETTING ID --activate`.

    Examples:

      nominal calibrate line-3 --pass val/pass --fail val/fail --policy "recall>=0.99"

      nominal calibrate line-3 --policy quantile:0.01

      nominal calibrate line-3 --fail val/fail --no-activate     # compare first: nominal calibrations line-3

      nominal calibrate line-3 --pass val/pass --fail val/fail --compare   # which scorer suits this line
    """
    out = Output(json_mode=json_out)
    if policy is not None:
        _checked(parse_policy, policy, "--policy")
    pass_images = image_inputs(pass_dir) if pass_dir else []
    fail_images = image_inputs(fail_dir) if fail_dir else []
    with service_for(state(ctx).config) as service, out.progress() as bars:
        try:
            result = service.calibrate(setting, pass_images=pass_images, fail_images=fail_images, policy=policy,
                                       use_feedback=feedback, activate=activate, compare=compare, progress=bars)
        except InvalidCalibration as error:
            raise CliError(f"--{error.field}: {error}" if error.field else str(error)) from None
    c = result.calibration
    out.data(CalibrationPublic.of(c, active=result.active, held_back=result.held_back, replaced=result.replaced))
    for warning in c.warnings:
        out.warn(warning)
    out.table(
        f"calibration {c.id} of {setting!r} ({c.policy})",
        ["threshold", "precision", "recall", "F1", "AP", "ROC-AUC", "PASS", "FAIL"],
        [[c.threshold, c.precision, c.recall, c.f1, c.average_precision, c.roc_auc, c.n_pass, c.n_fail]],
    )
    m = c.confusion
    out.line(f"confusion at threshold: TP {m['tp']}  FP {m['fp']}  TN {m['tn']}  FN {m['fn']}")
    if result.active:
        before = f" (it replaces {result.replaced.id}, threshold {result.replaced.threshold:.4f})" if result.replaced else ""
        out.line(f"verdicts use this threshold now{before}")
    else:
        out.warn(f"recorded, not in use: {result.held_back}; `nominal calibrations {setting} {c.id} --activate` makes it live")
    if c.comparison:
        found = c.comparison
        out.table(
            f"scorers compared by {found['folds']}-fold cross-validation on {found['n_pass']} PASS + "
            f"{found['n_fail']} FAIL labelled images ({found['policy']} threshold per training fold)",
            ["scorer", "held-out F1", "+/-", "balanced acc.", "ROC-AUC (all)"],
            [[r["name"] + (" (current)" if r["name"] == found["current"] else ""), r["f1_mean"], r["f1_std"],
              r["balanced_accuracy_mean"], r["roc_auc"]] for r in found["results"]],
        )
        out.line(f"best: {found['winner']}, ahead of the next by {found['margin']:.3f} held-out F1")


def calibrations(
    ctx: typer.Context,
    setting: Annotated[str, typer.Argument(help="Machine setting name.")],
    calibration_id: Annotated[Optional[str], typer.Argument(help="One calibration to show (or --activate).")] = None,
    activate: Annotated[bool, typer.Option("--activate", help="Make CALIBRATION_ID the one verdicts use.")] = False,
    json_out: JsonOpt = False,
) -> None:
    """List a setting's recorded calibrations, newest first, and which one verdicts use; or activate one.

    Examples:

      nominal calibrations line-3

      nominal calibrations line-3 4c1f... --activate
    """
    out = Output(json_mode=json_out)
    if activate and calibration_id is None:
        raise CliError("--activate needs a CALIBRATION_ID: `nominal calibrations SETTING ID --activate`")
    with service_for(state(ctx).config) as service:
        if activate:
            result = service.activate_calibration(setting, calibration_id)
            out.data(CalibrationPublic.of(result.calibration, active=True, replaced=result.replaced))
            out.line(f"verdicts of {setting!r} use calibration {calibration_id} now "
                     f"(threshold {result.calibration.threshold:.4f})")
            return
        live = service.usable_calibration(setting)
        listed = [service.calibration(setting, calibration_id)] if calibration_id else service.calibrations(setting)
    summaries = [CalibrationSummary.of(c, active=live is not None and c.id == live.id) for c in listed]
    out.data(CalibrationsPublic(calibrations=summaries))
    out.table(f"calibrations of {setting!r}", ["id", "created", "policy", "threshold", "AP", "ROC-AUC", "PASS", "FAIL", ""],
              [[s.id, s.created_at[:19].replace("T", " "), s.policy, s.threshold, s.average_precision, s.roc_auc,
                s.n_pass, s.n_fail, "in use" if s.active else ""] for s in summaries])


def inspect(
    ctx: typer.Context,
    setting: Annotated[str, typer.Argument(help="Machine setting name.")],
    paths: Annotated[list[Path], typer.Argument(help="Images to judge (files, folders or globs).")],
    k: Annotated[Optional[int], typer.Option(min=1, help="Neighbours to average (default: the setting's k).")] = None,
    show: Annotated[int, typer.Option(min=0, help="Nearest nominal images to list per verdict.")] = 3,
    json_out: JsonOpt = False,
) -> None:
    """PASS, FAIL or UNCALIBRATED for each image, with score, threshold and nearest nominal images.

    A file that cannot be read is reported and the others are still judged. Exit
    status is 0 whatever the verdicts, 1 if a file could not be judged; scripts
    read the verdicts from --json.

    Example: nominal inspect line-3 new/part-0042.png --json
    """
    out = Output(json_mode=json_out)
    images, unreadable = [], []
    for image in image_inputs(paths):
        try:
            decode(image, max_pixels=state(ctx).config.max_pixels)  # a bad file is set aside, the others judged
            images.append(image)
        except BadImage as error:
            unreadable.append(error)
    with service_for(state(ctx).config) as service:
        verdicts = service.inspect(setting, images, k=k) if images else []
    out.data(InspectPublic(results=[VerdictPublic.of(setting, v) for v in verdicts]))
    rows = []
    for v in verdicts:
        near = ", ".join(f"{Path(n.payload.get('source', n.id)).name} ({n.distance:.3f})" for n in v.neighbours[:show])
        rows.append([v.source, v.verdict, v.score, v.threshold, v.p_value, near])
    if rows:
        scorers = sorted({v.scorer for v in verdicts})
        out.table(f"verdicts for {setting!r} (scorer {', '.join(scorers)})",
                  ["image", "verdict", "score", "threshold", "p", "nearest nominal"], rows)
    for error in unreadable:
        out.error(f"{error.source}: {error.reason}: not judged")
    if unreadable:
        raise typer.Exit(EXIT_ERROR)


def _checked(parse, value: str, option: str):
    """An option's value parsed before any work, or a one-line error naming the option."""
    try:
        return parse(value)
    except (NominalError, ValueError) as error:
        raise CliError(f"{option}: {error}") from None
