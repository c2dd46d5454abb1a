"""`nominal evaluate`: train on PASS only, score a labelled test set, write a report."""

from __future__ import annotations

import tempfile
from enum import Enum
from pathlib import Path
from typing import Annotated, Optional

import typer

from app.cli.choices import SCORING_HELP, TILING_HELP, Scoring, Tiling
from app.cli.context import JsonOpt, state
from app.cli.errors import CliError
from app.cli.output import Output
from app.runtime import backbone_pool, build_service
from indexing.calibration import parse_policy
from indexing.datasets import load_dataset
from indexing.errors import InvalidCalibration
from indexing.store import EdgeStore


class Layout(str, Enum):
    mvtec = "mvtec"
    folders = "folders"
    elpv = "elpv"


def evaluate(
    ctx: typer.Context,
    dataset: Annotated[str, typer.Argument(help="Dataset folder (mvtec: the category folder; folders: holds pass/ and fail/), or `elpv`.")],
    out_dir: Annotated[Path, typer.Option("--out", help="Report folder (metrics.json, report.md, PNG plots).")],
    layout: Annotated[Layout, typer.Option(help="mvtec: train/good, test/good, test/<defect>; folders: pass/, fail/; elpv: the elpv-dataset package.")] = Layout.mvtec,
    backbone: Annotated[Optional[str], typer.Option(help="Backbone (default: NOMINAL_BACKBONE or the built-in default).")] = None,
    k: Annotated[int, typer.Option(min=1, help="Nearest nominal neighbours averaged into the score.")] = 1,
    scoring: Annotated[Optional[Scoring], typer.Option(help=SCORING_HELP + " Default: a new setting's (fused; global on CLIP).")] = None,
    subset: Annotated[Optional[str], typer.Option(help="elpv only: mono, poly or combined.")] = None,
    tiling: Annotated[Tiling, typer.Option(help=TILING_HELP)] = Tiling.auto,
    policy: Annotated[Optional[str], typer.Option(help="Threshold policy for the confusion matrix (see `nominal calibrate --help`); default f1.")] = None,
    labelled_fail: Annotated[bool, typer.Option("--labelled-fail", help="Fixed protocol for learning from defects: FAIL test images j (0-based, dataset order) with j % 10 in {3, 4} train the setting's scorer (a metric projection in global mode, a DenseHybrid head in patch and fused mode) and leave the test set; both scorers are reported on the rest (\"trained\" in metrics.json).")] = False,
    json_out: JsonOpt = False,
) -> None:
    """Evaluate a backbone on a labelled dataset the industry-standard way.

    PASS training images are indexed into a scratch store (your own store is not
    touched), every test image is scored, a threshold is calibrated on the test
    set, and ROC-AUC, AP (FAIL positive), F1-max and a confusion matrix are
    written with plots to --out. In patch and fused scoring (fused is the default), heat-map PNGs of
    every test image go to --out/heatmaps/, and the pixel ROC-AUC and PRO are
    reported where the dataset has defect masks (MVTec ground_truth).

    Examples:

      nominal evaluate tests/fixtures/hazelnut_toy --layout mvtec --out report/

      nominal evaluate elpv --layout elpv --subset poly --k 3 --out report-poly/

      nominal evaluate tests/fixtures/hazelnut_toy --scoring patch --out report-patch/

      nominal evaluate tests/fixtures/hazelnut_toy --scoring global --out report-global/

      nominal evaluate elpv --layout elpv --subset poly --labelled-fail --out report-trained/
    """
    out = Output(json_mode=json_out)
    config = state(ctx).config
    _check_arguments(dataset, out_dir, layout, subset, policy)  # every argument before any work
    data = load_dataset(dataset, layout.value, subset=subset)
    with tempfile.TemporaryDirectory(prefix="nominal-evaluate-") as scratch:
        store = EdgeStore(Path(scratch) / "store")
        try:
            service = build_service(config, store, backbone_pool(config))
            setting = service.put_setting("evaluation", backbone=backbone or config.backbone, k=k,
                                          scoring=scoring.value if scoring else None, tiling=tiling.value)
            with out.progress() as bars:
                result = service.evaluate(data, setting="evaluation", out_dir=out_dir, policy=policy,
                                          labelled_fail=labelled_fail, progress=bars)
        finally:
            store.close()
    m = result.metrics
    out.data({"metrics": m, "calibration": result.calibration, "files": result.files, "pixel_roc_auc": result.pixel_roc_auc,
              "pixel_pro": result.pixel_pro, "trained": result.trained and {
                  key: value for key, value in result.trained.items() if key != "scores"}})
    for warning in result.calibration.warnings:
        out.warn(warning)
    out.table(
        f"{data.name}: {len(data.train)} PASS train, {m.n_pass} PASS + {m.n_fail} FAIL test",
        ["ROC-AUC", "AP", "F1-max", "precision", "recall", "bal. acc.", "FPR@95TPR", "threshold"],
        [[m.roc_auc, m.average_precision, m.f1_max, m.precision, m.recall, m.balanced_accuracy, m.fpr_at_95_tpr, m.threshold]],
    )
    c = m.confusion
    out.line(f"confusion: TP {c['tp']}  FP {c['fp']}  TN {c['tn']}  FN {c['fn']}")
    if setting.keeps_patches:
        pixel = "n/a (no masks)" if result.pixel_roc_auc is None else f"{result.pixel_roc_auc:.3f}"
        pro = "n/a (no masks)" if result.pixel_pro is None else f"{result.pixel_pro:.3f}"
        out.line(f"pixel ROC-AUC: {pixel}; PRO (to 30% FPR): {pro}; heat maps: {Path(out_dir) / 'heatmaps'}")
    if result.trained is not None:
        t, gate = result.trained["metrics"], result.trained["gate"]
        out.line(f"trained ({result.trained['n_labelled_fail']} labelled FAIL images): ROC-AUC {t['roc_auc']:.3f}, "
                 f"AP {t['average_precision']:.3f} (unsupervised {m.average_precision:.3f}); "
                 f"gate {'ON' if gate['active'] else 'OFF'}: {gate['reason']}")
    out.line(f"report: {Path(out_dir) / 'report.md'}")


ELPV_SUBSETS = ("mono", "poly", "combined")


def _check_arguments(dataset: str, out_dir: Path, layout: Layout, subset: str | None, policy: str | None) -> None:
    """Refuse, in one line, what would otherwise fail after minutes of embedding."""
    if out_dir.exists() and not out_dir.is_dir():
        raise CliError(f"--out: {out_dir} is a file: give a folder for the report (created if missing)")
    if subset is not None and layout is not Layout.elpv:
        raise CliError(f"--subset is for --layout elpv only (mono, poly or combined), not --layout {layout.value}")
    if subset is not None and subset not in ELPV_SUBSETS:
        raise CliError(f"--subset: {subset!r} is not one of {', '.join(ELPV_SUBSETS)}")
    if layout is not Layout.elpv and not Path(dataset).is_dir():
        raise CliError(f"{dataset}: no such folder (--layout {layout.value} reads a dataset folder)")
    if policy is not None:
        try:
            parse_policy(policy)
        except InvalidCalibration as error:
            raise CliError(f"--policy: {error}") from None
