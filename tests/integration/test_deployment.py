"""What can be checked of the deployment files without a Docker engine: compose parses, every command a
service runs exists in the `nominal` CLI, every variable a service sets is one the code reads, and the
Dockerfile copies what exists."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import click
import pytest
import typer
import yaml

from app.cli.main import app
from app.config import Config

ROOT = Path(__file__).resolve().parents[2]
COMPOSE = ROOT / "docker-compose.yml"
NOMINAL_SERVICES = ("api", "worker", "worker-gpu")


def compose_config(*args: str, keys: str | None = "ci:admin") -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != "NOMINAL_API_KEYS"}
    if keys is not None:
        env["NOMINAL_API_KEYS"] = keys
    return subprocess.run(
        ["docker-compose", "-f", str(COMPOSE), *args, "config", "-q"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=60,
    )


@pytest.fixture(scope="module")
def services() -> dict[str, dict]:
    return yaml.safe_load(COMPOSE.read_text())["services"]


def env_read_by_code() -> set[str]:
    """Variables the code reads: the Config fields' names and the CLI options' envvars."""
    names = {alias for field in Config.model_fields.values()
             for alias in getattr(field.validation_alias, "choices", [])}
    command = typer.main.get_command(app)

    def walk(cmd: click.Command) -> None:
        for param in cmd.params:
            envvar = getattr(param, "envvar", None)
            names.update([envvar] if isinstance(envvar, str) else envvar or [])
        for sub in getattr(cmd, "commands", {}).values():
            walk(sub)

    walk(command)
    return names


@pytest.mark.skipif(shutil.which("docker-compose") is None, reason="docker-compose not installed (.ci/run installs it)")
def test_compose_file_parses_with_and_without_the_gpu_profile() -> None:
    for args in ((), ("--profile", "gpu")):
        result = compose_config(*args)
        assert result.returncode == 0, result.stderr


@pytest.mark.skipif(shutil.which("docker-compose") is None, reason="docker-compose not installed (.ci/run installs it)")
def test_compose_refuses_to_start_the_api_without_keys() -> None:
    result = compose_config(keys=None)
    assert result.returncode != 0 and "set NOMINAL_API_KEYS" in result.stderr


def test_every_service_command_exists_in_the_cli(services: dict[str, dict]) -> None:
    root = typer.main.get_command(app)
    for name in NOMINAL_SERVICES:
        program, subcommand, *rest = services[name]["command"]
        assert program == "nominal"
        command = root.commands.get(subcommand)
        assert command is not None, f"{name}: `nominal {subcommand}` does not exist"
        options = {opt for param in command.params for opt in getattr(param, "opts", [])}
        for word in rest:
            if word.startswith("--"):
                assert word in options, f"{name}: `nominal {subcommand}` has no option {word}"


def test_every_variable_a_service_sets_is_read_by_the_code(services: dict[str, dict]) -> None:
    read = env_read_by_code()
    for name in NOMINAL_SERVICES:
        unknown = set(services[name]["environment"]) - read
        assert not unknown, f"{name} sets variables nothing reads: {sorted(unknown)}"


def test_the_readme_documents_every_variable_the_code_reads() -> None:
    readme = (ROOT / "README.md").read_text()
    missing = [name for name in sorted(env_read_by_code()) if f"`{name}`" not in readme]
    assert not missing, f"README configuration table lacks {missing}"


def test_the_gpu_workers_reserve_an_nvidia_device(services: dict[str, dict]) -> None:
    gpu = services["worker-gpu"]
    assert gpu["profiles"] == ["gpu"] and gpu["build"]["target"] == "cuda"
    device = gpu["deploy"]["resources"]["reservations"]["devices"][0]
    assert device["driver"] == "nvidia" and "gpu" in device["capabilities"]
    assert services["qdrant"]["image"].startswith("qdrant/qdrant:") and "healthcheck" in services["qdrant"]


def test_the_dockerfile_builds_both_targets_from_files_that_exist() -> None:
    dockerfile = (ROOT / "Dockerfile").read_text()
    stages = set(re.findall(r"^FROM \S+ AS (\S+)$", dockerfile, flags=re.MULTILINE))
    assert {"cpu", "cuda"} <= stages
    for source in re.findall(r"^COPY (?!--from)(\S+) ", dockerfile, flags=re.MULTILINE):
        assert (ROOT / source).exists(), f"Dockerfile copies {source}, which does not exist"


def stage_runs(dockerfile: str, stage: str) -> str:
    """The RUN commands of one stage of the Dockerfile, continuation lines joined."""
    joined = dockerfile.replace("\\\n", " ")
    body = re.split(rf"^FROM \S+ AS {stage}$", joined, flags=re.MULTILINE)[1]
    body = re.split(r"^FROM ", body, flags=re.MULTILINE)[0]
    return " && ".join(re.findall(r"^RUN (.*)$", body, flags=re.MULTILINE))


def test_the_cuda_image_holds_faiss_gpu_alone() -> None:
    """faiss-cpu (a dependency) and faiss-gpu both provide `faiss`: the CUDA build must remove the former first."""
    runs = [step.strip() for step in stage_runs((ROOT / "Dockerfile").read_text(), "build-cuda").split("&&")]
    removed = next(i for i, step in enumerate(runs) if step.startswith("pip uninstall") and "faiss-cpu" in step)
    added = next(i for i, step in enumerate(runs) if step.startswith("pip install") and "faiss-gpu" in step)
    assert removed < added, runs
    assert not any("faiss-gpu" in step for step in stage_runs((ROOT / "Dockerfile").read_text(), "build-cpu").split("&&"))
