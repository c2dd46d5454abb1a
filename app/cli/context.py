"""What the root command hands to every subcommand, and options they share."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated

import typer

from app.config import Config

JsonOpt = Annotated[bool, typer.Option("--json", help="Print one JSON document on stdout, for scripts.")]


@dataclass
class State:
    config: Config


def state(ctx: typer.Context) -> State:
    found = ctx.find_object(State)
    if found is None:  # a subcommand invoked programmatically without the root
        found = State(config=Config())
    return found
