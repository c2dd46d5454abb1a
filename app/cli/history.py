"""`nominal history`: the verdicts a setting was given, newest first (table, --json or --csv)."""

from __future__ import annotations

import csv
import sys
from datetime import datetime, timezone
from typing import Annotated, Optional

import typer

from app.api.schemas import InspectionPublic, InspectionsPublic
from app.cli.context import JsonOpt, state
from app.cli.errors import CliError
from app.cli.output import Output
from app.runtime import build_history, service_for
from indexing.errors import StoreUnavailable
from indexing.history import VERDICTS, BadCursor
from indexing.settings import check_setting_name

CSV_COLUMNS = list(InspectionPublic.model_fields)


def _time(value: str | None, option: str) -> float | None:
    if value is None:
        return None
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        raise CliError(f"{option}: {value!r} is not an ISO 8601 time (e.g. 2026-11-30T08:00:00Z)") from None
    return (parsed if parsed.tzinfo else parsed.replace(tzinfo=timezone.utc)).timestamp()


def history(
    ctx: typer.Context,
    setting: Annotated[str, typer.Argument(help="Machine setting name.")],
    since: Annotated[Optional[str], typer.Option(help="ISO 8601: verdicts at or after this time (no zone: UTC).")] = None,
    until: Annotated[Optional[str], typer.Option(help="ISO 8601: verdicts before this time.")] = None,
    verdict: Annotated[Optional[str], typer.Option(help="Only PASS, FAIL or UNCALIBRATED.")] = None,
    limit: Annotated[int, typer.Option(min=1, help="Most verdicts to print.")] = 100,
    cursor: Annotated[Optional[str], typer.Option(help="Continue after a page: its next_cursor (--json).")] = None,
    csv_out: Annotated[bool, typer.Option("--csv", help="Print CSV (a header, one line per verdict).")] = False,
    json_out: JsonOpt = False,
) -> None:
    """The recorded verdicts of a setting, newest first: time, verdict, score, threshold, p-value, source.

    Every verdict (API, `nominal inspect`, `nominal watch`) is recorded in NOMINAL_HISTORY
    (default NOMINAL_DATA/history); this reads it even while `nominal serve` runs.

    Examples:

      nominal history line-3 --verdict FAIL --since 2026-11-30T06:00:00

      nominal history line-3 --csv --limit 100000 > line-3.csv

      nominal history line-3 --json | jq '.inspections[].p_value'
    """
    check_setting_name(setting)
    if verdict is not None and verdict.upper() not in VERDICTS:
        raise CliError(f"--verdict: {verdict!r} is not one of {', '.join(VERDICTS)}")
    if json_out and csv_out:
        raise CliError("--json and --csv: choose one")
    config = state(ctx).config
    start, end = _time(since, "--since"), _time(until, "--until")
    try:
        with service_for(config) as service:
            service.get_setting(setting)  # an unknown setting is named, not answered with an empty list
    except StoreUnavailable:
        pass  # a running server owns the embedded store: the history file is readable all the same
    store = build_history(config)
    try:
        page = store.query(setting, since=start, until=end, verdict=verdict.upper() if verdict else None,
                           cursor=cursor, limit=limit)
    except BadCursor as error:
        raise CliError(f"--cursor: {error}") from None
    result = InspectionsPublic(
        setting=setting, next_cursor=page.next_cursor,
        inspections=[InspectionPublic.of(setting, i, image_kept=store.image_path(i) is not None) for i in page.items],
    )
    out = Output(json_mode=json_out)
    if csv_out:
        writer = csv.DictWriter(sys.stdout, fieldnames=CSV_COLUMNS, lineterminator="\n")
        writer.writeheader()
        for item in result.inspections:
            writer.writerow(item.model_dump(mode="json"))
        return
    out.data(result)
    if not json_out:
        if not result.inspections:
            out.line(f"no verdicts recorded for {setting!r}" + (" in that range" if since or until or verdict else ""))
            return
        out.table(
            f"verdicts of {setting!r}, newest first", ["id", "at", "verdict", "score", "threshold", "p", "source", "image"],
            [[i.id, i.at, i.verdict, i.score, i.threshold, i.p_value, i.source, "kept" if i.image_url else ""]
             for i in result.inspections],
        )
        if result.next_cursor:
            out.line(f"more: --cursor {result.next_cursor}")
