from __future__ import annotations

import json
import os
import signal
import urllib.request
from pathlib import Path

import pytest
from pymongo import MongoClient

from corral_common.redaction import redact_url
from corral_devstack.mongo import SecantusNode, ping
from corral_devstack.ports import free_port
from corral_devstack.stack import (
    DEFAULT_AMQP_URL,
    SERVICE_MODULES,
    StackError,
    choose_broker,
    service_name,
)
from tools.devstack.tests.launcher import Launcher


@pytest.fixture
def launcher_env(tmp_path: Path, fake_services: Path, mongo_url: str) -> dict[str, str]:
    """The launcher's environment: fake services, and the session's MongoDB as an existing
    server (tests of the embedded store take CORRAL_MONGO_URL out)."""
    (tmp_path / "reports").mkdir()
    env = {k: v for k, v in os.environ.items() if not k.startswith("CORRAL_")}
    env.update(
        PYTHONPATH=str(fake_services),
        FAKE_REPORT_DIR=str(tmp_path / "reports"),
        CORRAL_GATEWAY_PORT=str(free_port()),
        CORRAL_MONGO_URL=mongo_url,
    )
    return env


def _report(tmp_path: Path, role: str) -> dict[str, object]:
    data: dict[str, object] = json.loads((tmp_path / "reports" / f"{role}.json").read_text())
    return data


