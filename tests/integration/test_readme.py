"""The README's two commands, as a new user runs them: the CI script runs the test command, and a
clean clone installs and runs the demo, which answers an inspect request."""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import time
import tomllib
from importlib import metadata
from pathlib import Path

import httpx
import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parents[2]

pytestmark = pytest.mark.slow


def readme_commands() -> list[str]:
    section = (ROOT / "README.md").read_text().split("## Two commands", 1)[1].split("\n## ", 1)[0]
    return re.findall(r"```bash\n(.*?)\n```", section, flags=re.DOTALL)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_the_readme_has_two_commands_and_ci_runs_the_second() -> None:
    commands = readme_commands()
    assert len(commands) == 2 and all("\n" not in c for c in commands)
    ci_lines = [line for line in (ROOT / ".ci" / "run").read_text().splitlines() if line and not line.startswith("#")]
    assert ci_lines[-1] == commands[1]


def test_the_readme_commands_install_the_locked_versions_and_this_environment_is_them() -> None:
    """What CI tests is what a clone installs: both commands install through the lock, the lock pins
    every dependency pyproject names within its bounds, and the environment running these tests holds
    exactly the locked versions (a drifted install would test something no user gets)."""
    for command in readme_commands():
        assert re.match(r"pip install (-q )?-c constraints\.txt -e ", command), command
    pins = dict(line.split("==") for line in (ROOT / "constraints.txt").read_text().splitlines()
                if line and not line.startswith("#"))
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    named = [*project["dependencies"], *project["optional-dependencies"]["dev"]]
    for requirement in map(Requirement, named):
        name = canonicalize_name(requirement.name)
        assert name in pins, f"{name} is not locked: run python scripts/lock.py"
        assert requirement.specifier.contains(pins[name], prereleases=True), (name, pins[name])
    drifted = {}
    for name, pinned in pins.items():
        try:
            installed = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue  # a platform-only pin (CUDA libraries, say) this machine does not need
        if installed != pinned:
            drifted[name] = (pinned, installed)
    assert not drifted, f"installed versions differ from constraints.txt (locked, installed): {drifted}"


def test_a_clean_clone_installs_and_runs_the_demo(tmp_path: Path) -> None:
    if not (ROOT / ".git").exists():
        pytest.skip("not a git checkout: nothing to clone")
    clone = tmp_path / "fresh"
    subprocess.run(["git", "clone", "-q", str(ROOT), str(clone)], check=True, timeout=120)
    # A venv that sees the installed dependencies, so `pip install -e .` installs only Nominal itself.
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--system-site-packages", str(venv)], check=True, timeout=120)
    port = free_port()
    env = {**os.environ, "PATH": f"{venv / 'bin'}:{os.environ['PATH']}", "NOMINAL_PORT": str(port),
           "VIRTUAL_ENV": str(venv), "PIP_DISABLE_PIP_VERSION_CHECK": "1"}
    env.pop("PYTHONPATH", None)
    env.pop("NOMINAL_DATA", None)
    log = tmp_path / "demo.log"
    with log.open("w") as output:
        demo = subprocess.Popen(["bash", "-c", readme_commands()[0]], cwd=clone, env=env, stdout=output,
                                stderr=subprocess.STDOUT, start_new_session=True)
        try:
            url = f"http://127.0.0.1:{port}"
            deadline = time.monotonic() + 420
            while time.monotonic() < deadline:
                assert demo.poll() is None, f"the demo exited:\n{log.read_text()[-3000:]}"
                try:
                    if httpx.get(f"{url}/readyz", timeout=2).status_code == 200:
                        break
                except httpx.TransportError:
                    time.sleep(1)
            else:
                raise AssertionError(f"the demo did not serve in time:\n{log.read_text()[-3000:]}")
            printed = log.read_text()
            curl = re.search(r"curl -s -F files=@(\S+) (\S+)", printed)
            assert curl, printed[-3000:]
            image, endpoint = Path(curl.group(1)), curl.group(2)
            assert image.is_relative_to(clone), "the demo runs from the clone, not from this checkout"
            response = httpx.post(endpoint, files=[("files", (image.name, image.read_bytes()))], timeout=60)
            assert response.status_code == 200
            assert response.json()["results"][0]["verdict"] == "FAIL"
            assert (clone / "nominal-data").is_dir(), "data lives in the clone's ./nominal-data by default"
        finally:
            os.killpg(demo.pid, signal.SIGTERM)
            demo.wait(timeout=60)
