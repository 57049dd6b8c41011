"""Keep `make run`'s processes alive: a crashed one is restarted with capped exponential backoff.

One crash (a service SIGKILLed by the OOM killer, a store that panicked, a bug that escapes) costs
the clients in flight on that process, not the whole cluster: the supervisor starts the process
again on the same ports, so clients and the other services reconnect to the same addresses. A
process that keeps crashing quickly is reported loudly on every crash, and after
`RestartPolicy.max_rapid_failures` rapid failures in a row the supervisor gives up (`GaveUp`),
because restarting a process that cannot run only hides the problem (and burns the two cores).

The policy (`RestartPolicy`, `RestartTracker`) is pure and tested in process with an injected
clock; `Supervisor.poll` is one non-blocking pass over the children, so `make run` can loop over
it in its main thread (children must be spawned from the main thread to die with it, see
`_spawn.spawn`) and a test can drive it step by step.
"""

from __future__ import annotations

import math
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path
from typing import Final, Protocol, TextIO

from corral_devstack.mongo import SecantusNode
from corral_devstack.processes import ServiceProcess
from corral_devstack.rabbitmq import RabbitNode

_TRUTHY: Final = frozenset({"1", "true", "yes", "on"})


class GaveUp(RuntimeError):
    """A child crashed `max_rapid_failures` times in a row soon after starting."""

    def __init__(self, name: str, message: str) -> None:
        super().__init__(message)
        self.name = name


@dataclass(frozen=True)
class RestartPolicy:
    """When and how often to restart a crashed child.

    A crash is *rapid* when the run it ended was shorter than `stable_after_s` (a restart that
    never became ready counts too). The n-th rapid failure in a row waits
    `initial_backoff_s * factor**(n-1)`, at most `max_backoff_s`; the `max_rapid_failures`-th
    gives up. A crash after a stable run starts the count over (and waits `initial_backoff_s`):
    a service that ran for an hour and then crashed deserves a quick restart, not a long wait.
    """

    initial_backoff_s: float = 0.5
    factor: float = 2.0
    max_backoff_s: float = 15.0
    stable_after_s: float = 30.0
    max_rapid_failures: int = 5
    # How long a restarted child may take to be ready before the attempt counts as failed.
    ready_timeout_s: float = 60.0

    @classmethod
    def from_env(cls, environ: Mapping[str, str]) -> RestartPolicy:
        """The defaults, overridden by `CORRAL_DEV_RESTART_*` settings (README, docs)."""
        default = cls()

        def number(key: str, fallback: float) -> float:
            raw = environ.get(key, "").strip()
            if not raw:
                return fallback
            value = float(raw)
            if not math.isfinite(value) or value < 0:
                raise ValueError(f"{key}={raw!r} must be a finite number >= 0")
            return value

        return cls(
            initial_backoff_s=number("CORRAL_DEV_RESTART_BACKOFF_S", default.initial_backoff_s),
            max_backoff_s=number("CORRAL_DEV_RESTART_BACKOFF_MAX_S", default.max_backoff_s),
            stable_after_s=number("CORRAL_DEV_RESTART_STABLE_S", default.stable_after_s),
            max_rapid_failures=max(
                1, int(number("CORRAL_DEV_RESTART_LIMIT", default.max_rapid_failures))
            ),
            ready_timeout_s=number("CORRAL_DEV_RESTART_READY_S", default.ready_timeout_s),
        )

    def backoff(self, rapid_failures: int) -> float:
        """The wait before the restart that follows the `rapid_failures`-th rapid failure."""
        if rapid_failures <= 0:
            return min(self.initial_backoff_s, self.max_backoff_s)
        return min(self.max_backoff_s, self.initial_backoff_s * self.factor ** (rapid_failures - 1))


@dataclass(frozen=True)
class Decision:
    restart: bool
    delay_s: float
    rapid_failures: int


