"""`nominal reindex`, `nominal train`, `nominal rollback`, `nominal jobs`, `nominal worker`: long work and who does it."""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Annotated, Optional

import typer

from app.api.schemas import JobPublic, JobsPublic, SettingPublic
from app.cli.context import JsonOpt, state
from app.cli.data import image_inputs
from app.cli.errors import CliError
from app.cli.output import Output
from app.config import Config
from app.runtime import build_runner, job_board, service_for
from indexing.errors import InvalidTraining, JobFailed, NoPreviousVersion, NotConfigured, UnknownJob
from indexing.image_store import ImageStore
from indexing.jobs import Job, JobBoard, request_cancel

# How often a waiting command reads the job's status.
POLL_S = 0.2


def reindex(
    ctx: typer.Context,
    setting: Annotated[str, typer.Argument(help="Machine setting to re-index (it must exist).")],
    source: Annotated[str, typer.Argument(help="Folder, glob (quote it) or manifest CSV with a `path` column.")],
    backbone: Annotated[
        Optional[str], typer.Option("--backbone", help="Embed with this backbone; the setting switches to it.")
    ] = None,
    wait: Annotated[bool, typer.Option("--wait", help="Follow the job to its end; exit 1 unless it succeeded.")] = False,
    json_out: JsonOpt = False,
) -> None:
    """Build a new version of a setting's nominal set from SOURCE, check it, then switch to it in one step.

    Inspections are answered from the current version until the switch. Bad
    images are skipped and listed with their reason. Ctrl-C cancels: the
    half-built version is deleted and the current one stays active. Older
    versions are kept for `nominal rollback` (NOMINAL_KEEP_VERSIONS, default 2).

    With REDIS_URL set, `nominal worker` processes embed the images (they must
    see the same files); without it, this process does. This process waits
    while it owns the embedded store; only with a Qdrant server (QDRANT_URL)
    and no --wait does it hand the whole job to a worker and exit.

    Examples:

      nominal reindex line-3 /data/line-3/pass/ --wait

      nominal reindex line-3 "/data/line-3/2026-*/pass/*.png" --backbone mobilenet_v2 --wait

      REDIS_URL=redis://127.0.0.1:6379/0 nominal reindex line-3 manifest.csv --wait
    """
    config = state(ctx).config
    out = Output(json_mode=json_out)
    with service_for(config) as service:
        runner = build_runner(config, service)
        try:
            if not wait and runner.can_detach:
                job = runner.submit_reindex(setting, source, backbone=backbone, detach=True)
                out.data(JobPublic.of(job))
                out.line(f"re-index job {job.id} sent to the workers; follow it with `nominal jobs {job.id}`")
                return
            if config.redis_url and not workers_online(config):
                out.warn("no `nominal worker` answers on this Redis: the job waits in the queue until one starts")
            job = runner.submit_reindex(setting, source, backbone=backbone)
            if not wait:
                out.warn("this process runs the job (it owns the store), so it waits for the end")
            done = follow(runner.board, job, out)
        finally:
            runner.close()
    r = _result(done, out, f"re-index of {setting!r}", "the active version is unchanged")
    pruned = f"; deleted old versions {r['pruned']}" if r.get("pruned") else ""
    out.line(
        f"{setting!r} now on version {r.get('version')} ({r.get('count')} images, {r.get('skipped')} skipped){pruned}"
    )


