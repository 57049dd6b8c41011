"""Throwaway RabbitMQ nodes on free loopback ports, for tests and `make run` without a broker."""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import json
import os
import shutil
import signal
import subprocess
import tempfile
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from urllib.parse import urlsplit

import aio_pika

from corral_devstack._managed import Managed
from corral_devstack._signals import sigterm_interrupts
from corral_devstack._spawn import spawn, tail, terminate_group
from corral_devstack.ports import free_port, port_is_free

RABBITMQ_BIN = Path("/usr/lib/rabbitmq/bin")
# The node script, not /usr/sbin/rabbitmq-server: that wrapper forces default paths and can
# leave an epmd listening on 0.0.0.0:4369.
RABBITMQ_SERVER = RABBITMQ_BIN / "rabbitmq-server"
RABBITMQCTL = RABBITMQ_BIN / "rabbitmqctl"
DIST_PORT_OFFSET = 20000
_MAX_PORT = 65535


class RabbitMQError(RuntimeError):
    """A throwaway node could not be installed, started or stopped."""


def ensure_rabbitmq_installed() -> None:
    """Install the Debian `rabbitmq-server` package if its node script is missing."""
    if RABBITMQ_SERVER.exists():
        return
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    try:
        subprocess.run(["apt-get", "update"], env=env, check=False)
        subprocess.run(["apt-get", "install", "-y", "rabbitmq-server"], env=env, check=False)
    except FileNotFoundError as exc:
        raise RabbitMQError(
            f"{RABBITMQ_SERVER} is missing and apt-get is not available to install "
            "rabbitmq-server; install RabbitMQ or set CORRAL_AMQP_URL to a running broker"
        ) from exc
    if not RABBITMQ_SERVER.exists():
        raise RabbitMQError(
            f"{RABBITMQ_SERVER} is still missing after `apt-get install -y rabbitmq-server` "
            "(are you root on Debian/Ubuntu?); install RabbitMQ or set CORRAL_AMQP_URL "
            "to a running broker"
        )


async def _probe_amqp(url: str, limit: float) -> bool:
    """True if a full AMQP connection opens within `limit` seconds."""
    parts = urlsplit(url)
    default_port = 5671 if parts.scheme == "amqps" else 5672
    # A plain TCP probe first: aiormq logs a warning for every refused connection, which
    # would be noise in the common "no broker here" case.
    try:
        _, writer = await asyncio.wait_for(
            asyncio.open_connection(parts.hostname or "localhost", parts.port or default_port),
            limit,
        )
    except (TimeoutError, OSError):
        return False
    writer.close()
    with contextlib.suppress(OSError):
        await writer.wait_closed()
    try:
        connection = await asyncio.wait_for(aio_pika.connect(url, timeout=limit), limit)
    except Exception:
        # Refused sockets, timeouts, bad logins and protocol errors all surface through
        # different aiormq/aio-pika types; any of them means "not usable".
        return False
    await connection.close()
    return True


def amqp_reachable(url: str, timeout: float = 2.0) -> bool:
    """True if a full AMQP connection (credentials and vhost included) opens within `timeout`.

    Synchronous, and usable even while an event loop runs in the calling thread.
    """
    result: list[bool] = []
    # A private thread gets its own event loop, so callers inside a loop do not deadlock.
    worker = threading.Thread(
        target=lambda: result.append(asyncio.run(_probe_amqp(url, timeout))),
        name="amqp-reachable",
        daemon=True,
    )
    worker.start()
    worker.join(timeout + 5)
    return bool(result and result[0])


@dataclass(frozen=True)
class _Ports:
    amqp: int
    dist: int
    epmd: int

    @classmethod
    def allocate(cls, host: str) -> _Ports:
        # The recipe puts the distribution port at amqp + 20000, so only AMQP ports low enough
        # for that (and with that partner port free) qualify; the OS hands out ~45% such ports.
        for _ in range(500):
            amqp = free_port(host)
            dist = amqp + DIST_PORT_OFFSET
            if dist > _MAX_PORT or not port_is_free(dist, host):
                continue
            epmd = free_port(host)
            if epmd not in (amqp, dist):
                return cls(amqp, dist, epmd)
        raise RabbitMQError("could not find free loopback ports for a RabbitMQ node")

    def all_free(self, host: str) -> bool:
        return all(port_is_free(p, host) for p in (self.amqp, self.dist, self.epmd))