@dataclass
class RestartTracker:
    """One child's crash history under a policy (pure: the caller says how long each run was)."""

    policy: RestartPolicy
    rapid_failures: int = 0
    restarts: int = 0

    def on_exit(self, ran_for_s: float) -> Decision:
        if ran_for_s >= self.policy.stable_after_s:
            self.rapid_failures = 0
        else:
            self.rapid_failures += 1
        if self.rapid_failures >= self.policy.max_rapid_failures:
            return Decision(False, 0.0, self.rapid_failures)
        self.restarts += 1
        return Decision(True, self.policy.backoff(self.rapid_failures), self.rapid_failures)


class Child(Protocol):
    """Something the supervisor keeps running."""

    @property
    def name(self) -> str: ...

    @property
    def log_path(self) -> Path: ...

    def exit_code(self) -> int | None:
        """None while running; the exit status (negative: the signal) once it has ended."""

    def relaunch(self) -> None:
        """Start again after a crash, on the same ports. May block (the stores wait until they
        answer); raises if the start itself fails."""

    def is_ready(self) -> bool:
        """A quick, non-blocking readiness check."""

    def stop(self) -> None: ...

    def log_tail(self, n: int) -> str: ...


class ServiceChild:
    """A `ServiceProcess`: restarted with the same argv and env, so the same ports."""

    def __init__(self, process: ServiceProcess) -> None:
        self.process = process

    @property
    def name(self) -> str:
        return self.process.name

    @property
    def log_path(self) -> Path:
        return self.process.log_path

    def exit_code(self) -> int | None:
        return self.process.returncode

    def relaunch(self) -> None:
        self.process.start()

    def is_ready(self) -> bool:
        return self.process.probe_ready()

    def stop(self) -> None:
        self.process.stop()

    def log_tail(self, n: int) -> str:
        return self.process.log_tail(n)


class NodeChild:
    """The embedded SecantusDB or the local RabbitMQ node: `restart()` cleans up what the dead
    node left (RabbitMQ's epmd and helpers) and starts it on its remembered ports and data."""

    def __init__(self, name: str, node: SecantusNode | RabbitNode, log_path: Path) -> None:
        self._name = name
        self.node = node
        self._log_path = log_path

    @property
    def name(self) -> str:
        return self._name

    @property
    def log_path(self) -> Path:
        return self._log_path

    def exit_code(self) -> int | None:
        return self.node.returncode

    def relaunch(self) -> None:
        self.node.restart()

    def is_ready(self) -> bool:
        # `restart()` returns only once the node answers.
        return self.node.running

    def stop(self) -> None:
        self.node.stop()

    def log_tail(self, n: int) -> str:
        return self.node.log_tail(n)


class _State(Enum):
    RUNNING = "running"
    WAITING = "waiting"  # backing off before a restart
    STARTING = "starting"  # relaunched, not ready yet


@dataclass
class _Watch:
    child: Child
    tracker: RestartTracker
    started_at: float
    state: _State = _State.RUNNING
    due_at: float = 0.0
    ready_by: float = 0.0
    crashed_at: float = 0.0
    last_code: int | None = None


@dataclass
class RestartRecord:
    name: str
    exit_code: int | None
    ran_for_s: float
    # From the crash being seen to the restarted child being ready (None until it is).
    recovered_in_s: float | None = None


