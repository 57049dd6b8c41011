"""Start Corral services as real processes for end-to-end tests."""

from __future__ import annotations

import sys
from collections.abc import Mapping
from pathlib import Path

from corral_devstack._managed import Managed
from corral_devstack.ports import free_port
from corral_devstack.processes import ServiceProcess

LOOPBACK = "127.0.0.1"


class Cluster(Managed):
    """Services sharing one broker and one Ollama URL, each with its own free ports and log.

    Logs go to `<workdir>/logs/<name>.log`; `CORRAL_DATA_DIR` is `workdir` unless overridden.
    """

    def __init__(
        self,
        amqp_url: str,
        ollama_url: str,
        workdir: Path,
        extra_env: Mapping[str, str] | None = None,
        *,
        log_level: str = "DEBUG",
        ready_timeout: float = 30,
    ) -> None:
        self.amqp_url = amqp_url
        self.ollama_url = ollama_url
        self.workdir = workdir
        self.extra_env = dict(extra_env or {})
        self.log_level = log_level
        self.ready_timeout = ready_timeout
        self.services: dict[str, ServiceProcess] = {}
        self._gateway_url: str | None = None

    @property
    def gateway_url(self) -> str:
        """Base URL of the most recently started gateway."""
        if self._gateway_url is None:
            raise RuntimeError("no gateway has been started in this cluster")
        return self._gateway_url

    def base_env(self) -> dict[str, str]:
        return {
            "CORRAL_AMQP_URL": self.amqp_url,
            "CORRAL_OLLAMA_URL": self.ollama_url,
            "CORRAL_LOG_LEVEL": self.log_level,
            "CORRAL_DATA_DIR": str(self.workdir),
            **self.extra_env,
        }

    def start_service(
        self,
        module: str,
        name: str,
        env: Mapping[str, str] | None = None,
        ready_url: str | None = None,
        *,
        wait: bool = True,
    ) -> ServiceProcess:
        """Run `python -m <module>` with the cluster env plus `env`; wait until ready if asked."""
        existing = self.services.get(name)
        if existing is not None and existing.running:
            raise RuntimeError(f"a service named {name!r} is already running")
        proc = ServiceProcess(
            name,
            [sys.executable, "-m", module],
            {**self.base_env(), **(env or {})},
            ready_url,
            self.workdir / "logs" / f"{name}.log",
        )
        self.services[name] = proc
        proc.start()
        if wait:
            proc.wait_ready(self.ready_timeout)
        return proc

    def start_health_service(
        self, module: str, name: str, *, wait: bool = True, **env: str | int
    ) -> ServiceProcess:
        """A service whose readiness is served on its own `CORRAL_HEALTH_PORT`."""
        health = free_port(LOOPBACK)
        return self.start_service(
            module,
            name,
            {"CORRAL_HEALTH_PORT": str(health), **_strs(env)},
            f"http://{LOOPBACK}:{health}/ready",
            wait=wait,
        )

    def start_scheduler(
        self, name: str = "scheduler", *, wait: bool = True, **env: str | int
    ) -> ServiceProcess:
        return self.start_health_service("corral_scheduler", name, wait=wait, **env)

    def start_gateway(
        self, name: str = "gateway", *, wait: bool = True, **env: str | int
    ) -> ServiceProcess:
        port = free_port(LOOPBACK)
        gateway_env = {
            "CORRAL_GATEWAY_HOST": LOOPBACK,
            "CORRAL_GATEWAY_PORT": str(port),
            "CORRAL_HEALTH_PORT": str(free_port(LOOPBACK)),
            **_strs(env),
        }
        url = f"http://{gateway_env['CORRAL_GATEWAY_HOST']}:{gateway_env['CORRAL_GATEWAY_PORT']}"
        proc = self.start_service("corral_gateway", name, gateway_env, f"{url}/ready", wait=wait)
        self._gateway_url = url
        return proc

    def kill(self, name: str) -> int | None:
        """SIGKILL a service, as a crash would; returns its exit status."""
        return self.services[name].kill()

    def revive(self, name: str, *, wait: bool = True) -> ServiceProcess:
        """Start a crashed or stopped service again with the same command and env, so on the same
        ports (as `make run`'s supervisor does); a no-op for one that is running."""
        proc = self.services[name]
        if not proc.running:
            proc.start()
        if wait:
            proc.wait_ready(self.ready_timeout)
        return proc

    def start(self) -> None:
        """Services are started one by one (`start_scheduler`, ...); `with` only stops them."""

    def close(self) -> None:
        self.stop_all()

    def stop_all(self, timeout: float = 10) -> None:
        """Stop every service, most recently started first."""
        for proc in reversed(list(self.services.values())):
            proc.stop(timeout)


def _strs(env: Mapping[str, str | int]) -> dict[str, str]:
    return {key: str(value) for key, value in env.items()}
