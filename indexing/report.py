"""An evaluation written to disk: metrics.json, four plots and a report.md to read first.

Plots are drawn on `matplotlib.figure.Figure` directly, which needs no pyplot and no
GUI backend, so this works in workers and on headless machines. Every file is
written to a temporary name in the same folder and moved into place with
`os.replace`, so a process that dies mid-report leaves old or whole files, never
half-written ones.

It imports matplotlib: import it where a report is written, not where verdicts are made.
"""

from __future__ import annotations

import contextlib
import io
import json
import math
import os
import tempfile
from collections.abc import Callable, Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import IO, Any

import numpy as np
from matplotlib.figure import Figure
from sklearn.metrics import precision_recall_curve, roc_curve

from indexing.calibration import Calibration, Labels, Scores, predict_fail
from indexing.errors import BadImage
from indexing.evaluation import Metrics, error_statistics
from indexing.images import ImageInput, decode, to_rgb

FILES = {
    "metrics": "metrics.json",
    "pr_curve": "pr_curve.png",
    "roc_curve": "roc_curve.png",
    "score_histogram": "score_histogram.png",
    "confusion_matrix": "confusion_matrix.png",
    "report": "report.md",
}
# The images an engineer opens first: likely false alarms and likely misses.
TOP_N = 10
PASS_COLOUR = "tab:blue"
FAIL_COLOUR = "tab:red"
# The t-SNE map of the embeddings is drawn from this many images.
MAP_MIN_IMAGES = 5


def write_report(
    out_dir: str | Path,
    *,
    title: str,
    is_fail: Labels,
    scores: Scores,
    names: Sequence[str],
    calibration: Calibration | None,
    metrics: Metrics,
    extra: dict[str, Any] | None = None,
    images: Sequence[ImageInput] | None = None,
    in_sample: bool = False,
    trained: dict[str, Any] | None = None,
    embeddings: np.ndarray | None = None,
) -> dict[str, Path]:
    """Write the report files into `out_dir` (created if missing).

    Args:
        out_dir: folder to write into; existing report files are replaced.
        title: heading of report.md.
        is_fail: label per image, True = FAIL, shape (n,).
        scores: score per image, shape (n,).
        names: name per image (e.g. a relative path), shape (n,).
        calibration: the calibration whose threshold `metrics` was computed at, if any.
        metrics: from `compute_metrics` on the same labels and scores.
        extra: anything else to record (backbone, timings...); must be JSON-like.
        images: the images themselves, one per name: the hardest PASS and FAIL images
            are shown as thumbnails (in `thumbnails/`) beside their names.
        in_sample: the threshold was chosen on these same images; the report says so,
            since every figure at the threshold is then optimistic.
        trained: a trained scorer's results on the same images (`--labelled-fail`):
            {"metrics": same names as `metrics`, "gate": ..., "scorer": ...}; written
            under "trained" in metrics.json and compared in report.md.
        embeddings: the images' global embeddings, one row per name: drawn as a 2-D t-SNE
            map coloured by label (``embedding_map``, from 5 images).

    Returns:
        Path of each file by key: ``metrics``, ``pr_curve``, ``roc_curve``,
        ``score_histogram``, ``confusion_matrix``, ``report``, and ``embedding_map``.

    Raises:
        ValueError: labels, scores and names differ in length.
    """
    truth = np.asarray(is_fail, dtype=bool).reshape(-1)
    values = np.asarray(scores, dtype=np.float64).reshape(-1)
    names = [str(name) for name in names]
    if not truth.size == values.size == len(names):
        raise ValueError(
            f"{truth.size} labels, {values.size} scores and {len(names)} names: give one of each per image"
        )
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = {key: out / filename for key, filename in FILES.items()}
    threshold = metrics.threshold
    marker = _threshold_label(threshold, calibration)

    document = {
        "title": title,
        "created_at": datetime.now(timezone.utc).isoformat(),
        "metrics": metrics.to_dict(),
        "calibration": calibration.to_dict() if calibration is not None else None,
        "extra": extra or {},
        "statistics": error_statistics(truth, values, metrics.confusion),
        "images": _image_rows(truth, values, names, threshold),
    }
    if trained is not None:
        document["trained"] = trained
    _write_atomic(paths["metrics"], lambda fh: fh.write(_to_json_text(document).encode("utf-8")))
    _save_figure(_pr_figure(truth, values, metrics, marker), paths["pr_curve"])
    _save_figure(_roc_figure(truth, values, metrics, marker), paths["roc_curve"])
    _save_figure(_histogram_figure(truth, values, threshold, marker), paths["score_histogram"])
    _save_figure(_confusion_figure(metrics), paths["confusion_matrix"])
    thumbnails = _thumbnailer(out / "thumbnails", images) if images is not None else None
    markdown = _markdown(title, truth, values, names, calibration, metrics, extra or {}, thumbnails, in_sample)
    markdown += _statistics_section(document["statistics"])
    if embeddings is not None and len(embeddings) >= MAP_MIN_IMAGES:
        if len(embeddings) != truth.size:
            raise ValueError(f"{len(embeddings)} embeddings for {truth.size} images: give one per image")
        paths["embedding_map"] = out / "embedding_map.png"
        _save_figure(_embedding_map_figure(np.asarray(embeddings, dtype=np.float32), truth), paths["embedding_map"])
        markdown += ("\n## Test embeddings in 2-D\n\nt-SNE of the images' global embeddings (cosine), coloured by "
                     "label: FAIL images far from every PASS cluster are the ones a kNN finds easily.\n\n"
                     "![t-SNE map of the test embeddings](embedding_map.png)\n")
    if trained is not None:
        markdown += _trained_section(metrics, trained)
    _write_atomic(paths["report"], lambda fh: fh.write(markdown.encode("utf-8")))
    return paths


