"""`make run`: the whole cluster on this machine, in the foreground, until Ctrl-C."""

from __future__ import annotations

import contextlib
import http.client
import os
import signal
import sys
import threading
import urllib.request
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from enum import Enum
from pathlib import Path
from typing import Final, TextIO

from corral_common.redaction import redact_url as redact
from corral_devstack import admin_key, embedded_model
from corral_devstack.admin_key import AdminKey, AdminKeyError
from corral_devstack.embedded_model import EmbeddedModelError, Installation
from corral_devstack.mongo import MongoError, SecantusNode, ping
from corral_devstack.ports import free_port, port_is_free
from corral_devstack.processes import ServiceError, ServiceProcess
from corral_devstack.rabbitmq import RabbitMQError, RabbitNode, amqp_reachable
from corral_devstack.supervisor import (
    GaveUp,
    NodeChild,
    RestartPolicy,
    ServiceChild,
    Supervisor,
    standby_requested,
)

# Started in this order, stopped in reverse.
SERVICE_MODULES: Final[tuple[str, ...]] = (
    "corral_scheduler",
    "corral_model_manager",
    "corral_session_store",
    "corral_gateway",
)
GATEWAY_MODULE: Final = "corral_gateway"
SCHEDULER_MODULE: Final = "corral_scheduler"
# The hot standby on the jobs queue's single-active-consumer slot: when the active scheduler
# dies, the standby takes over its queued jobs at once, and the restarted one becomes the standby.
STANDBY_NAME: Final = "scheduler-standby"
EMULATOR_MODULE: Final = "corral_emulator"
EMBEDDED_MODEL_NAME: Final = "embedded-model"
DEFAULT_AMQP_URL: Final = "amqp://guest:guest@127.0.0.1:5672/"
DEFAULT_OLLAMA_URL: Final = "http://127.0.0.1:11434"
LOOPBACK: Final = "127.0.0.1"
_TRUTHY: Final = frozenset({"1", "true", "yes", "on"})


# Loopback probes must never go through an HTTP proxy taken from the environment.
_opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))


class StackError(RuntimeError):
    """The cluster could not be started."""


def service_name(module: str) -> str:
    """`corral_session_store` -> `session-store`."""
    return module.removeprefix("corral_").replace("_", "-")


def default_data_dir(environ: Mapping[str, str]) -> Path:
    return Path(environ.get("CORRAL_DATA_DIR") or ".corral")


def emulator_requested(environ: Mapping[str, str]) -> bool:
    return environ.get("CORRAL_DEV_EMULATOR", "").strip().lower() in _TRUTHY


def model_fallback_requested(environ: Mapping[str, str]) -> bool:
    """`CORRAL_DEV_EMBEDDED_MODEL` (`make run` sets it to `auto` unless given): serve the
    embedded model when no backend answers. Off for `python -m corral_devstack run` alone."""
    raw = environ.get("CORRAL_DEV_EMBEDDED_MODEL", "").strip().lower()
    return raw == "auto" or raw in _TRUTHY


class Backend(Enum):
    EMULATOR = "emulator"
    CONFIGURED = "configured"
    """`CORRAL_BACKEND_KIND` or `CORRAL_BACKENDS` set: used as configured, never replaced."""
    OLLAMA = "ollama"
    """Something answers at `CORRAL_OLLAMA_URL`."""
    EMBEDDED = "embedded"
    UNCHECKED = "unchecked"
    """No fallback asked for: the cluster fronts `CORRAL_OLLAMA_URL`, whatever is there."""


@dataclass(frozen=True)
class BackendChoice:
    backend: Backend
    ollama_url: str


def ollama_answers(url: str) -> bool:
    """An Ollama (or anything serving its `/api/version`) answers at `url` right now."""
    with (
        contextlib.suppress(OSError, http.client.HTTPException, ValueError),
        _opener.open(f"{url.rstrip('/')}/api/version", timeout=2) as response,
    ):
        return bool(response.status == 200)
    return False