@dataclass
class Supervisor:
    """Restarts crashed children under `policy`; reports every restart on `out`, repeated
    rapid crashes and giving up on `err`."""

    policy: RestartPolicy = field(default_factory=RestartPolicy)
    out: TextIO = field(default_factory=lambda: sys.stdout)
    err: TextIO = field(default_factory=lambda: sys.stderr)
    clock: Callable[[], float] = time.monotonic
    history: list[RestartRecord] = field(default_factory=list)
    _watches: list[_Watch] = field(default_factory=list)

    def watch(self, child: Child) -> None:
        """Supervise a child that has just been started (and is ready)."""
        self._watches.append(_Watch(child, RestartTracker(self.policy), self.clock()))

    @property
    def children(self) -> Sequence[Child]:
        return [w.child for w in self._watches]

    @property
    def restarts(self) -> Counter[str]:
        return Counter(record.name for record in self.history)

    def all_running(self) -> bool:
        return all(w.state is _State.RUNNING for w in self._watches)

    def summary(self) -> str:
        counts = self.restarts
        if not counts:
            return "no restarts"
        total = sum(counts.values())
        parts = ", ".join(f"{name} {n}" for name, n in sorted(counts.items()))
        return f"{total} restart{'s' if total != 1 else ''} ({parts})"

    def poll(self) -> None:
        """One pass: notice exits, restart children whose backoff is over, see restarted ones
        become ready. Raises `GaveUp` when a child has failed too often."""
        for w in self._watches:
            if w.state is _State.RUNNING:
                code = w.child.exit_code()
                if code is not None:
                    self._crashed(w, code)
            elif w.state is _State.WAITING:
                if self.clock() >= w.due_at:
                    self._relaunch(w)
            else:
                code = w.child.exit_code()
                if code is not None:
                    self._crashed(w, code)
                elif w.child.is_ready():
                    self._ready(w)
                elif self.clock() > w.ready_by:
                    self._say(
                        self.err,
                        w.child.name,
                        f"was not ready within {self.policy.ready_timeout_s:g}s of its restart; "
                        "stopping it",
                    )
                    w.child.stop()
                    self._crashed(w, w.child.exit_code())

    def run_until(self, stop: threading.Event, interval_s: float = 0.2) -> None:
        """Poll until `stop` is set (never, for `make run`: Ctrl-C ends it) or a child is given
        up."""
        while not stop.wait(interval_s):
            self.poll()

    def _crashed(self, w: _Watch, code: int | None) -> None:
        now = self.clock()
        ran_for = now - w.started_at
        decision = w.tracker.on_exit(ran_for)
        name = w.child.name
        w.crashed_at, w.last_code = now, code
        if not decision.restart:
            tail = w.child.log_tail(30)
            message = (
                f"{name} failed {decision.rapid_failures} times in a row, each within "
                f"{self.policy.stable_after_s:g}s of starting (last exit code {code}); giving up. "
                f"Last lines of {w.child.log_path}:\n{tail}"
            )
            raise GaveUp(name, message)
        self.history.append(RestartRecord(name, code, ran_for))
        self._say(
            self.out,
            name,
            f"exited with {code} after {ran_for:.1f}s; restart {w.tracker.restarts} in "
            f"{decision.delay_s:g}s (log tail: {w.child.log_path})",
        )
        if decision.rapid_failures > 1:
            self._say(
                self.err,
                name,
                f"WARNING: keeps crashing: {decision.rapid_failures} rapid failures in a row "
                f"(gives up at {self.policy.max_rapid_failures}); last lines of "
                f"{w.child.log_path}:\n{w.child.log_tail(10)}",
            )
        w.state, w.due_at = _State.WAITING, now + decision.delay_s

    def _relaunch(self, w: _Watch) -> None:
        w.started_at = self.clock()
        try:
            w.child.relaunch()
        except Exception as exc:
            # The stores' own start raises when they die while starting: one more failed run.
            self._say(self.err, w.child.name, f"restart failed: {exc}")
            self._crashed(w, w.child.exit_code())
            return
        w.state, w.ready_by = _State.STARTING, self.clock() + self.policy.ready_timeout_s

    def _ready(self, w: _Watch) -> None:
        w.state = _State.RUNNING
        recovered = self.clock() - w.crashed_at
        for record in reversed(self.history):
            if record.name == w.child.name:
                record.recovered_in_s = recovered
                break
        self._say(self.out, w.child.name, f"ready again {recovered:.1f}s after the crash")

    @staticmethod
    def _say(stream: TextIO, name: str, text: str) -> None:
        print(f"{name:<14} {text}", file=stream, flush=True)


def standby_requested(environ: Mapping[str, str]) -> bool:
    """`CORRAL_DEV_STANDBY` (default on): run a second, standby scheduler."""
    raw = environ.get("CORRAL_DEV_STANDBY", "1").strip().lower()
    return raw in _TRUTHY or raw == ""
