"""Corral services (or any command) run as real OS processes with a log file and a readiness URL."""

from __future__ import annotations

import contextlib
import http.client
import os
import signal
import subprocess
import time
import urllib.request
from collections.abc import Mapping, Sequence
from pathlib import Path

from corral_devstack._managed import Managed
from corral_devstack._spawn import signal_group, spawn, tail, terminate_group

# Loopback readiness probes must never go through an HTTP proxy taken from the environment.
_opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))


class ServiceError(RuntimeError):
    """A service process exited early or did not become ready in time."""


class ServiceProcess(Managed):
    """One service process: stdout and stderr go to `log_path`, in its own process group.

    `env` is laid over the current environment (pass `inherit_env=False` to use it alone).
    """

    def __init__(
        self,
        name: str,
        argv: Sequence[str],
        env: Mapping[str, str],
        ready_url: str | None,
        log_path: Path,
        *,
        inherit_env: bool = True,
    ) -> None:
        self.name = name
        self.argv = list(argv)
        self.env = dict(env)
        self.ready_url = ready_url
        self.log_path = log_path
        self._inherit_env = inherit_env
        self._proc: subprocess.Popen[bytes] | None = None

    @property
    def pid(self) -> int | None:
        return None if self._proc is None else self._proc.pid

    @property
    def returncode(self) -> int | None:
        """The exit status once the process has ended (negative: killed by that signal)."""
        return None if self._proc is None else self._proc.poll()

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def start(self) -> None:
        """Launch the process; a no-op if it is already running."""
        if self.running:
            return
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        env = {**os.environ, **self.env} if self._inherit_env else dict(self.env)
        # Without this a Python service's log lines sit in a buffer while tests read the file.
        env.setdefault("PYTHONUNBUFFERED", "1")
        with self.log_path.open("ab") as log:
            log.write(f"--- {time.strftime('%H:%M:%S')} starting {self.name}\n".encode())
            log.flush()
            self._proc = spawn(self.argv, env=env, stdout=log)

    def wait_ready(self, timeout: float = 30) -> None:
        """Return once `ready_url` answers 200; raise ServiceError if the process dies first."""
        proc = self._require_proc()
        deadline = time.monotonic() + timeout
        while True:
            if proc.poll() is not None:
                raise ServiceError(
                    f"{self.name} exited with {proc.returncode} before it was ready; "
                    f"last lines of {self.log_path}:\n{self.log_tail(40)}"
                )
            if self.ready_url is None or self._probe(self.ready_url):
                return
            if time.monotonic() > deadline:
                raise ServiceError(
                    f"{self.name} was not ready at {self.ready_url} within {timeout}s; "
                    f"last lines of {self.log_path}:\n{self.log_tail(40)}"
                )
            time.sleep(0.05)

    def probe_ready(self) -> bool:
        """One quick look: running, and `ready_url` (if any) answers 200 right now."""
        if not self.running:
            return False
        return self.ready_url is None or self._probe(self.ready_url)

    def close(self) -> None:
        self.stop()

    def stop(self, timeout: float = 10) -> int | None:
        """SIGTERM, then SIGKILL after `timeout`; returns the exit status."""
        if self._proc is None:
            return None
        terminate_group(self._proc, timeout)
        return self._proc.returncode

    def kill(self) -> int | None:
        """SIGKILL at once, as a crash would; returns the exit status."""
        if self._proc is None:
            return None
        signal_group(self._proc, signal.SIGKILL)
        return self._proc.wait()

    def restart(self, timeout: float = 10) -> None:
        self.stop(timeout)
        self.start()

    def log_tail(self, n: int = 40) -> str:
        return tail(self.log_path, n)

    def __repr__(self) -> str:
        return f"ServiceProcess({self.name!r}, pid={self.pid}, returncode={self.returncode})"

    def _require_proc(self) -> subprocess.Popen[bytes]:
        if self._proc is None:
            raise ServiceError(f"{self.name} has not been started")
        return self._proc

    @staticmethod
    def _probe(url: str) -> bool:
        with (
            contextlib.suppress(OSError, http.client.HTTPException, ValueError),
            _opener.open(url, timeout=1) as response,
        ):
            return bool(response.status == 200)
        return False