def choose_backend(
    environ: Mapping[str, str],
    *,
    emulator: bool,
    fallback: bool,
    answers: Callable[[str], bool] = ollama_answers,
) -> BackendChoice:
    """What the cluster talks to: the emulator when asked; a configured backend as configured;
    else the Ollama at `CORRAL_BACKEND_URL` (or `CORRAL_OLLAMA_URL`) when it answers, and the
    embedded model when it does not (if the fallback is on: `make run`)."""
    url = (
        environ.get("CORRAL_BACKEND_URL", "").strip()
        or environ.get("CORRAL_OLLAMA_URL", "").strip()
        or DEFAULT_OLLAMA_URL
    )
    if emulator:
        return BackendChoice(Backend.EMULATOR, url)
    if environ.get("CORRAL_BACKEND_KIND", "").strip() or environ.get("CORRAL_BACKENDS", "").strip():
        return BackendChoice(Backend.CONFIGURED, url)
    if not fallback:
        return BackendChoice(Backend.UNCHECKED, url)
    if answers(url):
        return BackendChoice(Backend.OLLAMA, url)
    return BackendChoice(Backend.EMBEDDED, url)


@dataclass(frozen=True)
class BrokerChoice:
    url: str
    start_local_node: bool


def choose_broker(
    environ: Mapping[str, str], reachable: Callable[[str], bool] = amqp_reachable
) -> BrokerChoice:
    """Use the configured broker; start a local node only if the *default* one is not there."""
    explicit = environ.get("CORRAL_AMQP_URL")
    if explicit:
        if not reachable(explicit):
            raise StackError(
                f"CORRAL_AMQP_URL={redact(explicit)} is not reachable; start that broker or "
                "unset CORRAL_AMQP_URL to get a local RabbitMQ node"
            )
        return BrokerChoice(explicit, start_local_node=False)
    if reachable(DEFAULT_AMQP_URL):
        return BrokerChoice(DEFAULT_AMQP_URL, start_local_node=False)
    return BrokerChoice(DEFAULT_AMQP_URL, start_local_node=True)


