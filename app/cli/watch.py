"""`nominal watch`: judge every image a camera writes into a folder (`indexing.watch`)."""

from __future__ import annotations

import json
import signal
import urllib.error
import urllib.request
import uuid
from contextlib import ExitStack
from pathlib import Path
from typing import Annotated, Any, Optional

import typer

from app.api.schemas import VerdictPublic
from app.cli.context import state
from app.cli.errors import CliError
from app.cli.output import Output
from app.runtime import service_for
from indexing.errors import BadImage
from indexing.images import ImageInput
from indexing.watch import Watcher


def _multipart(image: ImageInput) -> tuple[bytes, str]:
    boundary = uuid.uuid4().hex
    name = Path(image.source).name.replace('"', "")
    head = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"files\"; filename=\"{name}\"\r\n"
            "Content-Type: application/octet-stream\r\n\r\n").encode()
    return head + image.data + f"\r\n--{boundary}--\r\n".encode(), f"multipart/form-data; boundary={boundary}"


def _api_judge(api: str, key: str | None, setting: str):
    headers = {"X-API-Key": key} if key else {}
    base = f"{api.rstrip('/')}/v1/settings/{setting}"
    try:
        with urllib.request.urlopen(urllib.request.Request(base, headers=headers), timeout=30):
            pass
    except urllib.error.HTTPError as error:
        raise CliError(f"--api: {base} answered {error.code}: {_message(error)}") from None
    except (urllib.error.URLError, OSError) as error:
        raise CliError(f"--api: cannot reach {api} ({getattr(error, 'reason', error)})") from None

    def judge(image: ImageInput) -> dict[str, Any]:
        body, content_type = _multipart(image)
        request = urllib.request.Request(f"{base}/inspect", data=body, method="POST",
                                         headers={**headers, "content-type": content_type})
        try:
            with urllib.request.urlopen(request, timeout=120) as response:
                return json.loads(response.read())["results"][0]
        except urllib.error.HTTPError as error:
            if error.code in (413, 415, 422):
                raise BadImage(image.source, _message(error)) from None
            raise RuntimeError(f"the API answered {error.code}: {_message(error)}") from None

    return judge


def _message(error: urllib.error.HTTPError) -> str:
    try:
        return json.loads(error.read())["detail"][0]["msg"]
    except Exception:  # noqa: BLE001 - not our error body
        return error.reason


def watch(
    ctx: typer.Context,
    setting: Annotated[str, typer.Argument(help="Machine setting name.")],
    folder: Annotated[Path, typer.Argument(help="The folder the camera writes images into.")],
    results: Annotated[Optional[Path], typer.Option(help="Append one CSV line per verdict to this file.")] = None,
    webhook: Annotated[Optional[str], typer.Option(help="POST each verdict's JSON here (retried in the background).")] = None,
    move_to: Annotated[Optional[Path], typer.Option(help="Move each judged file to DIR/pass, DIR/fail (DIR/error).")] = None,
    api: Annotated[Optional[str], typer.Option(help="Judge through this Nominal server instead of the embedded store.")] = None,
    key: Annotated[Optional[str], typer.Option(envvar="NOMINAL_API_KEY", help="X-API-Key for --api.")] = None,
    settle: Annotated[float, typer.Option(min=0.0, help="Seconds a file's size must stay unchanged before it is judged.")] = 1.0,
    poll: Annotated[float, typer.Option(min=0.05, help="Seconds between looks at the folder.")] = 0.5,
    once: Annotated[bool, typer.Option("--once", help="Judge the files present, then exit.")] = False,
) -> None:
    """Judge every image written into FOLDER, once: a CSV line, a webhook POST, a move to pass/ or fail/.

    A file is taken when its size has stopped changing for --settle seconds (or it was
    renamed in); names starting with '.' or ending in .part/.tmp are left alone. A
    restart neither skips nor repeats a file (a journal in FOLDER/.nominal-watch). The
    webhook is retried with backoff in the background: a dead receiver never stops
    judging. Stop with Ctrl-C or SIGTERM.

    Examples:

      nominal watch line-3 /camera/out --results verdicts.csv --move-to /camera/done

      nominal watch line-3 /camera/out --webhook http://mes.local/nominal --api http://nominal:8000 --key KEY
    """
    out = Output(json_mode=False)
    config = state(ctx).config
    with ExitStack() as stack:
        if api:
            judge = _api_judge(api, key, setting)
        else:
            service = stack.enter_context(service_for(config))
            if service.status(setting).count == 0:
                raise CliError(f"setting {setting!r} has no nominal images yet: index PASS images first")

            def judge(image: ImageInput) -> dict[str, Any]:
                return VerdictPublic.of(setting, service.inspect(setting, [image])[0]).model_dump(mode="json")

        def reported(image: ImageInput) -> dict[str, Any]:
            result = judge(image)
            p = result.get("p_value")
            out.line(f"{Path(image.source).name}  {result['verdict']}  score {result['score']:.4f}"
                     + (f"  p {p:.3g}" if p is not None else ""))
            return result

        watcher = Watcher(folder, reported, results=results, webhook=webhook, move_to=move_to, settle=settle,
                          poll=poll, setting=setting)
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, lambda *_: watcher.stop())
        out.err.print(f"watching {folder} for {setting!r}" + (f" through {api}" if api else "") + "; Ctrl-C stops")
        stats = watcher.run(once=once)
        out.err.print(f"judged {stats.judged}, not images {stats.errors}, webhook sent {stats.webhook_sent}, "
                      f"webhook failures {stats.webhook_failures}")
