"""`nominal demo`: a working machine setting from real images available offline, then the service.

Hazelnut Toy (CC-BY-4.0, in this repository's tests/fixtures) when running from a
clone; otherwise ELPV solar cells from the `elpv-dataset` package, which every
install has. Running it again reuses what is stored (images are stored by content).
"""

from __future__ import annotations

import shlex
from enum import Enum
from pathlib import Path
from typing import Annotated

import typer

from app.cli.context import state
from app.cli.output import Output
from app.cli.serve import LOOPBACK, bind, run_server
from app.runtime import service_for
from indexing.datasets import Dataset, load_dataset
from indexing.errors import NoImages

SETTING = "demo"
HAZELNUT = Path(__file__).resolve().parents[2] / "tests" / "fixtures" / "hazelnut_toy"
# ELPV is large; the demo keeps start-up short with a slice of the mono cells.
ELPV_TRAIN, ELPV_TEST = 150, 40


class DemoData(str, Enum):
    auto = "auto"
    hazelnut = "hazelnut"
    elpv = "elpv"


def demo(
    ctx: typer.Context,
    data: Annotated[DemoData, typer.Option("--dataset", help="auto: Hazelnut Toy from a clone, else ELPV cells.")] = DemoData.auto,
    port: Annotated[int, typer.Option(min=1, max=65535, envvar="NOMINAL_PORT", help="TCP port of the service.")] = 8000,
    serve: Annotated[bool, typer.Option("--serve/--no-serve", help="Start the service after preparing the setting.")] = True,
) -> None:
    """Create, fill and calibrate a demo machine setting from real images, then serve it.

    Prints the docs and web page URLs and a ready `curl` that inspects an image.
    Everything is kept in NOMINAL_DATA (./nominal-data), like your own settings.

    Example: nominal demo --port 8000
    """
    out = Output(json_mode=False)
    config = state(ctx).config
    sock = bind(LOOPBACK, port) if serve else None  # a port in use stops the demo now, not after the setting is built
    dataset = _dataset(data)
    example_dir = config.data / "demo-examples"
    with service_for(config) as service, out.progress() as bars:
        service.put_setting(SETTING, description=f"demo: {dataset.name}")
        result = service.index(SETTING, dataset.train, progress=bars)
        passes = [t.image for t in dataset.test if not t.is_fail]
        fails = [t.image for t in dataset.test if t.is_fail]
        calibration = service.calibrate(SETTING, pass_images=passes, fail_images=fails, policy="f1",
                                        use_feedback=False, progress=bars).calibration
    examples = {"pass": _as_file(passes[0], example_dir, "pass"), "fail": _as_file(fails[0], example_dir, "fail")}
    url = f"http://{LOOPBACK}:{port}"
    out.line(f"Demo setting {SETTING!r}: {result.count} nominal images from {dataset.name}, "
             f"threshold {calibration.threshold:.4f} (ROC-AUC {calibration.roc_auc:.3f} on {len(passes)} PASS + {len(fails)} FAIL)")
    out.line(f"Web page:  {url}/")
    out.line(f"API docs:  {url}/docs")
    out.line("Inspect an image:")
    out.line(f"  curl -s -F files=@{shlex.quote(str(examples['fail']))} {url}/v1/settings/{SETTING}/inspect")
    if serve:
        run_server(config, host=LOOPBACK, port=port, sock=sock)


def _dataset(choice: DemoData) -> Dataset:
    if choice is DemoData.hazelnut or (choice is DemoData.auto and HAZELNUT.is_dir()):
        if not HAZELNUT.is_dir():
            raise NoImages(f"Hazelnut Toy is not at {HAZELNUT} (it ships with a clone of the repository): use --dataset elpv")
        return load_dataset(HAZELNUT, "mvtec")
    full = load_dataset("elpv", "elpv", subset="mono")
    passes = [t for t in full.test if not t.is_fail][:ELPV_TEST]
    fails = [t for t in full.test if t.is_fail][:ELPV_TEST]
    return Dataset(name=f"{full.name} (first {ELPV_TRAIN} PASS cells)", train=full.train[:ELPV_TRAIN], test=passes + fails)


def _as_file(image, folder: Path, stem: str) -> Path:
    """A file a user can pass to curl: the image's own path when it has one, else a written copy."""
    source = Path(image.source)
    if source.is_file():
        return source.resolve()
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{stem}.png"
    path.write_bytes(image.data)
    return path.resolve()