class Stack:
    """Everything `make run` starts; `stop()` undoes exactly that, newest first.

    Everything it starts is also handed to `supervisor`, which restarts a crashed process (a
    service, the emulator, the embedded store, the local RabbitMQ node) on the same ports; the
    caller drives it (`run()` loops over `supervisor.poll()`).
    """

    def __init__(
        self,
        data_dir: Path,
        *,
        emulator: bool = False,
        model_fallback: bool = False,
        environ: Mapping[str, str] | None = None,
        modules: Sequence[str] = SERVICE_MODULES,
        out: TextIO | None = None,
        err: TextIO | None = None,
        standby: bool | None = None,
        policy: RestartPolicy | None = None,
    ) -> None:
        self.data_dir = data_dir.resolve()
        self.emulator = emulator
        self.model_fallback = model_fallback
        self.environ = dict(os.environ if environ is None else environ)
        self.modules = tuple(modules)
        self.out = out if out is not None else sys.stdout
        self.standby = standby_requested(self.environ) if standby is None else standby
        self.supervisor = Supervisor(
            policy if policy is not None else RestartPolicy.from_env(self.environ),
            out=self.out,
            err=err if err is not None else sys.stderr,
        )
        self.node: RabbitNode | None = None
        self.mongo: SecantusNode | None = None
        self.processes: list[ServiceProcess] = []
        self.admin_key: AdminKey | None = None
        self.backend: BackendChoice | None = None
        self.gateway_url: str | None = None
        self._stop_order: list[Callable[[], object]] = []

    def process(self, name: str) -> ServiceProcess:
        """The started process called `name` (`gateway`, `scheduler-standby`, ...)."""
        for proc in self.processes:
            if proc.name == name:
                return proc
        raise KeyError(name)

    @property
    def log_dir(self) -> Path:
        return self.data_dir / "logs"

    def start(self) -> None:
        self.log_dir.mkdir(parents=True, exist_ok=True)
        # Before anything starts: an unusable key file stops the run at once.
        self.admin_key = admin_key.bootstrap(self.environ, self.data_dir)
        self.backend = choose_backend(
            self.environ, emulator=self.emulator, fallback=self.model_fallback
        )
        # Installed (minutes the first time) before anything starts: nothing to undo if it fails.
        model = None
        if self.backend.backend is Backend.EMBEDDED:
            model = self._install_embedded_model(self.backend.ollama_url)
        env = {**self.environ, "CORRAL_DATA_DIR": str(self.data_dir)}
        env["CORRAL_AMQP_URL"] = self._start_broker()
        env["CORRAL_MONGO_URL"] = self._start_mongo()
        if self.standby:
            # The gateway's /health then says "degraded" while one of the two is down.
            env.setdefault("CORRAL_EXPECTED_SCHEDULERS", "2")
        if self.emulator:
            env["CORRAL_OLLAMA_URL"] = self._start_emulator()
        elif model is not None:
            url = self._start_embedded_model(model)
            # An OpenAI-compatible server (`CORRAL_BACKEND_URL` falls back to the Ollama URL;
            # both are set so that nothing still reading the latter looks elsewhere).
            env.update(CORRAL_BACKEND_KIND="openai", CORRAL_BACKEND_URL=url, CORRAL_OLLAMA_URL=url)
        elif self.backend.backend is Backend.OLLAMA:
            self._say("ollama", f"{redact(self.backend.ollama_url)}  (answers; not managed)")
        # The services need the broker and the store, not each other: they start together and
        # are waited for together (a second run is ready in a few seconds, not one service's
        # start after another). The standby comes once the active scheduler is ready, so that
        # the one called "scheduler" holds the lane; the gateway comes last, as the way in.
        services = [module for module in self.modules if module != GATEWAY_MODULE]
        starting = [self._start_service(module, env) for module in services]
        for proc in starting:
            self._ready(proc)
        if SCHEDULER_MODULE in services and self.standby:
            self._ready(self._start_service(SCHEDULER_MODULE, env, STANDBY_NAME))
        if GATEWAY_MODULE in self.modules:
            self._start_gateway(env)
        if model is not None and self.gateway_url is not None:
            print(
                embedded_model_banner(self.backend.ollama_url, self.gateway_url),
                file=self.out,
                flush=True,
            )

    def _install_embedded_model(self, ollama_url: str) -> Installation:
        try:
            return embedded_model.install(embedded_model.layout(self.environ), self.out)
        except EmbeddedModelError as exc:
            raise StackError(
                f"nothing answers at CORRAL_OLLAMA_URL={redact(ollama_url)} and the "
                f"embedded model could not be set up: {exc}\n"
                "Point CORRAL_OLLAMA_URL at a running Ollama, use `make run-demo` for the "
                "emulator, or CORRAL_DEV_EMBEDDED_MODEL=0 to start without a backend."
            ) from exc

    def _free_port(self) -> int:
        """A free loopback port, never the gateway's: that one is configured, not bound until
        the gateway starts last, so the OS may offer it to a service started before."""
        gateway_port = int(self.environ.get("CORRAL_GATEWAY_PORT") or 8000)
        while (port := free_port(LOOPBACK)) == gateway_port:
            pass
        return port

    def _start_embedded_model(self, model: Installation) -> str:
        port = self._free_port()
        url = f"http://{LOOPBACK}:{port}"
        log = self.log_dir / f"{EMBEDDED_MODEL_NAME}.log"
        n_ctx = int(self.environ.get("CORRAL_DEFAULT_NUM_CTX") or embedded_model.DEFAULT_NUM_CTX)
        argv = model.server_argv(LOOPBACK, port, n_ctx)
        self._launch(EMBEDDED_MODEL_NAME, argv, self.environ, f"{url}/v1/models")
        self._say(
            EMBEDDED_MODEL_NAME,
            f"{url}  (llama.cpp serving {embedded_model.MODEL_ALIAS}, log {log})",
        )
        return url

    def _start_broker(self) -> str:
        choice = choose_broker(self.environ)
        if not choice.start_local_node:
            self._say("rabbitmq", f"{redact(choice.url)}  (existing broker, not managed)")
            return choice.url
        node = RabbitNode(self.data_dir / "rabbitmq")
        self._stop_order.append(node.stop)
        node.start()
        self.node = node
        self.supervisor.watch(NodeChild("rabbitmq", node, node.log_dir / f"{node.nodename}.log"))
        self._say("rabbitmq", f"{node.url}  (local node, log {node.log_dir / node.nodename}.log)")
        return node.url

    def _start_mongo(self) -> str:
        """The configured MongoDB, or else SecantusDB with its data under `<data dir>/mongo`."""
        explicit = self.environ.get("CORRAL_MONGO_URL")
        if explicit:
            if not ping(explicit, timeout=2):
                raise StackError(
                    f"CORRAL_MONGO_URL={redact(explicit)} is not reachable; start that server or "
                    "unset CORRAL_MONGO_URL to get the embedded store"
                )
            self._say("mongo", f"{redact(explicit)}  (existing server, not managed)")
            return explicit
        node = SecantusNode(self.data_dir / "mongo", log_path=self.log_dir / "mongo.log")
        self._stop_order.append(node.stop)
        node.start()
        self.mongo = node
        self.supervisor.watch(NodeChild("mongo", node, node.log_path))
        self._say(
            "mongo",
            f"{node.url}  (embedded SecantusDB, data {node.storage_path}, log {node.log_path})",
        )
        return node.url

    def _start_emulator(self) -> str:
        port = self._free_port()
        url = f"http://{LOOPBACK}:{port}"
        argv = [sys.executable, "-m", EMULATOR_MODULE, "--host", LOOPBACK, "--port", str(port)]
        self._launch("emulator", argv, self.environ, f"{url}/api/version")
        self._say("emulator", f"{url}  (Ollama emulator, log {self.log_dir / 'emulator.log'})")
        return url

    def _start_gateway(self, env: dict[str, str]) -> None:
        name = service_name(GATEWAY_MODULE)
        host = self.environ.get("CORRAL_GATEWAY_HOST") or LOOPBACK
        port = int(self.environ.get("CORRAL_GATEWAY_PORT") or 8000)
        if not port_is_free(port, host):
            # Otherwise whatever holds the port could answer our readiness probe.
            raise StackError(
                f"{host}:{port} is already in use (another `make run`?); "
                "set CORRAL_GATEWAY_PORT to use another port"
            )
        gateway_env = {**env, "CORRAL_GATEWAY_HOST": host, "CORRAL_GATEWAY_PORT": str(port)}
        if self.standby:
            # With a standby running, one scheduler alone is a lost standby: /health degraded.
            gateway_env.setdefault("CORRAL_EXPECTED_SCHEDULERS", "2")
        if self.admin_key is not None:
            # The gateway alone needs it.
            gateway_env["CORRAL_ADMIN_KEY"] = self.admin_key.key
        url = f"http://{_url_host(host)}:{port}"
        self._launch(name, [sys.executable, "-m", GATEWAY_MODULE], gateway_env, f"{url}/ready")
        self.gateway_url = url
        self._say(name, f"{url}  (log {self.log_dir / name}.log)")
        if self.admin_key is not None:
            admin_key.announce(self.admin_key, url, self.out)
        elif admin_key.auth_on(self.environ):
            self._say("admin key", "CORRAL_ADMIN_KEY (auth on)")

    def _start_service(
        self, module: str, env: dict[str, str], name: str | None = None
    ) -> ServiceProcess:
        """Launched, not yet ready: `_ready` waits for it."""
        name = name or service_name(module)
        # Chosen once: a restart reuses the process's env, so the same port.
        health = self._free_port()
        ready = f"http://{LOOPBACK}:{health}/ready"
        service_env = {**env, "CORRAL_HEALTH_PORT": str(health)}
        return self._launch(name, [sys.executable, "-m", module], service_env, ready, wait=False)

    def stop(self) -> None:
        """Stop what was started, newest first; keep going past failures."""
        errors: list[BaseException] = []
        while self._stop_order:
            stop = self._stop_order.pop()
            try:
                stop()
            except Exception as exc:
                errors.append(exc)
        if errors:
            raise errors[0]

    def _launch(
        self,
        name: str,
        argv: list[str],
        env: Mapping[str, str],
        ready_url: str,
        *,
        wait: bool = True,
    ) -> ServiceProcess:
        log = self.log_dir / f"{name}.log"
        proc = ServiceProcess(name, argv, env, ready_url, log, inherit_env=False)
        self._stop_order.append(proc.stop)
        self.processes.append(proc)
        proc.start()
        if wait:
            self._ready(proc, announce=False)
        return proc

    def _ready(self, proc: ServiceProcess, *, announce: bool = True) -> None:
        """Wait for a launched process to be ready, then supervise it (a restart policy only
        applies to a process that was up once)."""
        proc.wait_ready()
        self.supervisor.watch(ServiceChild(proc))
        if announce:
            self._say(proc.name, f"{proc.ready_url}  (log {proc.log_path})")

    def _say(self, name: str, text: str) -> None:
        print(f"{name:<14} {text}", file=self.out, flush=True)