# --- files ---------------------------------------------------------------------------


def _write_atomic(path: Path, write: Callable[[IO[bytes]], Any]) -> None:
    """Write through a temporary file in the same folder, then `os.replace` it into place."""
    fd, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as handle:
            write(handle)
            handle.flush()
            os.fsync(handle.fileno())
        # mkstemp makes the file private (0600); a report is meant to be shared.
        os.chmod(temporary, 0o644)
        os.replace(temporary, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(temporary)
        raise


def _embedding_map_figure(embeddings: np.ndarray, truth: np.ndarray) -> Figure:
    """A t-SNE map (scikit-learn, cosine, PCA start, fixed seed) of the embeddings, PASS and FAIL in two colours."""
    from sklearn.manifold import TSNE

    perplexity = float(min(30.0, max(2.0, (len(embeddings) - 1) / 3.0)))
    points = TSNE(n_components=2, perplexity=perplexity, metric="cosine", init="pca", random_state=0).fit_transform(
        embeddings)
    figure = Figure(figsize=(6, 5))
    axes = figure.subplots()
    for label, colour, mask in (("PASS", PASS_COLOUR, ~truth), ("FAIL", FAIL_COLOUR, truth)):
        if mask.any():
            axes.scatter(points[mask, 0], points[mask, 1], s=9, alpha=0.7, color=colour, label=f"{label} ({mask.sum()})")
    axes.set_title("Test embeddings, t-SNE")
    axes.set_xticks([])
    axes.set_yticks([])
    axes.legend(loc="best")
    figure.tight_layout()
    return figure


def _save_figure(figure: Figure, path: Path) -> None:
    _write_atomic(path, lambda fh: figure.savefig(fh, format="png", dpi=100))


def _to_json_text(document: Any) -> str:
    # allow_nan=False: NaN/Infinity are not JSON and break strict readers; _jsonable maps them to null.
    return json.dumps(_jsonable(document), indent=2, allow_nan=False) + "\n"


def _jsonable(value: Any) -> Any:
    """Numpy scalars and arrays, paths and tuples to JSON types; non-finite floats to None."""
    if isinstance(value, dict):
        return {str(key): _jsonable(item) for key, item in value.items()}
    if isinstance(value, (list, tuple, set, frozenset)):
        return [_jsonable(item) for item in value]
    if isinstance(value, np.ndarray):
        return _jsonable(value.tolist())
    if isinstance(value, np.generic):
        return _jsonable(value.item())
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if value is None or isinstance(value, (bool, int, str)):
        return value
    # A report at the end of a long benchmark should not die over one odd value in `extra`.
    return str(value)


def _image_rows(
    truth: np.ndarray, values: np.ndarray, names: list[str], threshold: float | None
) -> list[dict[str, Any]]:
    predicted = predict_fail(values, threshold) if threshold is not None else None
    return [
        {
            "name": names[i],
            "is_fail": bool(truth[i]),
            "score": float(values[i]),
            "predicted_fail": None if predicted is None else bool(predicted[i]),
        }
        for i in range(truth.size)
    ]


# --- figures -------------------------------------------------------------------------


def _threshold_label(threshold: float | None, calibration: Calibration | None) -> str:
    if threshold is None:
        return ""
    if calibration is not None and calibration.threshold == threshold:
        return f"threshold {threshold:.4g} ({calibration.policy})"
    return f"threshold {threshold:.4g}"


def _placeholder(title: str, message: str) -> Figure:
    """A figure that says why the plot is missing, so report.md never links a missing file."""
    figure = Figure(figsize=(5, 4))
    ax = figure.subplots()
    ax.set_title(title)
    ax.text(0.5, 0.5, message, ha="center", va="center", wrap=True, transform=ax.transAxes)
    ax.set_axis_off()
    return figure


def _pr_figure(truth: np.ndarray, values: np.ndarray, metrics: Metrics, marker: str) -> Figure:
    if metrics.n_fail == 0 or metrics.n_pass == 0:
        return _placeholder("Precision-recall curve", "no curve: it needs both PASS and FAIL images")
    precision, recall, _ = precision_recall_curve(truth.astype(int), values)
    chosen = (metrics.recall, metrics.precision) if marker else None
    return _pr_curve_figure(
        recall, precision, ap=metrics.average_precision, chance=metrics.n_fail / (metrics.n_fail + metrics.n_pass),
        chosen=chosen, chosen_label=marker,
    )


def _pr_curve_figure(
    recall: Sequence[float],
    precision: Sequence[float],
    *,
    ap: float | None,
    chance: float | None,
    chosen: tuple[float | None, float | None] | None,
    chosen_label: str,
) -> Figure:
    """The PR curve (FAIL positive) with the operating point marked; one drawing for reports and the API."""
    figure = Figure(figsize=(5, 4.5))
    ax = figure.subplots()
    ax.plot(recall, precision, drawstyle="steps-post", color=FAIL_COLOUR, label=f"AP {_number(ap)}")
    if chance is not None:
        ax.axhline(chance, color="grey", linestyle=":", label="chance")
    if chosen is not None and chosen[0] is not None and chosen[1] is not None:
        ax.plot([chosen[0]], [chosen[1]], "ko", label=chosen_label)
    ax.set_xlabel("recall (FAIL images caught)")
    ax.set_ylabel("precision (FAIL verdicts that are right)")
    ax.set_xlim(-0.02, 1.02)
    ax.set_ylim(-0.02, 1.02)
    ax.set_title("Precision-recall curve (FAIL positive)")
    ax.legend(loc="lower left", fontsize="small")
    figure.tight_layout()
    return figure


def _roc_figure(truth: np.ndarray, values: np.ndarray, metrics: Metrics, marker: str) -> Figure:
    if metrics.n_fail == 0 or metrics.n_pass == 0:
        return _placeholder("ROC curve", "no curve: it needs both PASS and FAIL images")
    fpr, tpr, _ = roc_curve(truth.astype(int), values)
    figure = Figure(figsize=(5, 4.5))
    ax = figure.subplots()
    ax.plot(fpr, tpr, color=FAIL_COLOUR, label=f"AUC {metrics.roc_auc:.4f}")
    ax.plot([0, 1], [0, 1], color="grey", linestyle=":", label="chance")
    if metrics.confusion is not None and marker:
        point_fpr = metrics.confusion["fp"] / metrics.n_pass
        point_tpr = metrics.confusion["tp"] / metrics.n_fail
        ax.plot([point_fpr], [point_tpr], "ko", label=marker)
    ax.set_xlabel("false-positive rate (PASS images called FAIL)")
    ax.set_ylabel("true-positive rate (FAIL images caught)")
    ax.set_xlim(-0.02, 1.02)
    ax.set_ylim(-0.02, 1.02)
    ax.set_title("ROC curve (FAIL positive)")
    ax.legend(loc="lower right", fontsize="small")
    figure.tight_layout()
    return figure


def _histogram_figure(truth: np.ndarray, values: np.ndarray, threshold: float | None, marker: str) -> Figure:
    figure = Figure(figsize=(6, 4))
    ax = figure.subplots()
    # Shared edges so the two classes are comparable bar for bar.
    edges = np.histogram_bin_edges(values, bins=min(50, max(10, int(math.sqrt(values.size)) * 2)))
    for label, mask, colour in (("PASS", ~truth, PASS_COLOUR), ("FAIL", truth, FAIL_COLOUR)):
        if mask.any():
            ax.hist(values[mask], bins=edges, alpha=0.55, color=colour, label=f"{label} ({int(mask.sum())})")
    if threshold is not None:
        ax.axvline(threshold, color="black", linestyle="--", label=marker)
    ax.set_xlabel("anomaly score (higher = more anomalous)")
    ax.set_ylabel("images")
    ax.set_title("Scores of PASS and FAIL images")
    ax.legend(fontsize="small")
    figure.tight_layout()
    return figure


def _confusion_figure(metrics: Metrics) -> Figure:
    if metrics.confusion is None:
        return _placeholder("Confusion matrix", "no threshold: calibrate, or add FAIL images")
    c = metrics.confusion
    counts = np.array([[c["tn"], c["fp"]], [c["fn"], c["tp"]]])
    figure = Figure(figsize=(4.5, 4))
    ax = figure.subplots()
    ax.imshow(counts, cmap="Blues")
    for row in range(2):
        for col in range(2):
            colour = "white" if counts[row, col] > counts.max() / 2 else "black"
            ax.text(col, row, str(counts[row, col]), ha="center", va="center", color=colour, fontsize=14)
    ax.set_xticks([0, 1], labels=["PASS", "FAIL"])
    ax.set_yticks([0, 1], labels=["PASS", "FAIL"])
    ax.set_xlabel("verdict")
    ax.set_ylabel("label")
    ax.set_title(f"Confusion at threshold {metrics.threshold:.4g}")
    figure.tight_layout()
    return figure


# --- report.md -----------------------------------------------------------------------


def _markdown(
    title: str,
    truth: np.ndarray,
    values: np.ndarray,
    names: list[str],
    calibration: Calibration | None,
    metrics: Metrics,
    extra: dict[str, Any],
    thumbnails: Callable[[int], str | None] | None = None,
    in_sample: bool = False,
) -> str:
    counts = f"{metrics.n_pass} PASS and {metrics.n_fail} FAIL images (FAIL is the positive class)."
    lines = [f"# {title}", "", counts, ""]
    if in_sample and metrics.threshold is not None:
        lines += [
            "> **In-sample threshold.** The threshold was chosen on these same test images, so every figure "
            "*at the threshold* (precision, recall, false-positive rate, balanced accuracy, the confusion "
            "matrix) is optimistic: expect worse on new parts. ROC AUC, average precision and F1 max do not "
            "depend on a threshold. For a threshold you can trust, calibrate on a separate labelled set "
            "(`nominal calibrate`).",
            "",
        ]
    if metrics.notes:
        lines += ["## Notes", ""] + [f"- {note}" for note in metrics.notes] + [""]
    lines += ["## Metrics", "", "| metric | value |", "| --- | --- |"]
    rows = [
        ("ROC AUC", metrics.roc_auc),
        ("average precision", metrics.average_precision),
        ("F1 max", metrics.f1_max),
        ("threshold at F1 max", _score(metrics.threshold_f1_max)),
        ("FPR at 95% TPR", metrics.fpr_at_95_tpr),
        ("threshold", _score(metrics.threshold)),
        ("precision at threshold", metrics.precision),
        ("recall at threshold", metrics.recall),
        ("false-positive rate at threshold", metrics.fpr),
        ("balanced accuracy at threshold", metrics.balanced_accuracy),
    ]
    lines += [f"| {name} | {_number(value)} |" for name, value in rows]
    if metrics.confusion is not None:
        c = metrics.confusion
        lines.append(f"| confusion (tp / fp / tn / fn) | {c['tp']} / {c['fp']} / {c['tn']} / {c['fn']} |")
    lines += ["", "## Threshold", ""] + _threshold_lines(calibration, metrics) + [""]
    lines += [
        "## Plots",
        "",
        "![Precision-recall curve](pr_curve.png)",
        "![ROC curve](roc_curve.png)",
        "![Score histogram](score_histogram.png)",
        "![Confusion matrix](confusion_matrix.png)",
        "",
    ]
    order = np.argsort(-values, kind="stable")
    high_pass = [i for i in order if not truth[i]][:TOP_N]
    low_fail = [i for i in order[::-1] if truth[i]][:TOP_N]
    threshold = metrics.threshold
    lines += _image_table("Highest-scoring PASS images (false alarms first)", high_pass, values, names, threshold, thumbnails)
    lines += _image_table("Lowest-scoring FAIL images (misses first)", low_fail, values, names, threshold, thumbnails)
    if extra:
        lines += ["## Extra", "", "| key | value |", "| --- | --- |"]
        lines += [f"| {_cell(key)} | {_cell(json.dumps(_jsonable(value)))} |" for key, value in extra.items()]
        lines.append("")
    lines += ["Per-image scores and labels are in [metrics.json](metrics.json).", ""]
    return "\n".join(lines)


def _threshold_lines(calibration: Calibration | None, metrics: Metrics) -> list[str]:
    if metrics.threshold is None:
        return ["No threshold: no calibration was given and the set has no FAIL images."]
    lines = [f"Verdict FAIL when score >= **{metrics.threshold:.6g}**."]
    if calibration is None:
        lines.append("No calibration given: this is the F1-max threshold of this same set.")
        return lines
    same = "" if calibration.threshold == metrics.threshold else f" (its threshold {calibration.threshold:.6g} differs)"
    lines.append(
        f"Calibration `{calibration.id}`{same}: policy `{calibration.policy}`, backbone `{calibration.backbone}`, "
        f"collection `{calibration.collection}`, {calibration.n_pass} PASS / {calibration.n_fail} FAIL images, "
        f"created {calibration.created_at}."
    )
    lines += [f"- warning: {warning}" for warning in calibration.warnings]
    return lines


def _image_table(
    heading: str, indices: list[int], values: np.ndarray, names: list[str], threshold: float | None,
    thumbnails: Callable[[int], str | None] | None = None,
) -> list[str]:
    lines = [f"## {heading}", ""]
    if not indices:
        return lines + ["None.", ""]
    shown = thumbnails is not None
    lines += ["| rank | " + ("thumbnail | " if shown else "") + "image | score | verdict |",
              "| --- | " + ("--- | " if shown else "") + "--- | --- | --- |"]
    for rank, i in enumerate(indices, start=1):
        verdict = "" if threshold is None else ("FAIL" if predict_fail([values[i]], threshold)[0] else "PASS")
        picture = ""
        if shown:
            relative = thumbnails(i)
            picture = (f"![{_cell(Path(names[i]).name)}]({relative}) | " if relative else "(unreadable) | ")
        lines.append(f"| {rank} | {picture}{_cell(names[i])} | {values[i]:.6g} | {verdict} |")
    return lines + [""]


THUMBNAIL_PX = 128


def _thumbnailer(folder: Path, images: Sequence[ImageInput]) -> Callable[[int], str | None]:
    """Writes image i as a small PNG on first use and returns its path relative to the report."""

    def thumbnail(i: int) -> str | None:
        path = folder / f"{i:05d}.png"
        if not path.exists():
            try:
                picture = to_rgb(decode(images[i]))
            except BadImage:
                return None
            picture.thumbnail((THUMBNAIL_PX, THUMBNAIL_PX))
            folder.mkdir(parents=True, exist_ok=True)
            _write_atomic(path, lambda fh: picture.save(fh, format="PNG"))
        return f"{folder.name}/{path.name}"

    return thumbnail


def _number(value: float | str | None) -> str:
    if isinstance(value, str):
        return value
    return "n/a" if value is None else f"{value:.4f}"


def _score(value: float | None) -> str:
    # Scores are distances on any scale: keep significant digits, not decimals.
    return "n/a" if value is None else f"{value:.6g}"


def _cell(text: str) -> str:
    """Text safe inside a markdown table cell."""
    return str(text).replace("\\", "\\\\").replace("|", "\\|").replace("\n", " ")


def calibration_pr_png(calibration: Calibration) -> bytes:
    """The PR curve a calibration kept, with its chosen threshold marked, as PNG bytes (for the API and web page)."""
    if not calibration.pr_curve or calibration.n_fail == 0:
        figure = _placeholder("Precision-recall curve", "no curve: this calibration had no FAIL images")
    else:
        figure = _pr_curve_figure(
            [point["recall"] for point in calibration.pr_curve],
            [point["precision"] for point in calibration.pr_curve],
            ap=calibration.average_precision,
            chance=calibration.n_fail / (calibration.n_fail + calibration.n_pass),
            chosen=(calibration.recall, calibration.precision),
            chosen_label=f"{calibration.policy}: threshold {calibration.threshold:.4f}",
        )
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=100)
    return buffer.getvalue()


