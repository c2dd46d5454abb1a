"""`nominal index`, `nominal calibrate`, `nominal inspect`: the steps one at a time."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from app.cli.context import JsonOpt, state
from app.cli.output import Output
from app.runtime import service_for
from indexing.datasets import find_images
from indexing.images import ImageInput


def _inputs(paths: list[Path]) -> list[ImageInput]:
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
    images = _inputs(paths)
    with service_for(state(ctx).config) as service, out.progress() as bars:
        result = service.index(setting, images, skip_bad=skip_bad, progress=bars)
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
        str,
        typer.Option(
            help="f1 (max F1), precision>=P, recall>=R, fpr<=F, or quantile[:ALPHA] when there are no FAIL images.",
        ),
    ] = "f1",
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
    """Choose the PASS/FAIL threshold from a precision-recall curve and keep it with the setting.

    Without --pass, the stored nominal images are scored leave-one-out. Without
    --fail, use --policy quantile (the threshold leaves ALPHA of PASS images above it).

    Examples:

      nominal calibrate line-3 --pass val/pass --fail val/fail --policy "recall>=0.99"

      nominal calibrate line-3 --policy quantile:0.01

      nominal calibrate line-3 --pass val/pass --fail val/fail --compare
    """
    out = Output(json_mode=json_out)
    pass_images = _inputs(pass_dir) if pass_dir else []
    fail_images = _inputs(fail_dir) if fail_dir else []
    with service_for(state(ctx).config) as service, out.progress() as bars:
        result = service.calibrate(
            setting, pass_images=pass_images, fail_images=fail_images, policy=policy, compare=compare, progress=bars
        )
    out.data(result)
    for warning in result.warnings:
        out.warn(warning)
    out.table(
        f"calibration {result.id} of {setting!r} ({result.policy})",
        ["threshold", "precision", "recall", "F1", "AP", "ROC-AUC", "PASS", "FAIL"],
        [[result.threshold, result.precision, result.recall, result.f1, result.average_precision, result.roc_auc,
          result.n_pass, result.n_fail]],
    )
    c = result.confusion
    out.line(f"confusion at threshold: TP {c['tp']}  FP {c['fp']}  TN {c['tn']}  FN {c['fn']}")
    if result.comparison:
        found = result.comparison
        out.table(
            f"scorers compared by {found['folds']}-fold cross-validation on {found['n_pass']} PASS + "
            f"{found['n_fail']} FAIL labelled images ({found['policy']} threshold per training fold)",
            ["scorer", "held-out F1", "+/-", "balanced acc.", "ROC-AUC (all)"],
            [[r["name"] + (" (current)" if r["name"] == found["current"] else ""), r["f1_mean"], r["f1_std"],
              r["balanced_accuracy_mean"], r["roc_auc"]] for r in found["results"]],
        )
        out.line(f"best: {found['winner']}, ahead of the next by {found['margin']:.3f} held-out F1")


def inspect(
    ctx: typer.Context,
    setting: Annotated[str, typer.Argument(help="Machine setting name.")],
    paths: Annotated[list[Path], typer.Argument(help="Images to judge (files, folders or globs).")],
    k: Annotated[Optional[int], typer.Option(min=1, help="Neighbours to average (default: the setting's k).")] = None,
    show: Annotated[int, typer.Option(min=0, help="Nearest nominal images to list per verdict.")] = 3,
    json_out: JsonOpt = False,
) -> None:
    """PASS, FAIL or UNCALIBRATED for each image, with score, threshold and nearest nominal images.

    Exit status is 0 whatever the verdicts; scripts read them from --json.

    Example: nominal inspect line-3 new/part-0042.png --json
    """
    out = Output(json_mode=json_out)
    images = _inputs(paths)
    with service_for(state(ctx).config) as service:
        verdicts = service.inspect(setting, images, k=k)
    out.data({"results": verdicts})
    rows = []
    for v in verdicts:
        near = ", ".join(f"{Path(n.payload.get('source', n.id)).name} ({n.distance:.3f})" for n in v.neighbours[:show])
        rows.append([v.source, v.verdict, v.score, v.threshold, near])
    out.table(f"verdicts for {setting!r}", ["image", "verdict", "score", "threshold", "nearest nominal"], rows)