def embedded_model_banner(ollama_url: str, gateway_url: str) -> str:
    rule = "=" * 78
    alias = embedded_model.MODEL_ALIAS
    body = f'{{"model": "{alias}", "messages": [{{"role": "user", "content": "Hello!"}}]}}'
    return f"""\
{rule}
Nothing answers at CORRAL_OLLAMA_URL={redact(ollama_url)}, so Corral is serving a
small embedded model: {embedded_model.MODEL_TITLE} (llama.cpp, one CPU thread), as
model "{alias}". It is tiny and fast: right for trying Corral out, not for real work.

  curl {gateway_url}/api/chat -d '{body}'

To use a real Ollama instead, start it (`ollama serve`) and run `make run` again,
or point Corral at one elsewhere:

  CORRAL_OLLAMA_URL=http://my-ollama-host:11434 make run

(`CORRAL_DEV_EMBEDDED_MODEL=0 make run` starts without any model; `make run-demo`
uses the Ollama emulator.)
{rule}"""


def _url_host(host: str) -> str:
    # A wildcard bind is reachable on loopback; IPv6 literals need brackets in URLs.
    if host in ("0.0.0.0", ""):
        return LOOPBACK
    if host == "::":
        return "[::1]"
    return f"[{host}]" if ":" in host else host