def _trained_section(metrics: Metrics, trained: dict[str, Any]) -> str:
    """Unsupervised vs trained on the same test images, and whether the gate lets the trained one answer."""
    mine = metrics.to_dict()
    other = trained["metrics"]
    lines = ["", "## Trained scorer (labelled FAIL images)", "", f"Scorer: {trained['scorer']}.", "",
             "| metric | unsupervised | trained |", "| --- | --- | --- |"]
    for key in ("roc_auc", "average_precision", "f1_max", "fpr_at_95_tpr"):
        lines.append(f"| {key} | {_number(mine.get(key))} | {_number(other.get(key))} |")
    gate = trained["gate"]
    lines += ["", f"Gate: {'ON' if gate['active'] else 'OFF'}: {gate['reason']}.", ""]
    return "\n".join(lines) + "\n"

def _statistics_section(statistics: dict[str, Any]) -> str:
    """Type I and II error with 95% Wilson intervals, and the distances of each class to the nominal set."""
    lines = ["", "## Errors and distances", ""]
    for key, label in (("type_i_error", "Type I error (PASS called FAIL)"), ("type_ii_error", "Type II error (FAIL called PASS)")):
        found = statistics.get(key)
        if found:
            low, high = found["ci95"]
            lines.append(f"- {label}: {found['rate']:.3f} (95% Wilson interval {low:.3f}-{high:.3f})")
    for key, label in (("intra_class_distance", "PASS to nominal (intra-class)"),
                       ("inter_class_distance", "FAIL to nominal (inter-class)")):
        found = statistics.get(key)
        if found:
            lines.append(f"- {label} distance: mean {found['mean']:.4f}, median {found['median']:.4f}, "
                         f"5-95% {found['p05']:.4f}-{found['p95']:.4f} ({found['n']} images)")
    return "\n".join(lines) + "\n"
