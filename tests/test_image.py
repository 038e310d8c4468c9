"""The image is checked without a container engine: its lock, Dockerfile, install steps, commands and size."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tomllib
from dataclasses import dataclass
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from tests.conftest import REPO, Gcs
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
    for tool in ("pytest", "ruff", "mypy", "duckdb", "polars", "batchrun", "batchrun-vertex"):
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


# The image's size without a container engine: the base image as published, plus what the runtime stage adds.
# python:3.11-slim-bookworm (amd64) is "~ 130.01 Mb" on disk in docker-library/repo-info
# (repos/python/local/3.11-slim-bookworm.md, python:3.11.16): counted here as MiB, the larger reading.
BASE_IMAGE_BYTES = round(130.01 * 2**20)
IMAGE_BUDGET_BYTES = 350_000_000
# The venv today (docker/install-venv.sh, requirements.lock as locked) is about 173 MB: a ceiling that catches growth.
VENV_CEILING_BYTES = 190_000_000
PRUNED = ["pyarrow/include", "pyarrow/includes", "pyarrow/tests", "pyarrow/_flight*", "pyarrow/_substrait*",
          "pyarrow/_orc*", "pyarrow/_hdfs*", "pyarrow/_azurefs*", "pyarrow/_s3fs*", "pyarrow/*.pyx",
          "pyarrow/*.pxd", "pyarrow/*.pxi", "pip", "setuptools"]  # fmt: skip


@dataclass(frozen=True)
class ImageVenv:
    """The venv docker/install-venv.sh made, its site-packages, and the bytes the runtime stage adds."""

    root: Path
    site: Path
    added_bytes: int


def _file_bytes(root: Path) -> int:
    """The bytes of the regular files under `root`, as an image layer holds them (a symlink is a few bytes)."""
    return sum(f.stat().st_size for f in root.rglob("*") if f.is_file() and not f.is_symlink())


@pytest.fixture(scope="module")
def image_venv(tmp_path_factory: pytest.TempPathFactory) -> ImageVenv:
    """docker/install-venv.sh, as the build stage runs it, into a new venv made by the base interpreter."""
    venv = tmp_path_factory.mktemp("image") / "venv"
    python = getattr(sys, "_base_executable", sys.executable)
    result = subprocess.run(
        ["sh", str(REPO / "docker" / "install-venv.sh"), str(venv), str(REPO)],
        env={**_clean_environ(), "PYTHON": python},
        capture_output=True,
        text=True,
        timeout=1800,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    (site,) = venv.glob("lib/python3*/site-packages")
    added = _file_bytes(venv) + _file_bytes(REPO / "jobs") + _file_bytes(REPO / "sample_data")
    return ImageVenv(venv, site, added)


@pytest.mark.slow
def test_the_image_install_steps_work_in_a_clean_venv(image_venv: ImageVenv, gcs_server: Gcs, tmp_path: Path) -> None:
    """The slimmed venv alone (no PYTHONPATH, nothing of the test venv) runs every command a task or a user runs:
    the sample job on the simulator, status, report, export, and the same with a gs:// output on the emulator;
    what the script removed is gone and pip with it; prints the venv's size and the image's."""
    bin_dir = image_venv.root / "bin"
    version = subprocess.run([str(bin_dir / "batchrun"), "--version"], capture_output=True, text=True)
    assert version.returncode == 0 and version.stdout.startswith("batchrun "), version
    assert shutil.which("python3", path=str(bin_dir))
    for pattern in PRUNED:
        assert not list(image_venv.site.glob(pattern)), f"{pattern} is still in the image's venv"
    shutil.copytree(REPO / "jobs", tmp_path / "jobs")
    shutil.copytree(REPO / "sample_data", tmp_path / "sample_data")
    env = {**_clean_environ(), **gcs_server.env}
    for output in ("out/sample", f"{gcs_server.make_bucket()}/sample"):
        at = ["--set", f"output.path={output}"]
        for command in (["run", "--limit", "20"], ["run"], ["status"], ["report"], ["export"]):
            args = [command[0], "jobs/reviews-sentiment.yaml", *command[1:], *at]
            if command == ["export"]:
                args.insert(2, f"{output}-export.parquet")
            result = subprocess.run(
                [str(bin_dir / "batchrun"), *args], env=env, cwd=tmp_path, capture_output=True, text=True, timeout=300
            )
            assert result.returncode == 0, (args, result.stdout[-2000:], result.stderr[-3000:])
            assert "Traceback" not in result.stderr, result.stderr
            if command == ["status"]:
                assert "60 done (60 ok, 0 error)" in result.stdout, result.stdout
    exported = pq.read_table(tmp_path / "out" / "sample-export.parquet")
    assert exported.num_rows == 60
    record(
        "image venv",
        venv_bytes=_file_bytes(image_venv.root),
        runtime_stage_adds_bytes=image_venv.added_bytes,
        base_image_bytes=BASE_IMAGE_BYTES,
        image_estimate_mb=round((image_venv.added_bytes + BASE_IMAGE_BYTES) / 1e6),
    )
    assert image_venv.added_bytes <= VENV_CEILING_BYTES, image_venv.added_bytes


@pytest.mark.slow
def test_the_image_is_under_its_size_budget(image_venv: ImageVenv) -> None:
    """The base image's published size plus what the runtime stage adds stays under 350 MB, and the venv holds
    no polars (the runtime reads its output with pyarrow; polars is for the tests and analysts)."""
    assert BASE_IMAGE_BYTES + image_venv.added_bytes < IMAGE_BUDGET_BYTES
    assert not list(image_venv.site.glob("polars*")) and not list(image_venv.site.glob("_polars*"))