def _raise_exit(signum: int, frame: object) -> None:
    raise SystemExit(128 + signum)


def run(
    data_dir: Path | None = None,
    *,
    emulator: bool | None = None,
    model_fallback: bool | None = None,
) -> int:
    """Start the stack and keep it running (crashed parts are restarted) until Ctrl-C/SIGTERM,
    or until a part keeps crashing and the supervisor gives up; then stop it all."""
    environ = dict(os.environ)
    stack = Stack(
        data_dir if data_dir is not None else default_data_dir(environ),
        emulator=emulator_requested(environ) if emulator is None else emulator,
        model_fallback=(
            model_fallback_requested(environ) if model_fallback is None else model_fallback
        ),
        environ=environ,
    )
    in_main = threading.current_thread() is threading.main_thread()
    if in_main:
        # SIGTERM (and a closed terminal) must unwind through `finally` just like Ctrl-C.
        # SIGINT is set explicitly because a shell starts background jobs with it ignored.
        signal.signal(signal.SIGINT, signal.default_int_handler)
        signal.signal(signal.SIGTERM, _raise_exit)
        signal.signal(signal.SIGHUP, _raise_exit)
    status = 0
    try:
        stack.start()
        print("Corral is running; press Ctrl-C to stop.", flush=True)
        # Never set: only Ctrl-C/SIGTERM (an exception here) or GaveUp end the loop.
        stack.supervisor.run_until(threading.Event())
    except GaveUp as exc:
        print(f"error: {exc}\nStopping everything.", file=sys.stderr, flush=True)
        status = 1
    except (StackError, ServiceError, RabbitMQError, MongoError, AdminKeyError) as exc:
        print(f"error: {exc}", file=sys.stderr, flush=True)
        status = 1
    except KeyboardInterrupt:
        status = 0
    except SystemExit as exc:
        status = 0 if exc.code in (128 + signal.SIGTERM, 128 + signal.SIGHUP) else 1
    finally:
        if in_main:
            # Stopping is bounded by timeouts; a second Ctrl-C must not abandon it halfway.
            for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
                signal.signal(sig, signal.SIG_IGN)
        print("Stopping...", file=sys.stderr, flush=True)
        try:
            stack.stop()
        except Exception as exc:
            print(f"error while stopping: {exc}", file=sys.stderr, flush=True)
            status = 1
        else:
            print(f"Stopped ({stack.supervisor.summary()}).", file=sys.stderr, flush=True)
    return status