class RabbitNode(Managed):
    """A RabbitMQ node with its own ports, epmd and data directory.

    With `base_dir=None` the node lives in a fresh temporary directory that `close()` removes.
    With a `base_dir`, the ports are remembered there so a later node in the same directory
    reuses them (and thus its data, which RabbitMQ keys by node name), and a node left running
    there by a crashed owner is stopped first. `plugins` are enabled at boot (none by default:
    a plugin costs start time), `config` lines go into its rabbitmq.conf.
    """

    def __init__(
        self,
        base_dir: Path | None = None,
        *,
        config: Mapping[str, str] | None = None,
        plugins: Sequence[str] = (),
        host: str = "127.0.0.1",
    ) -> None:
        self._owns_dir = base_dir is None
        self._plugins = tuple(plugins)
        self.base_dir = (
            Path(tempfile.mkdtemp(prefix="corral-rabbitmq-")) if base_dir is None else base_dir
        ).resolve()
        self.host = host
        self._config = dict(config or {})
        self._ports: _Ports | None = None
        self._proc: subprocess.Popen[bytes] | None = None
        self._lock = threading.RLock()

    # -- public API -------------------------------------------------------------------------

    @property
    def port(self) -> int:
        return self._require_ports().amqp

    @property
    def epmd_port(self) -> int:
        return self._require_ports().epmd

    @property
    def dist_port(self) -> int:
        return self._require_ports().dist

    @property
    def nodename(self) -> str:
        return f"corral{self.port}@localhost"

    @property
    def url(self) -> str:
        return f"amqp://guest:guest@{self.host}:{self.port}/"

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    @property
    def pid(self) -> int | None:
        """The node's launcher process, leader of the group the node runs in."""
        return None if self._proc is None else self._proc.pid

    @property
    def returncode(self) -> int | None:
        """The exit status of a server that ended on its own (a crash); None while it runs and
        after `stop()`, which forgets the process."""
        return None if self._proc is None else self._proc.poll()

    @property
    def pid_file(self) -> Path:
        return self.base_dir / "rabbit.pid"

    @property
    def log_dir(self) -> Path:
        return self.base_dir / "log"

    def start(self, timeout: float = 60) -> None:
        """Start the node in the background and return once it accepts AMQP connections."""
        with self._lock:
            if self.running:
                return
            ensure_rabbitmq_installed()
            try:
                self._prepare()
                out = (self.log_dir / "server.out").open("ab")
                try:
                    self._proc = spawn(
                        [str(RABBITMQ_SERVER)], env=self._env(), stdout=out, cwd=self.base_dir
                    )
                finally:
                    out.close()
                _running_nodes.add(self)
                self._wait_started(timeout)
            except BaseException:
                # Also on Ctrl-C mid-start: never leave a half-booted node or its epmd behind.
                self._teardown()
                raise
            sigterm_interrupts()

    def stop(self, timeout: float = 30) -> None:
        """Stop the node gracefully, then make sure none of its processes (epmd included) remain."""
        with self._lock:
            try:
                if self.running and self.pid_file.exists():
                    # A node that will not stop politely is killed by the teardown below.
                    with contextlib.suppress(RabbitMQError):
                        self._ctl("stop", str(self.pid_file), timeout=timeout)
                if self._proc is not None:
                    with contextlib.suppress(subprocess.TimeoutExpired):
                        self._proc.wait(timeout=timeout)
            finally:
                self._teardown()

    def restart(self, timeout: float = 60) -> None:
        """Stop and start again on the same ports with the same data."""
        self.stop()
        self.start(timeout)

    def close(self) -> None:
        """Stop the node and remove its directory if this object created it."""
        self.stop()
        if self._owns_dir:
            shutil.rmtree(self.base_dir, ignore_errors=True)

    def leftover_pids(self) -> list[int]:
        """Pids of any process started for this node: beam, its helpers, its epmd, CLI tools."""
        if self._ports is None:
            return []
        markers = (
            f"RABBITMQ_NODENAME={self.nodename}".encode(),
            f"ERL_EPMD_PORT={self._ports.epmd}".encode(),
        )
        return _pids_with_env(markers)

    def log_tail(self, n: int = 40) -> str:
        """The last lines of the node's own log and of its console output."""
        parts = []
        if self._ports is not None:
            parts.append(tail(self.log_dir / f"{self.nodename}.log", n))
        parts.append(tail(self.log_dir / "server.out", n))
        return "\n".join(p for p in parts if p)

    def __repr__(self) -> str:
        where = f"port={self._ports.amqp}" if self._ports else "not started"
        return f"RabbitNode({where}, base_dir={str(self.base_dir)!r})"

    # -- internals --------------------------------------------------------------------------

    def _require_ports(self) -> _Ports:
        if self._ports is None:
            raise RabbitMQError("the node has no ports until it is first started")
        return self._ports

    def _prepare(self) -> None:
        for sub in ("home", "mnesia", "log"):
            (self.base_dir / sub).mkdir(parents=True, exist_ok=True)
        if self._ports is None:
            self._ports = self._load_or_allocate_ports()
        lines = [
            f"listeners.tcp.1 = {self.host}:{self._ports.amqp}",
            "log.console = false",
            *(f"{key} = {value}" for key, value in self._config.items()),
        ]
        (self.base_dir / "rabbitmq.conf").write_text("\n".join(lines) + "\n")
        (self.base_dir / "enabled_plugins").write_text(f"[{','.join(self._plugins)}].\n")
        self.pid_file.unlink(missing_ok=True)

    def _load_or_allocate_ports(self) -> _Ports:
        state = self.base_dir / "ports.json"
        if state.exists():
            with contextlib.suppress(ValueError, TypeError, KeyError):
                saved = _Ports(**json.loads(state.read_text()))
                self._ports = saved
                self._reap_stale()
                if saved.all_free(self.host):
                    return saved
        ports = _Ports.allocate(self.host)
        state.write_text(json.dumps(asdict(ports)))
        return ports

    def _reap_stale(self) -> None:
        """Stop a node a previous, crashed owner left running in this directory."""
        if not self.leftover_pids():
            return
        if self.pid_file.exists():
            with contextlib.suppress(RabbitMQError):
                self._ctl("stop", str(self.pid_file), timeout=30)
        self._kill_epmd()
        self._kill_leftovers()

    def add_vhost(self, name: str, timeout: float = 30) -> str:
        """Create a virtual host guest can use, and return its AMQP URL: tests that run a whole
        cluster each get one, so their queues (the shared jobs queue above all) never meet."""
        self._ctl("add_vhost", name, timeout=timeout)
        self._ctl("set_permissions", "-p", name, "guest", ".*", ".*", ".*", timeout=timeout)
        return f"{self.url.rstrip('/')}/{name}"

    def _env(self) -> dict[str, str]:
        ports = self._require_ports()
        d = self.base_dir
        # Inherited RABBITMQ_*/ERL_* settings would point the node at shared system paths.
        env = {
            k: v
            for k, v in os.environ.items()
            if not k.startswith(("RABBITMQ_", "ERL_", "ERLANG_"))
        }
        env.setdefault("LC_ALL", "C.UTF-8")
        env.update(
            {
                "HOME": str(d / "home"),
                "RABBITMQ_CONF_ENV_FILE": "/dev/null",
                "RABBITMQ_NODENAME": f"corral{ports.amqp}@localhost",
                "RABBITMQ_NODE_IP_ADDRESS": self.host,
                "RABBITMQ_NODE_PORT": str(ports.amqp),
                "RABBITMQ_DIST_PORT": str(ports.dist),
                "RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS": (
                    "-kernel inet_dist_use_interface {127,0,0,1}"
                ),
                "ERL_EPMD_ADDRESS": "127.0.0.1",
                "ERL_EPMD_PORT": str(ports.epmd),
                "RABBITMQ_CONFIG_FILE": str(d / "rabbitmq.conf"),
                "RABBITMQ_ENABLED_PLUGINS_FILE": str(d / "enabled_plugins"),
                "RABBITMQ_MNESIA_BASE": str(d / "mnesia"),
                "RABBITMQ_LOG_BASE": str(self.log_dir),
                "RABBITMQ_PID_FILE": str(self.pid_file),
                "RABBITMQ_PLUGINS_EXPAND_DIR": str(d / "plugins-expand"),
            }
        )
        return env

    def _ctl(self, *args: str, timeout: float) -> str:
        """Run rabbitmqctl against this node; its own session keeps a second Ctrl-C off it."""
        out_path = self.log_dir / "ctl.out"
        with out_path.open("ab") as out:
            proc = spawn([str(RABBITMQCTL), *args], env=self._env(), stdout=out)
        try:
            rc = proc.wait(timeout=timeout)
        except BaseException:
            terminate_group(proc, 2)
            raise
        if rc != 0:
            raise RabbitMQError(
                f"rabbitmqctl {' '.join(args)} failed with {rc}:\n{tail(out_path, 20)}"
            )
        return tail(out_path, 20)

    def _wait_started(self, timeout: float) -> None:
        assert self._proc is not None
        out_path = self.log_dir / "ctl.out"
        with out_path.open("ab") as out:
            waiter = spawn(
                [str(RABBITMQCTL), "wait", "--timeout", str(int(timeout)), str(self.pid_file)],
                env=self._env(),
                stdout=out,
            )
        # `rabbitmqctl wait` would sit out its whole timeout if the server died before writing
        # its pid file (a port clash, say), so watch both processes.
        deadline = time.monotonic() + timeout + 15
        try:
            while True:
                try:
                    rc = waiter.wait(timeout=0.1)
                    break
                except subprocess.TimeoutExpired:
                    pass
                server_rc = self._proc.poll()
                if server_rc is not None:
                    raise RabbitMQError(
                        f"RabbitMQ node {self.nodename} exited with {server_rc} while starting:\n"
                        f"{self.log_tail()}"
                    )
                if time.monotonic() > deadline:
                    raise RabbitMQError(
                        f"RabbitMQ node {self.nodename} did not start within {timeout}s:\n"
                        f"{self.log_tail()}"
                    )
        finally:
            terminate_group(waiter, 2)
        if rc != 0:
            raise RabbitMQError(
                f"RabbitMQ node {self.nodename} did not start (rabbitmqctl wait exited {rc}):\n"
                f"{tail(out_path, 20)}\n{self.log_tail()}"
            )

    def _teardown(self) -> None:
        """Whatever state the node is in, leave no process of it behind."""
        try:
            if self._proc is not None:
                terminate_group(self._proc, 10)
            if self._ports is not None:
                self._kill_epmd()
                self._kill_leftovers()
        finally:
            self._proc = None
            self.pid_file.unlink(missing_ok=True)
            _running_nodes.discard(self)

    def _kill_epmd(self) -> None:
        # The node's epmd daemonizes out of the node's process group and outlives the node.
        epmd = shutil.which("epmd") or "/usr/lib/erlang/bin/epmd"
        env = {**self._env(), "ERL_EPMD_PORT": str(self.epmd_port)}
        with contextlib.suppress(OSError, subprocess.SubprocessError):
            subprocess.run(
                [epmd, "-port", str(self.epmd_port), "-kill"],
                env=env,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
                timeout=10,
                check=False,
            )

    def _kill_leftovers(self) -> None:
        # Helpers of a stopped node exit on their own within moments; anything still there
        # after a grace period is stuck and gets SIGKILL.
        if self._no_leftovers_within(5):
            return
        for pid in self.leftover_pids():
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, signal.SIGKILL)
        if not self._no_leftovers_within(5):
            raise RabbitMQError(
                f"processes of {self.nodename} survived SIGKILL: {self.leftover_pids()}"
            )

    def _no_leftovers_within(self, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while self.leftover_pids():
            if time.monotonic() > deadline:
                return False
            time.sleep(0.05)
        return True


def _pids_with_env(markers: tuple[bytes, ...]) -> list[int]:
    """Pids of live (non-zombie) processes whose environment contains any of `markers`."""
    found = []
    own = os.getpid()
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit() or int(entry.name) == own:
            continue
        try:
            with open(f"/proc/{entry.name}/stat", "rb") as fh:
                if fh.read().rsplit(b")", 1)[1].split()[0] == b"Z":
                    continue
            with open(f"/proc/{entry.name}/environ", "rb") as fh:
                env = fh.read().split(b"\0")
        except (OSError, IndexError):
            continue
        if any(marker in env for marker in markers):
            found.append(int(entry.name))
    return found


_running_nodes: set[RabbitNode] = set()


@atexit.register
def _stop_running_nodes() -> None:
    for node in list(_running_nodes):
        with contextlib.suppress(Exception):
            node.close()