def train(
    ctx: typer.Context,
    setting: Annotated[str, typer.Argument(help="Machine setting to train (it must hold nominal images).")],
    fail_dir: Annotated[Optional[list[Path]], typer.Option("--fail", help="Labelled FAIL images (defects): files, folders or globs.")] = None,
    pass_dir: Annotated[
        Optional[list[Path]],
        typer.Option("--pass", help="PASS images to make synthetic (CutPaste) defects from (default: the nominal set's stored uploads); a patch setting needs at least 10 that are not in its nominal set."),
    ] = None,
    feedback: Annotated[bool, typer.Option("--feedback/--no-feedback", help="Add the images operators marked FAIL (missed defects).")] = True,
    json_out: JsonOpt = False,
) -> None:
    """Train a scorer on a setting's labelled defects; it answers verdicts only where it measurably helps.

    A global setting learns a projection of the backbone's embeddings in which defects lie
    farther from the nominal images; a patch setting learns a DenseHybrid head, a per-patch
    defect score added to the patch distance. Both learn from the labelled FAIL images and
    CutPaste defects made from PASS images.
    The gate compares it with the unsupervised scorer by 5-fold cross-validation on the
    labelled images: only if its AP is higher by a margin (and not by the luck of a few
    images) is a threshold calibrated on its scores and put in use. Verdicts then say
    `scorer: trained:<id>`. To go back, activate an earlier calibration
    (`nominal calibrations SETTING ID --activate`). A few minutes on 2 CPU cores for
    about 1,000 images; with REDIS_URL and QDRANT_URL a worker runs it.

    Examples:

      nominal train line-3 --fail val/fail/

      nominal train line-3 --fail "defects/2026-11-*/*.png" --pass val/pass/ --no-feedback

      nominal train patch-line --fail val/fail/ --pass val/pass/   # a patch setting: held-out PASS images
    """
    config = state(ctx).config
    out = Output(json_mode=json_out)
    fail = image_inputs(fail_dir) if fail_dir else []
    passed = image_inputs(pass_dir) if pass_dir else []
    with service_for(config) as service:
        try:
            service.check_trainable(setting, fail_given=len({i.sha256 for i in fail}), use_feedback=feedback)
        except InvalidTraining as error:
            raise CliError(f"--{error.field}: {error}" if error.field == "fail" else str(error)) from None
        runner = build_runner(config, service)
        try:
            images = ImageStore(config.image_root)
            job = runner.submit_train(setting, [images.put(i) for i in fail], [images.put(i) for i in passed],
                                      use_feedback=feedback)
            done = follow(runner.board, job, out)
        finally:
            runner.close()
    r = _result(done, out, f"training of {setting!r}", "the scorer in use is unchanged")
    gate = r["trained"]["gate"]
    out.table(
        f"trained scorer {r['trained']['id']} of {setting!r}: {gate['folds']}-fold cross-validation on "
        f"{gate['n_fail']} labelled FAIL and {gate['n_pass']} PASS images",
        ["scorer", "AP", "gain (5th pct)", "margin"],
        [["unsupervised", gate["unsupervised_ap"], None, None],
         ["trained", gate["trained_ap"], gate["gain_low"], gate["margin"]]],
    )
    (out.line if r["active"] else out.warn)(r["reason"])


def _result(done: Job, out: Output, what: str, unchanged: str) -> dict:
    """A followed job's result, once its JSON and skipped images are shown; `JobFailed` unless it succeeded."""
    out.data(JobPublic.of(done))
    for error in done.errors:
        out.warn(f"skipped {error['source']}: {error['reason']}")
    if done.state != "succeeded":
        raise JobFailed(f"{what} {done.state}: {done.message}; {unchanged}")
    return done.result or {}


def workers_online(config: Config) -> bool:
    from workers.celery_app import make_app

    client = make_app(config)
    try:
        return bool(client.control.ping(timeout=1.0))
    finally:
        client.close()


def follow(board: JobBoard, job: Job, out: Output) -> Job:
    """Show a job's progress (done/total, rate, ETA) until it ends; Ctrl-C asks it to cancel and keeps waiting."""
    with out.progress() as bars:
        while True:
            try:
                current = board.get(job.id) or job
                if current.total:
                    bars(current.kind, current.done, current.total)
                if current.finished:
                    return current
                time.sleep(POLL_S)
            except KeyboardInterrupt:
                out.warn("cancelling: the job stops after its current batch")
                request_cancel(board, job.id)


def rollback(
    ctx: typer.Context,
    setting: Annotated[str, typer.Argument(help="Machine setting to roll back.")],
    json_out: JsonOpt = False,
) -> None:
    """Switch a setting back to its previous version (the one active before the last re-index).

    The version rolled back from is kept. Calibrations made on another backbone
    stop applying until the setting is calibrated again.

    Example: nominal rollback line-3
    """
    out = Output(json_mode=json_out)
    with service_for(state(ctx).config) as service:
        try:
            service.rollback(setting)
        except NoPreviousVersion as error:
            raise CliError(f"{error} (`nominal settings show {setting}` lists its versions)") from None
        status = service.status(setting)
        version = status.active
    out.data(SettingPublic.of(status))
    out.line(f"{setting!r} now on version {version.version} ({version.count} images, {version.backbone})")


