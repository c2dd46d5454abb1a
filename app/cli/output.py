"""Every command writes through one `Output`: data to stdout, progress and errors to stderr.

With `--json` the data is one JSON document per command, for scripts; without it,
tables and lines for people.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, is_dataclass
from pathlib import Path
from typing import Any

import numpy as np
from pydantic import BaseModel
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.table import Table


def to_jsonable(value: Any) -> Any:
    if isinstance(value, BaseModel):  # the API's own schemas: one vocabulary for `--json` and HTTP
        return value.model_dump(mode="json")
    if is_dataclass(value) and not isinstance(value, type):
        return to_jsonable(asdict(value))
    if isinstance(value, dict):
        return {str(k): to_jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [to_jsonable(v) for v in value]
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, (np.floating, np.integer)):
        return value.item()
    if isinstance(value, Path):
        return str(value)
    return value


class Output:
    def __init__(self, *, json_mode: bool) -> None:
        self.json_mode = json_mode
        # Piped output (a log, `grep`, a file) is never wrapped at 80 columns: tables keep one line per row.
        self.console = Console(file=sys.stdout, soft_wrap=True, width=None if sys.stdout.isatty() else 10_000)
        self.err = Console(file=sys.stderr, soft_wrap=True)

    def data(self, value: Any) -> None:
        """The command's result: JSON in --json mode, nothing otherwise (the caller prints a view)."""
        if self.json_mode:
            sys.stdout.write(json.dumps(to_jsonable(value), indent=2, allow_nan=False, default=str) + "\n")

    def line(self, text: str) -> None:
        if not self.json_mode:
            self.console.print(text, highlight=False)

    def table(self, title: str | None, columns: Sequence[str], rows: Sequence[Sequence[Any]]) -> None:
        if self.json_mode:
            return
        table = Table(title=title, title_justify="left")
        for column in columns:
            table.add_column(column, overflow="fold")  # never cut a path or a number short
        for row in rows:
            table.add_row(*(fmt(cell) for cell in row))
        self.console.print(table)

    def warn(self, text: str) -> None:
        self.err.print(f"[yellow]warning:[/yellow] {text}", highlight=False)

    def error(self, text: str) -> None:
        self.err.print(f"[red]error:[/red] {text}", highlight=False)

    @contextmanager
    def progress(self) -> Iterator["ProgressBars"]:
        """Bars on stderr, one per stage; silent when stderr is not a terminal and in --json mode."""
        if self.json_mode or not self.err.is_terminal:
            yield ProgressBars(None)
            return
        bars = Progress(
            TextColumn("{task.description:<20}"), BarColumn(), MofNCompleteColumn(),
            TextColumn("{task.fields[rate]}"), TimeElapsedColumn(), TimeRemainingColumn(),
            console=self.err, transient=False,
        )
        with bars:
            yield ProgressBars(bars)


class ProgressBars:
    """Adapts the service's `progress(stage, done, total)` callback to rich bars."""

    def __init__(self, bars: Progress | None) -> None:
        self._bars = bars
        self._tasks: dict[str, Any] = {}

    def __call__(self, stage: str, done: int, total: int) -> None:
        if self._bars is None:
            return
        if stage not in self._tasks:
            self._tasks[stage] = self._bars.add_task(stage, total=total, rate="")
        task_id = self._tasks[stage]
        task = self._bars.tasks[task_id]
        rate = f"{done / task.elapsed:.1f} img/s" if task.elapsed and done else ""
        self._bars.update(task_id, completed=done, total=total, rate=rate)


def fmt(cell: Any) -> str:
    if cell is None:
        return "-"
    if isinstance(cell, float):
        return f"{cell:.4f}"
    return str(cell)
