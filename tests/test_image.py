"""The container image without a container engine: the lock file against pyproject.toml, the Dockerfile's
shape, and (slow, it downloads every wheel) the image's install steps run in a clean venv."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from tests.conftest import REPO
from tests.faults import record

LOCK = REPO / "requirements.lock"
REFRESH = (
    "uv pip compile pyproject.toml --generate-hashes --python-version 3.11 "
    "--python-platform x86_64-manylinux_2_28 -o requirements.lock"
)


def locked() -> dict[str, tuple[str, list[str]]]:
    """name -> (version, hashes) for every pin of the lock file."""
    text = re.sub(r"\\\n", " ", LOCK.read_text())
    pins: dict[str, tuple[str, list[str]]] = {}
    for line in text.splitlines():
        match = re.match(r"([A-Za-z0-9_.\-]+)==(\S+)\s*(.*)", line)
        if match:
            name, version, rest = match.groups()
            pins[canonicalize_name(name)] = (version, re.findall(r"--hash=sha256:([0-9a-f]{64})", rest))
    return pins


def test_lock_file_pins_every_dependency_of_pyproject_with_hashes() -> None:
    """Each runtime dependency (and each extra it names) is pinned to a version its specifier allows,
    every pin has a sha256 hash, no test tool is in the image's lock, and the header says how to refresh it."""
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    pins = locked()
    assert pins, "requirements.lock pins nothing"
    for text in project["dependencies"]:
        requirement = Requirement(text)
        name = canonicalize_name(requirement.name)
        assert name in pins, f"{requirement.name} is in pyproject.toml but not in requirements.lock"
        assert requirement.specifier.contains(pins[name][0], prereleases=True), (text, pins[name][0])
    assert {"aiohttp", "requests"} <= pins.keys()  # openai[aiohttp], google-auth[requests]
    for pinned, (version, hashes) in pins.items():
        assert hashes, f"{pinned}=={version} has no hash"
    for tool in ("pytest", "ruff", "mypy", "duckdb", "batchrun", "batchrun-vertex"):
        assert tool not in pins, tool
    assert REFRESH in LOCK.read_text().split("\n\n", 1)[0]
    assert REFRESH in (REPO / "docs" / "cloud-run.md").read_text()


def _stages() -> list[list[tuple[str, str]]]:
    """The Dockerfile's instructions, (INSTRUCTION, arguments), split into build stages."""
    text = re.sub(r"\\\n", " ", (REPO / "Dockerfile").read_text())
    stages: list[list[tuple[str, str]]] = [[]]
    for line in (raw.strip() for raw in text.splitlines()):
        if not line or line.startswith("#"):
            continue
        op, args = line.split(None, 1)
        if op.upper() == "FROM":
            stages.append([])
        stages[-1].append((op.upper(), args))
    return stages


def test_dockerfile_pins_its_base_builds_apart_and_runs_unprivileged_with_a_home() -> None:
    """Base pinned by digest, the venv built by docker/install-venv.sh in a build stage and copied into a
    slim runtime stage with no installer, a non-root USER with an existing HOME, `batchrun` as entrypoint."""
    preamble, build, runtime = _stages()
    base = dict(preamble)["ARG"]
    assert re.fullmatch(r"PYTHON_IMAGE=python:3\.11[\w.\-]*-slim[\w\-]*@sha256:[0-9a-f]{64}", base), base
    assert build[0] == ("FROM", "${PYTHON_IMAGE} AS build") and runtime[0] == ("FROM", "${PYTHON_IMAGE}")
    assert ("RUN", "sh docker/install-venv.sh /opt/batchrun /src") in build
    assert ("COPY", "--from=build /opt/batchrun /opt/batchrun") in runtime
    runtime_runs = " ".join(args for op, args in runtime if op == "RUN")
    assert "pip" not in runtime_runs and "apt-get" not in runtime_runs
    env = " ".join(args for op, args in runtime if op == "ENV")
    assert "HOME=/home/batchrun" in env and "--create-home --home-dir /home/batchrun" in runtime_runs
    users = [args for op, args in runtime if op == "USER"]
    assert users and users[-1].split(":")[0] not in ("root", "0")
    assert runtime[-2:] == [("ENTRYPOINT", '["batchrun"]'), ("CMD", '["--help"]')]
    ignored = {
        line.strip()
        for line in (REPO / ".dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    }
    for op, args in build + runtime:
        if op == "COPY" and not args.startswith("--from"):
            for source in args.split()[:-1]:
                assert (REPO / source).exists() and source not in ignored, source


def _clean_environ() -> dict[str, str]:
    """This environment without the test venv's traces (the pip cache under HOME stays usable)."""
    return {k: v for k, v in os.environ.items() if k not in ("VIRTUAL_ENV", "PYTHONPATH", "PYTHONHOME")}


@pytest.mark.slow
def test_the_image_install_steps_work_in_a_clean_venv(tmp_path: Path) -> None:
    """docker/install-venv.sh, as the build stage runs it, in a new venv: hashes checked, the sample job
    runs (the script's own warm-up), `batchrun --version` answers, pip is gone; prints the venv's size."""
    venv = tmp_path / "venv"
    python = getattr(sys, "_base_executable", sys.executable)
    result = subprocess.run(
        ["sh", str(REPO / "docker" / "install-venv.sh"), str(venv), str(REPO)],
        env={**_clean_environ(), "PYTHON": python},
        capture_output=True,
        text=True,
        timeout=1800,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    version = subprocess.run([str(venv / "bin" / "batchrun"), "--version"], capture_output=True, text=True)
    assert version.returncode == 0 and version.stdout.startswith("batchrun "), version
    assert not (venv / "bin" / "pip").exists()
    assert shutil.which("python3", path=str(venv / "bin"))
    size = sum(f.stat().st_size for f in venv.rglob("*") if f.is_file() and not f.is_symlink())
    record("image venv", installed_mb=round(size / 2**20))
