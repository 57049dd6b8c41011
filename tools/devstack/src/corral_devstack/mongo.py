"""A MongoDB-protocol server for tests and `make run`: SecantusDB as a process of its own.

SecantusDB (PyPI `secantusdb`, pinned exactly in this package's dependencies) is GPL-2.0-only, so
Corral never imports it: it is only ever started as the separate `secantusd-py` server process,
and spoken to over the MongoDB wire protocol like any other MongoDB. What it lacks (`$text`:
search is an escaped `$regex`) and how the store lives with that is in docs/session-store.md.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from pymongo import MongoClient
from pymongo.errors import PyMongoError

from corral_devstack._managed import Managed
from corral_devstack._spawn import spawn, tail, terminate_group
from corral_devstack.ports import free_port, port_is_free

MEMORY = ":memory:"


class MongoError(RuntimeError):
    """The embedded server could not be found, started or stopped."""


def secantusd_command() -> str:
    """The `secantusd-py` launcher: beside this interpreter (a venv's bin/), else on PATH."""
    beside = Path(sys.executable).with_name("secantusd-py")
    if beside.exists():
        return str(beside)
    found = shutil.which("secantusd-py")
    if found is None:
        raise MongoError(
            "secantusd-py was not found; install the pinned `secantusdb` package "
            "(`uv sync --all-packages`) or set CORRAL_MONGO_URL to a running MongoDB"
        )
    return found


def ping(url: str, timeout: float = 1.0) -> bool:
    """True if a MongoDB server at `url` answers `ping` within `timeout` seconds."""
    ms = max(int(timeout * 1000), 1)
    client: MongoClient[dict[str, object]] = MongoClient(
        url, serverSelectionTimeoutMS=ms, connectTimeoutMS=ms, socketTimeoutMS=ms
    )
    try:
        client.admin.command("ping")
        return True
    except PyMongoError:
        return False
    finally:
        client.close()


class SecantusNode(Managed):
    """One `secantusd-py` server on a free loopback port.

    `storage_path=None` (or ":memory:") gives an ephemeral store SecantusDB deletes on shutdown;
    a directory keeps the data across restarts of this node (or of a new node on that directory).
    The server's console output goes to `log_path` (by default beside the data, or in a temp
    directory for an in-memory store).
    """

    def __init__(
        self,
        storage_path: Path | None = None,
        *,
        host: str = "127.0.0.1",
        log_path: Path | None = None,
    ) -> None:
        self.storage_path = storage_path.resolve() if storage_path is not None else None
        self.host = host
        self._tmp: Path | None = None
        if log_path is None:
            if self.storage_path is None:
                self._tmp = Path(tempfile.mkdtemp(prefix="corral-secantus-"))
                log_path = self._tmp / "secantusd.log"
            else:
                log_path = self.storage_path.parent / f"{self.storage_path.name}.log"
        self.log_path = log_path
        self._port: int | None = None
        self._proc: subprocess.Popen[bytes] | None = None
        self._lock = threading.RLock()

    @property
    def port(self) -> int:
        if self._port is None:
            raise MongoError("the server has no port until it is first started")
        return self._port

    @property
    def url(self) -> str:
        return f"mongodb://{self.host}:{self.port}/"

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    @property
    def returncode(self) -> int | None:
        """The exit status of a server that ended on its own (a crash); None while it runs and
        after `stop()`, which forgets the process."""
        return None if self._proc is None else self._proc.poll()

    @property
    def pid(self) -> int | None:
        return None if self._proc is None else self._proc.pid

    def start(self, timeout: float = 30) -> None:
        """Start the server and return once it answers `ping`. A restart keeps the port (and so
        the URL clients hold) while that port is free."""
        with self._lock:
            if self.running:
                return
            command = secantusd_command()
            storage = MEMORY
            if self.storage_path is not None:
                self.storage_path.mkdir(parents=True, exist_ok=True)
                storage = str(self.storage_path)
            self.log_path.parent.mkdir(parents=True, exist_ok=True)
            # An empty config file: `--config` turns off the auto-discovery of a stray
            # ./secantusd.toml or ~/.secantus/secantusd.toml that could change the server.
            config = self.log_path.parent / "secantusd-empty.toml"
            config.write_text("")
            if self._port is None or not port_is_free(self._port, self.host):
                self._port = free_port(self.host)
            argv = [
                command,
                "--config",
                str(config),
                "--host",
                self.host,
                "--port",
                str(self._port),
                "--storage-path",
                storage,
                "--log-level",
                "WARNING",
            ]
            with self.log_path.open("ab") as out:
                out.write(f"--- {time.strftime('%H:%M:%S')} starting {argv}\n".encode())
                out.flush()
                self._proc = spawn(argv, env=_env(), stdout=out)
            _running.add(self)
            try:
                self._wait_ready(timeout)
            except BaseException:
                self.stop()
                raise

    def stop(self, timeout: float = 15) -> None:
        """SIGTERM (SecantusDB closes WiredTiger cleanly), SIGKILL after `timeout`."""
        with self._lock:
            if self._proc is not None:
                terminate_group(self._proc, timeout)
            self._proc = None
            _running.discard(self)

    def close(self) -> None:
        """Stop, and remove the temporary directory this object made (never `storage_path`)."""
        self.stop()
        if self._tmp is not None:
            shutil.rmtree(self._tmp, ignore_errors=True)

    def restart(self, timeout: float = 30) -> None:
        self.stop()
        self.start(timeout)

    def log_tail(self, n: int = 40) -> str:
        return tail(self.log_path, n)

    def _wait_ready(self, timeout: float) -> None:
        assert self._proc is not None
        deadline = time.monotonic() + timeout
        while True:
            if self._proc.poll() is not None:
                raise MongoError(
                    f"secantusd-py exited with {self._proc.returncode} while starting; "
                    f"last lines of {self.log_path}:\n{self.log_tail()}"
                )
            if ping(self.url, timeout=0.5):
                return
            if time.monotonic() > deadline:
                raise MongoError(
                    f"secantusd-py did not answer on {self.url} within {timeout}s; "
                    f"last lines of {self.log_path}:\n{self.log_tail()}"
                )
            time.sleep(0.05)

    def __repr__(self) -> str:
        where = f"port={self._port}" if self._port else "not started"
        return f"SecantusNode({where}, storage={self.storage_path or MEMORY!r})"


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env.setdefault("PYTHONUNBUFFERED", "1")
    return env


_running: set[SecantusNode] = set()


@atexit.register
def _stop_running() -> None:
    for node in list(_running):
        with contextlib.suppress(Exception):
            node.close()
