"""`nominal review`: the verdicts waiting for an operator's label, and labelling one (PASS, FAIL or skip)."""

from __future__ import annotations

from typing import Annotated, Optional

import typer

from app.api.schemas import ReviewedPublic, ReviewQueuePublic
from app.cli.context import JsonOpt, state
from app.cli.errors import CliError
from app.cli.jobs import follow
from app.cli.output import Output
from app.runtime import build_history, build_runner, service_for
from indexing.errors import StoreUnavailable
from indexing.history import REVIEW_LABELS
from indexing.image_store import ImageStore
from indexing.review import review as review_one
from indexing.settings import check_setting_name


def review(
    ctx: typer.Context,
    setting: Annotated[str, typer.Argument(help="Machine setting name.")],
    inspection_id: Annotated[Optional[int], typer.Argument(help="Inspection to label (an id from the queue).")] = None,
    label: Annotated[Optional[str], typer.Option(help="PASS, FAIL or skip (with an inspection id).")] = None,
    limit: Annotated[int, typer.Option(min=1, help="Most queued verdicts to list.")] = 20,
    json_out: JsonOpt = False,
) -> None:
    """List a setting's review queue (near-threshold and FAIL verdicts, oldest first), or label one.

    A label goes the feedback path: PASS adds the image to the nominal set (this
    command waits for the index job), FAIL makes it a FAIL example for the next
    `nominal calibrate`; skip only takes it off the queue. Each verdict is answered once.

    Listing reads NOMINAL_HISTORY even while `nominal serve` runs; labelling needs the
    store, so with a server running label on its page or with POST .../review/ID.

    Examples:

      nominal review line-3

      nominal review line-3 1042 --label FAIL

      nominal review line-3 --json | jq '.items[].id'
    """
    check_setting_name(setting)
    config = state(ctx).config
    out = Output(json_mode=json_out)
    if inspection_id is None:
        if label is not None:
            raise CliError("--label: name the inspection to label (nominal review SETTING ID --label FAIL)")
        _list(config, setting, limit, out)
        return
    if label is None:
        raise CliError(f"inspection {inspection_id}: give --label {' | '.join(REVIEW_LABELS)}")
    chosen = {value.lower(): value for value in REVIEW_LABELS}.get(label.lower())
    if chosen is None:
        raise CliError(f"--label: {label!r} is not one of {', '.join(REVIEW_LABELS)}")
    history = build_history(config)
    with service_for(config) as service:
        runner = build_runner(config, service)
        try:
            done = review_one(history, service, ImageStore(config.image_root), runner, setting, inspection_id, chosen)
            job = done.feedback.job if done.feedback else None
            finished = follow(runner.board, job, out) if job is not None else None
        finally:
            runner.close()
    result = ReviewedPublic.of(setting, done, image_kept=history.image_path(done.inspection) is not None)
    out.data(result)
    out.line(f"inspection {inspection_id} of {setting!r}: {chosen}. {result.message[:1].upper()}{result.message[1:]}.")
    if finished is not None and finished.state != "succeeded":
        raise CliError(f"the index job adding the image {finished.state}: {finished.message}")


def _list(config, setting: str, limit: int, out: Output) -> None:  # noqa: ANN001 - the Config
    try:
        with service_for(config) as service:
            service.get_setting(setting)  # an unknown setting is named, not answered with an empty queue
    except StoreUnavailable:
        pass  # a running server owns the embedded store: the history file is readable all the same
    result = ReviewQueuePublic.of(setting, build_history(config), limit=limit)
    out.data(result)
    if not result.items:
        out.line(f"nothing to review for {setting!r}: no near-threshold or FAIL verdict is waiting")
        return
    out.table(
        f"review queue of {setting!r}: {result.queued} waiting, oldest first",
        ["id", "at", "verdict", "reason", "score", "threshold", "source"],
        [[i.id, i.at, i.verdict, i.review_reason, i.score, i.threshold, i.source] for i in result.items],
    )
    out.line(f"label one: nominal review {setting} {result.items[0].id} --label PASS|FAIL|skip")
