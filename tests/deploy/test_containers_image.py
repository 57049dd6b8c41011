"""The images themselves, run with testcontainers against Podman's socket: who they run as, what
they hold (the services, not the installer, compilers or the stand-ins), the HEALTHCHECK they
declare, and that the one image runs the service it is told to and reports readiness truthfully.
Behind the `containers` marker (`make check-deploy`)."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pytest

from corral_devstack.ports import free_port
from tests.deploy.conftest import CONTAINER_TEST_TIMEOUT_S, Images, Podman
from tests.polling import until

pytestmark = [pytest.mark.containers, pytest.mark.timeout(CONTAINER_TEST_TIMEOUT_S)]

TOOLS = ("gcc", "cc", "make", "uv", "pip", "pip3", "secantusd-py")
INSPECT = """
import importlib.util, json, os, shutil
print(json.dumps({
    "uid": os.getuid(),
    "gid": os.getgid(),
    "modules": {m: importlib.util.find_spec(m) is not None for m in (
        "corral_gateway", "corral_scheduler", "corral_session_store", "corral_model_manager",
        "corral_emulator", "corral_devstack", "pip", "setuptools")},
    "tools": {t: shutil.which(t) for t in TOOLS},
    "wheels": os.path.exists("/wheels"),
    "writable_home": os.access("/var/lib/corral", os.W_OK),
}))
""".replace("TOOLS", repr(TOOLS))


@contextmanager
def container(image: str, command: list[str], **env: str) -> Iterator[Any]:
    """A container on the host's network (its servers on loopback ports), removed afterwards."""
    from testcontainers.core.config import testcontainers_config
    from testcontainers.core.container import DockerContainer

    testcontainers_config.ryuk_disabled = True
    box = DockerContainer(image).with_command(command).with_kwargs(network_mode="host")
    for name, value in env.items():
        box.with_env(name, value)
    box.start()
    try:
        yield box
    finally:
        box.stop()


def run_to_end(image: str, command: list[str]) -> str:
    with container(image, command) as box:
        status = box.wait()
        output: bytes = box.get_wrapped_container().logs()
        assert status == 0, output.decode()
        return output.decode()


def status_of(url: str) -> int:
    try:
        with urllib.request.urlopen(url, timeout=2) as answer:
            return int(answer.status)
    except urllib.error.HTTPError as exc:
        return exc.code
    except OSError:
        return 0


def test_the_services_image_holds_the_services_and_no_build_tools(
    podman: Podman, corral_images: Images
) -> None:
    facts = json.loads(run_to_end(corral_images.corral, ["python", "-c", INSPECT]))
    assert facts["uid"] == 10001 and facts["gid"] == 10001
    assert facts["modules"] == {
        "corral_gateway": True,
        "corral_scheduler": True,
        "corral_session_store": True,
        "corral_model_manager": True,
        "corral_emulator": False,
        "corral_devstack": False,
        "pip": False,
        "setuptools": False,
    }
    assert facts["tools"] == dict.fromkeys(TOOLS)
    assert facts["wheels"] is False
    assert facts["writable_home"] is True

    inspected = podman.podman("image", "inspect", corral_images.corral)
    assert inspected.returncode == 0, inspected.stderr
    image = json.loads(inspected.stdout)[0]
    assert image["Config"]["User"] == "10001:10001"
    assert image["Config"]["Entrypoint"] == ["corral"]
    # Kept by `podman build --format docker` (the OCI image format has no such field).
    healthcheck = image.get("Healthcheck") or image["Config"].get("Healthcheck")
    assert healthcheck["Test"] == ["CMD", "corral-ready"]

    standins = json.loads(run_to_end(corral_images.standins, ["python", "-c", INSPECT]))
    assert standins["modules"]["corral_emulator"] is True
    assert standins["tools"]["secantusd-py"] is not None
    assert standins["modules"]["pip"] is False


def test_one_image_runs_the_service_it_is_told_to_and_its_healthcheck_tells_the_truth(
    podman: Podman, corral_images: Images
) -> None:
    ollama = free_port()
    emulator = ["emulator", "--host", "127.0.0.1", "--port", str(ollama)]
    with container(corral_images.standins, emulator):
        until(
            lambda: status_of(f"http://127.0.0.1:{ollama}/api/version") == 200,
            60,
            "the emulator container answering",
        )
        # A gateway with no broker to reach: the image runs the service it was given (its log
        # says so) and the image's HEALTHCHECK command reports it not ready.
        gateway = free_port()
        with container(
            corral_images.corral,
            ["gateway"],
            CORRAL_GATEWAY_HOST="127.0.0.1",
            CORRAL_GATEWAY_PORT=str(gateway),
            CORRAL_AMQP_URL=f"amqp://guest:guest@127.0.0.1:{free_port()}/",
            CORRAL_OLLAMA_URL=f"http://127.0.0.1:{ollama}",
        ) as box:

            def log() -> str:
                output: bytes = box.get_wrapped_container().logs()
                return output.decode()

            until(lambda: "broker not reachable" in log(), 60, "the gateway trying its broker")
            assert '"service":"gateway"' in log().replace(" ", "")
            check = box.exec(["corral-ready"])
            assert check.exit_code == 1, check.output
            assert f"127.0.0.1:{gateway}/ready".encode() in check.output
