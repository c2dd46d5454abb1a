"""The `nominal` command line: the root assembles command groups; each lives in its own module."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated, Optional

import typer

from app.cli import data, demo, evaluate, history, jobs, review, serve, settings, watch
from app.cli.context import State
from app.cli.errors import EXIT_ERROR, format_known_exception
from app.cli.output import Output
from app.config import Config

app = typer.Typer(
    name="nominal",
    help=(
        "PASS/FAIL verdicts on production images, by comparison with known-good (nominal) parts.\n\n"
        "Typical session:\n\n"
        "  nominal index line-3 photos/pass/            # store PASS images for a machine setting\n\n"
        "  nominal calibrate line-3 --pass val/pass --fail val/fail   # threshold from a PR curve\n\n"
        "  nominal inspect line-3 new/part-0042.png     # PASS or FAIL, score, threshold, neighbours\n\n"
        "  nominal evaluate tests/fixtures/hazelnut_toy --layout mvtec --out report/\n\n"
        "  nominal reindex line-3 /data/line-3/pass/ --wait   # new version, checked, switched in one step\n\n"
        "  nominal train line-3 --fail val/fail/           # learn from labelled defects, where it helps\n\n"
        "With REDIS_URL set, `nominal worker` processes embed the images of re-index jobs.\n\n"
        "Data lives in an embedded store in NOMINAL_DATA (./nominal-data) unless QDRANT_URL names a server."
    ),
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)


@app.callback()
def root(
    ctx: typer.Context,
    data_dir: Annotated[
        Optional[Path], typer.Option("--data", envvar="NOMINAL_DATA", help="Embedded store directory.", show_default="./nominal-data")
    ] = None,
    qdrant_url: Annotated[
        Optional[str], typer.Option("--qdrant-url", envvar="QDRANT_URL", help="Use this Qdrant server instead of the embedded store.")
    ] = None,
    backbone: Annotated[
        Optional[str], typer.Option("--backbone", envvar="NOMINAL_BACKBONE", help="Backbone for new settings (see `nominal backbones`).")
    ] = None,
    weights_dir: Annotated[
        Optional[Path], typer.Option("--weights-dir", envvar="NOMINAL_WEIGHTS_DIR", help="Directory of model weight files.")
    ] = None,
) -> None:
    overrides = {
        "NOMINAL_DATA": data_dir,
        "QDRANT_URL": qdrant_url,
        "NOMINAL_BACKBONE": backbone,
        "NOMINAL_WEIGHTS_DIR": weights_dir,
    }
    ctx.obj = State(config=Config(**{k: v for k, v in overrides.items() if v is not None}))


app.command("index")(data.index)
app.command("calibrate")(data.calibrate)
app.command("calibrations")(data.calibrations)
app.command("inspect")(data.inspect)
app.command("evaluate")(evaluate.evaluate)
app.command("history")(history.history)
app.command("review")(review.review)
app.command("watch")(watch.watch)
app.command("backbones")(settings.backbones)
app.command("reindex")(jobs.reindex)
app.command("train")(jobs.train)
app.command("rollback")(jobs.rollback)
app.command("jobs")(jobs.jobs)
app.command("worker")(jobs.worker)
app.command("serve")(serve.serve)
app.command("demo")(demo.demo)
app.add_typer(settings.app, name="settings")


def main(argv: list[str] | None = None) -> int:
    """Run the CLI; known errors print one line on stderr and exit 1, usage errors exit 2.

    Click's standalone mode shows usage errors and --help itself and ends with
    SystemExit (typer vendors its own click, so its exception classes are not
    importable here); errors from the commands pass through to be made one line.
    """
    command = typer.main.get_command(app)
    try:
        command.main(args=argv, prog_name="nominal", standalone_mode=True)
    except SystemExit as done:
        code = done.code
        return code if isinstance(code, int) else (0 if code is None else EXIT_ERROR)
    except Exception as error:  # noqa: BLE001 - the one place errors become exit codes
        message = format_known_exception(error)
        if message is None:
            raise
        Output(json_mode=False).error(message)
        return EXIT_ERROR
    return 0


if __name__ == "__main__":
    sys.exit(main())
