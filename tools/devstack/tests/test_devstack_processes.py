from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
import urllib.request
from pathlib import Path

import pytest

from corral_devstack.ports import free_port
from corral_devstack.processes import ServiceError, ServiceProcess

FAKE_SERVICE = Path(__file__).parent / "fake_service.py"


def _service(tmp_path: Path, name: str = "svc", **env: str) -> ServiceProcess:
    port = free_port()
    return ServiceProcess(
        name,
        [sys.executable, str(FAKE_SERVICE), name],
        {"CORRAL_HEALTH_PORT": str(port), **env},
        f"http://127.0.0.1:{port}/ready",
        tmp_path / "logs" / f"{name}.log",
    )


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def test_start_ready_log_and_stop(tmp_path: Path) -> None:
    proc = _service(tmp_path)
    proc.start()
    try:
        proc.wait_ready(timeout=15)
        assert proc.running
        assert proc.returncode is None
        with urllib.request.urlopen(proc.ready_url or "", timeout=5) as response:
            assert response.status == 200
        tail = proc.log_tail(40)
        assert "fake svc listening" in tail
        assert "fake svc stderr line" in tail  # stderr shares the log file
    finally:
        status = proc.stop(timeout=5)
    assert status == -signal.SIGTERM
    assert not proc.running


def test_kill_and_restart(tmp_path: Path) -> None:
    proc = _service(tmp_path)
    with proc:
        proc.wait_ready(timeout=15)
        first_pid = proc.pid
        assert proc.kill() == -signal.SIGKILL
        assert first_pid is not None
        assert not _alive(first_pid)

        proc.restart()
        proc.wait_ready(timeout=15)
        assert proc.pid != first_pid
        assert proc.log_tail(200).count("fake svc listening") == 2
    assert proc.returncode == -signal.SIGTERM


def test_wait_ready_reports_an_early_exit_with_the_log(tmp_path: Path) -> None:
    proc = _service(tmp_path, FAKE_EXIT_CODE="3")
    proc.start()
    with pytest.raises(ServiceError, match="exited with 3") as info:
        proc.wait_ready(timeout=15)
    assert "failing on purpose" in str(info.value)
    assert proc.returncode == 3


def test_wait_ready_times_out_while_not_ready(tmp_path: Path) -> None:
    proc = _service(tmp_path, FAKE_READY_STATUS="503")
    with proc, pytest.raises(ServiceError, match="not ready") as info:
        proc.wait_ready(timeout=1)
    assert "request /ready" in str(info.value)


def test_children_die_with_a_killed_owner(tmp_path: Path) -> None:
    pid_file = tmp_path / "child.pid"
    owner_script = textwrap.dedent(
        f"""
        import sys, time
        from pathlib import Path
        from corral_devstack.processes import ServiceProcess
        proc = ServiceProcess("child", [sys.executable, "-c", "import time; time.sleep(600)"],
                              {{}}, None, Path({str(tmp_path / "child.log")!r}))
        proc.start()
        Path({str(pid_file)!r}).write_text(str(proc.pid))
        print("started", flush=True)
        time.sleep(600)
        """
    )
    owner = subprocess.Popen([sys.executable, "-c", owner_script], stdout=subprocess.PIPE)
    assert owner.stdout is not None
    assert owner.stdout.readline() == b"started\n"
    child_pid = int(pid_file.read_text())
    assert _alive(child_pid)

    owner.kill()
    owner.wait()

    # The orphan is reparented to init (or a subreaper), so it can only be watched via /proc.
    deadline = time.monotonic() + 10
    while _alive(child_pid) and not _is_zombie(child_pid):
        assert time.monotonic() < deadline, "child outlived its SIGKILLed owner"
        time.sleep(0.05)


def _is_zombie(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_bytes()
    except OSError:
        return True
    return stat.rsplit(b")", 1)[1].split()[0] == b"Z"