def jobs(
    ctx: typer.Context,
    job_id: Annotated[Optional[str], typer.Argument(help="Show this job (all its errors); omit to list recent jobs.")] = None,
    cancel: Annotated[bool, typer.Option("--cancel", help="Ask the job to stop (after its current batch).")] = False,
    limit: Annotated[int, typer.Option(min=1, help="Jobs to list, most recent first.")] = 20,
    json_out: JsonOpt = False,
) -> None:
    """List recent jobs, or show one: state, done/total, rate, ETA and the images it skipped.

    Examples:

      nominal jobs

      nominal jobs 3f2c9a... --json

      nominal jobs 3f2c9a... --cancel
    """
    config = state(ctx).config
    out = Output(json_mode=json_out)
    if config.redis_url:
        _show_jobs(job_board(config), out, job_id=job_id, cancel=cancel, limit=limit)
    else:
        with service_for(config) as service:
            _show_jobs(job_board(config, service.store), out, job_id=job_id, cancel=cancel, limit=limit)


def _show_jobs(board: JobBoard, out: Output, *, job_id: str | None, cancel: bool, limit: int) -> None:
    if job_id is None:
        if cancel:
            raise NotConfigured("--cancel needs a JOB_ID: `nominal jobs JOB_ID --cancel`")
        listed = board.list(limit=limit)
        out.data(JobsPublic(jobs=[JobPublic.of(j) for j in listed]))
        out.table("jobs", ["id", "kind", "setting", "state", "done/total", "img/s", "ETA s", "errors"], [_row(j) for j in listed])
        return
    job = request_cancel(board, job_id) if cancel else board.get(job_id)
    if job is None:
        raise UnknownJob(job_id)
    out.data(JobPublic.of(job))
    out.table(f"job {job.id}", ["id", "kind", "setting", "state", "done/total", "img/s", "ETA s", "errors"], [_row(job)])
    if job.message:
        out.line(f"message: {job.message}")
    if job.result:
        out.line(f"result: {job.result}")
    for error in job.errors:
        out.line(f"  skipped {error['source']}: {error['reason']}")


def _row(job: Job) -> list[object]:
    rate = f"{job.rate:.1f}" if job.rate else None
    eta = f"{job.eta_s:.0f}" if job.eta_s is not None else None
    return [job.id, job.kind, job.setting, job.state, f"{job.done}/{job.total}", rate, eta, job.error_count]


def worker(
    ctx: typer.Context,
    queues: Annotated[str, typer.Option("--queues", "-Q", help="Comma-separated queues: embed (forward passes), nominal (jobs).")] = "embed,nominal",
    concurrency: Annotated[
        Optional[int], typer.Option("--concurrency", "-c", min=1, help="Worker processes (default: one per CPU core).")
    ] = None,
    pool: Annotated[str, typer.Option(help="Celery pool: prefork, or solo (one process, e.g. one GPU).")] = "prefork",
    loglevel: Annotated[str, typer.Option(help="DEBUG, INFO, WARNING...")] = "INFO",
) -> None:
    """Start a Celery worker that embeds batches and runs jobs (needs REDIS_URL).

    Each worker process builds its model after the fork; on CPU each gets its
    share of the cores, on CUDA larger batches. Workers read image files by
    path, so they must see the same files (and NOMINAL_DATA/images) as the
    process that submits; with a Qdrant server (QDRANT_URL) they write to it.

    Examples:

      REDIS_URL=redis://127.0.0.1:6379/0 nominal worker

      REDIS_URL=redis://gpu-box:6379/0 NOMINAL_DEVICE=cuda nominal worker --queues embed --pool solo
    """
    config = state(ctx).config
    if not config.redis_url:
        raise NotConfigured(
            "nominal worker needs a broker: set REDIS_URL (e.g. redis://127.0.0.1:6379/0); "
            "without it, jobs run inside the process that submits them"
        )
    from workers.celery_app import configure

    app = configure(config)
    argv = ["worker", f"--queues={queues}", f"--pool={pool}", f"--loglevel={loglevel}", f"--hostname=nominal-{os.getpid()}@%h"]
    if concurrency:
        app.conf.worker_concurrency = concurrency
        argv.append(f"--concurrency={concurrency}")
    app.worker_main(argv)