def _gone(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_bytes()
    except OSError:
        return True
    return stat.rsplit(b")", 1)[1].split()[0] == b"Z"


def _pid(tmp_path: Path, role: str) -> int:
    pid = _report(tmp_path, role)["pid"]
    assert isinstance(pid, int)
    return pid


def _scheduler_pids(tmp_path: Path) -> list[int]:
    """Both schedulers' pids (the active one and the standby share the fake's role)."""
    reports = sorted((tmp_path / "reports").glob("scheduler-*.json"))
    return [json.loads(path.read_text())["pid"] for path in reports]


def test_run_starts_everything_and_ctrl_c_stops_it(
    tmp_path: Path, launcher_env: dict[str, str], amqp_url: str, mongo_url: str
) -> None:
    launcher_env["CORRAL_AMQP_URL"] = amqp_url
    data_dir = tmp_path / "data"
    launcher = Launcher(["--emulator", "--data-dir", str(data_dir)], launcher_env)
    try:
        launcher.wait_for("Corral is running")
        port = launcher_env["CORRAL_GATEWAY_PORT"]
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/ready", timeout=5) as response:
            assert response.status == 200

        emulator = _report(tmp_path, "emulator")
        scheduler_env = _report(tmp_path, "scheduler")["env"]
        store_env = _report(tmp_path, "session_store")["env"]
        gateway_env = _report(tmp_path, "gateway")["env"]
        assert isinstance(emulator["argv"], list)
        emulator_port = emulator["argv"][emulator["argv"].index("--port") + 1]
        for env in (scheduler_env, store_env, gateway_env):
            assert isinstance(env, dict)
            assert env["CORRAL_AMQP_URL"] == amqp_url
            assert env["CORRAL_MONGO_URL"] == mongo_url
            assert env["CORRAL_OLLAMA_URL"] == f"http://127.0.0.1:{emulator_port}"
            assert env["CORRAL_DATA_DIR"] == str(data_dir.resolve())
        assert isinstance(scheduler_env, dict)
        assert isinstance(gateway_env, dict)
        assert "CORRAL_HEALTH_PORT" in scheduler_env
        assert "CORRAL_HEALTH_PORT" not in gateway_env
        assert gateway_env["CORRAL_GATEWAY_PORT"] == port
        for name in ("emulator", "scheduler", "session-store", "gateway"):
            assert (data_dir / "logs" / f"{name}.log").exists()

        roles = ("emulator", "session_store", "gateway")
        pids = [_pid(tmp_path, role) for role in roles] + _scheduler_pids(tmp_path)
        assert len(_scheduler_pids(tmp_path)) == 2, "a standby scheduler runs by default"
        launcher.proc.send_signal(signal.SIGINT)
        code, output = launcher.finish()
    finally:
        launcher.close()
    assert code == 0, output
    assert "Stopped (no restarts)." in output
    assert all(_gone(pid) for pid in pids)
    starts = ("rabbit", "mongo", "emu", "scheduler", "session-store", "gateway")
    lines = [line.split()[0] for line in output.splitlines() if line.startswith(starts)]
    assert lines == [
        "rabbitmq",
        "mongo",
        "emulator",
        "scheduler",
        "session-store",
        "scheduler-standby",
        "gateway",
    ]
    assert "existing broker" in output
    assert "existing server, not managed" in output
    assert not (data_dir / "mongo").exists()


def test_sigterm_stops_everything_and_the_embedded_store_keeps_its_data(
    tmp_path: Path, launcher_env: dict[str, str], amqp_url: str
) -> None:
    launcher_env["CORRAL_AMQP_URL"] = amqp_url
    del launcher_env["CORRAL_MONGO_URL"]
    data_dir = tmp_path / "data"
    launcher = Launcher(["--data-dir", str(data_dir)], launcher_env)
    try:
        launcher.wait_for("Corral is running")
        assert not (tmp_path / "reports" / "emulator.json").exists()
        roles = ("session_store", "gateway")
        pids = [_pid(tmp_path, role) for role in roles] + _scheduler_pids(tmp_path)
        store_env = _report(tmp_path, "session_store")["env"]
        assert isinstance(store_env, dict)
        mongo = store_env["CORRAL_MONGO_URL"]
        assert mongo.startswith("mongodb://127.0.0.1:")
        client: MongoClient[dict[str, object]] = MongoClient(mongo)
        client["corral"]["probe"].insert_one({"_id": "kept"})
        client.close()
        launcher.proc.send_signal(signal.SIGTERM)
        code, output = launcher.finish()
    finally:
        launcher.close()
    assert code == 0, output
    assert all(_gone(pid) for pid in pids)
    assert "embedded SecantusDB" in output
    assert not ping(mongo, timeout=0.3)
    assert (data_dir / "mongo").is_dir()
    assert (data_dir / "logs" / "mongo.log").exists()
    # The data is on disk under the data directory: a new server there finds it.
    with SecantusNode(data_dir / "mongo") as node:
        client = MongoClient(node.url)
        assert client["corral"]["probe"].find_one({"_id": "kept"}) == {"_id": "kept"}
        client.close()


def test_an_unreachable_explicit_mongo_is_an_error(
    tmp_path: Path, launcher_env: dict[str, str], amqp_url: str
) -> None:
    launcher_env["CORRAL_AMQP_URL"] = amqp_url
    launcher_env["CORRAL_MONGO_URL"] = f"mongodb://u:secret@127.0.0.1:{free_port()}/"
    launcher = Launcher(["--data-dir", str(tmp_path / "data")], launcher_env)
    try:
        code, output = launcher.finish()
    finally:
        launcher.close()
    assert code == 1
    assert "CORRAL_MONGO_URL" in output and "is not reachable" in output
    assert "secret" not in output
    assert not (tmp_path / "reports" / "scheduler.json").exists()


def test_a_crashed_service_is_restarted_on_its_port(
    tmp_path: Path, launcher_env: dict[str, str], amqp_url: str
) -> None:
    launcher_env["CORRAL_AMQP_URL"] = amqp_url
    launcher_env["CORRAL_DEV_STANDBY"] = "0"
    launcher = Launcher(["--data-dir", str(tmp_path / "data")], launcher_env)
    port = launcher_env["CORRAL_GATEWAY_PORT"]
    try:
        launcher.wait_for("Corral is running")
        assert len(_scheduler_pids(tmp_path)) == 1, "CORRAL_DEV_STANDBY=0: no standby"
        scheduler = _pid(tmp_path, "scheduler")
        first = _pid(tmp_path, f"gateway-{port}")
        os.kill(first, signal.SIGKILL)
        launcher.wait_for("gateway        exited with -9")
        launcher.wait_for("gateway        ready again")
        second = _pid(tmp_path, f"gateway-{port}")
        assert second != first
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/ready", timeout=5) as response:
            assert response.status == 200
        assert not _gone(scheduler), "the others were left running"
        launcher.proc.send_signal(signal.SIGINT)
        code, output = launcher.finish()
    finally:
        launcher.close()
    assert code == 0, output
    assert f"log tail: {(tmp_path / 'data' / 'logs' / 'gateway.log').resolve()}" in output
    assert "Stopped (1 restart (gateway 1))." in output
    assert _gone(second) and _gone(scheduler)


def test_a_service_that_keeps_crashing_stops_the_stack_with_its_log(
    tmp_path: Path, launcher_env: dict[str, str], amqp_url: str
) -> None:
    crash_file = tmp_path / "crash"
    launcher_env.update(
        CORRAL_AMQP_URL=amqp_url,
        CORRAL_DEV_STANDBY="0",
        CORRAL_DEV_RESTART_BACKOFF_S="0.05",
        CORRAL_DEV_RESTART_LIMIT="3",
        FAKE_CRASH_FILE=str(crash_file),
    )
    launcher = Launcher(["--data-dir", str(tmp_path / "data")], launcher_env)
    try:
        launcher.wait_for("Corral is running")
        gateway = _pid(tmp_path, "gateway")
        crash_file.touch()  # every restart now exits at once with 3
        os.kill(_pid(tmp_path, "session_store"), signal.SIGKILL)
        code, output = launcher.finish()
    finally:
        launcher.close()
    assert code == 1, output
    assert "session-store  exited with -9" in output
    assert "WARNING: keeps crashing: 2 rapid failures in a row (gives up at 3)" in output
    assert "session-store failed 3 times in a row" in output
    assert "fake session_store crashing on purpose" in output, "the log tail is shown"
    assert _gone(gateway)


def test_a_taken_gateway_port_fails_and_stops_what_started(
    tmp_path: Path, launcher_env: dict[str, str], amqp_url: str
) -> None:
    launcher_env["CORRAL_AMQP_URL"] = amqp_url
    import socket

    with socket.socket() as blocker:
        blocker.bind(("127.0.0.1", int(launcher_env["CORRAL_GATEWAY_PORT"])))
        blocker.listen()
        launcher = Launcher(["--data-dir", str(tmp_path / "data")], launcher_env)
        try:
            code, output = launcher.finish()
        finally:
            launcher.close()
    assert code == 1
    assert "already in use" in output
    assert all(_gone(pid) for pid in _scheduler_pids(tmp_path))


def test_an_unreachable_explicit_broker_is_an_error(
    tmp_path: Path, launcher_env: dict[str, str]
) -> None:
    launcher_env["CORRAL_AMQP_URL"] = f"amqp://guest:secret@127.0.0.1:{free_port()}/"
    launcher = Launcher(["--data-dir", str(tmp_path / "data")], launcher_env)
    try:
        code, output = launcher.finish()
    finally:
        launcher.close()
    assert code == 1
    assert "is not reachable" in output
    assert "secret" not in output
    assert not (tmp_path / "data" / "rabbitmq").exists()


def test_choose_broker() -> None:
    up = {"amqp://x/": True, DEFAULT_AMQP_URL: True}
    down: dict[str, bool] = {}

    choice = choose_broker({"CORRAL_AMQP_URL": "amqp://x/"}, up.__getitem__)
    assert (choice.url, choice.start_local_node) == ("amqp://x/", False)
    with pytest.raises(StackError):
        choose_broker({"CORRAL_AMQP_URL": "amqp://x/"}, lambda url: down.get(url, False))
    assert not choose_broker({}, up.__getitem__).start_local_node
    assert choose_broker({}, lambda url: False).start_local_node


def test_helpers() -> None:
    assert redact_url("amqp://guest:guest@h:5672/") == "amqp://guest:***@h:5672/"
    assert redact_url("amqp://h/") == "amqp://h/"
    assert service_name("corral_session_store") == "session-store"
    assert SERVICE_MODULES == (
        "corral_scheduler",
        "corral_model_manager",
        "corral_session_store",
        "corral_gateway",
    )


def test_auth_on_generates_an_admin_key_for_the_gateway_once(
    tmp_path: Path, launcher_env: dict[str, str], amqp_url: str
) -> None:
    launcher_env.update(CORRAL_AMQP_URL=amqp_url, CORRAL_AUTH="on", CORRAL_DEV_STANDBY="0")
    data_dir = tmp_path / "data"
    key_file = data_dir / "admin.key"
    outputs = []
    for _ in range(2):
        launcher = Launcher(["--data-dir", str(data_dir)], launcher_env)
        try:
            launcher.wait_for("Corral is running")
            gateway_env = _report(tmp_path, "gateway")["env"]
            scheduler_env = _report(tmp_path, "scheduler")["env"]
            assert isinstance(gateway_env, dict) and isinstance(scheduler_env, dict)
            assert gateway_env["CORRAL_ADMIN_KEY"] == key_file.read_text().strip()
            assert "CORRAL_ADMIN_KEY" not in scheduler_env, "only the gateway gets it"
            launcher.proc.send_signal(signal.SIGINT)
            code, output = launcher.finish()
        finally:
            launcher.close()
        assert code == 0, output
        outputs.append(output)
    key = key_file.read_text().strip()
    assert key_file.stat().st_mode & 0o777 == 0o600
    first, second = outputs
    assert first.count(key) == 1, "shown once, in the banner"
    assert "/admin/keys" in first
    assert key not in second
    assert f"admin key      {key_file.resolve()}" in second
