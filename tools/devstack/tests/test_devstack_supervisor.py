"""The restart policy and the supervisor's state machine, in process: fake children, fake clock."""

from __future__ import annotations

import io
from pathlib import Path

import pytest

from corral_devstack.supervisor import (
    GaveUp,
    RestartPolicy,
    RestartTracker,
    Supervisor,
    standby_requested,
)

POLICY = RestartPolicy(
    initial_backoff_s=0.5,
    factor=2.0,
    max_backoff_s=3.0,
    stable_after_s=30.0,
    max_rapid_failures=4,
    ready_timeout_s=10.0,
)


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class FakeChild:
    """Crashes when told to; relaunches become ready when told to (or fail outright)."""

    def __init__(self, name: str = "svc") -> None:
        self.name = name
        self.log_path = Path(f"/logs/{name}.log")
        self.code: int | None = None
        self.ready = True
        self.relaunches = 0
        self.stops = 0
        self.relaunch_error: Exception | None = None

    def exit_code(self) -> int | None:
        return self.code

    def relaunch(self) -> None:
        self.relaunches += 1
        if self.relaunch_error is not None:
            raise self.relaunch_error
        self.code = None

    def is_ready(self) -> bool:
        return self.ready

    def stop(self) -> None:
        self.stops += 1
        self.code = -15

    def log_tail(self, n: int) -> str:
        return "line one\nboom: the last line"


def supervisor(clock: Clock) -> tuple[Supervisor, io.StringIO, io.StringIO]:
    out, err = io.StringIO(), io.StringIO()
    return Supervisor(POLICY, out=out, err=err, clock=clock), out, err


def crash_and_recover(sup: Supervisor, child: FakeChild, clock: Clock, code: int = -9) -> None:
    child.code = code
    sup.poll()  # sees the exit, schedules the restart
    clock.now += POLICY.max_backoff_s
    sup.poll()  # relaunches
    sup.poll()  # sees it ready


def test_backoff_grows_exponentially_and_is_capped() -> None:
    assert [POLICY.backoff(n) for n in range(1, 6)] == [0.5, 1.0, 2.0, 3.0, 3.0]
    assert POLICY.backoff(0) == 0.5


def test_rapid_failures_give_up_at_the_limit_and_a_stable_run_resets_the_count() -> None:
    tracker = RestartTracker(POLICY)
    decisions = [tracker.on_exit(1.0) for _ in range(3)]
    assert [(d.restart, d.delay_s, d.rapid_failures) for d in decisions] == [
        (True, 0.5, 1),
        (True, 1.0, 2),
        (True, 2.0, 3),
    ]
    # A run longer than stable_after_s: the crash after it starts the count over.
    stable = tracker.on_exit(31.0)
    assert (stable.restart, stable.delay_s, stable.rapid_failures) == (True, 0.5, 0)
    for _ in range(3):
        assert tracker.on_exit(0.1).restart
    last = tracker.on_exit(0.1)
    assert (last.restart, last.rapid_failures) == (False, 4)
    assert tracker.restarts == 7


def test_policy_from_env() -> None:
    env = {
        "CORRAL_DEV_RESTART_BACKOFF_S": "0.1",
        "CORRAL_DEV_RESTART_BACKOFF_MAX_S": "2",
        "CORRAL_DEV_RESTART_STABLE_S": "5",
        "CORRAL_DEV_RESTART_LIMIT": "3",
        "CORRAL_DEV_RESTART_READY_S": "20",
    }
    policy = RestartPolicy.from_env(env)
    assert (policy.initial_backoff_s, policy.max_backoff_s) == (0.1, 2.0)
    assert (policy.stable_after_s, policy.max_rapid_failures, policy.ready_timeout_s) == (
        5.0,
        3,
        20.0,
    )
    assert RestartPolicy.from_env({}) == RestartPolicy()
    with pytest.raises(ValueError, match="CORRAL_DEV_RESTART_LIMIT"):
        RestartPolicy.from_env({"CORRAL_DEV_RESTART_LIMIT": "-1"})
    with pytest.raises(ValueError, match="CORRAL_DEV_RESTART_BACKOFF_S"):
        RestartPolicy.from_env({"CORRAL_DEV_RESTART_BACKOFF_S": "nan"})


def test_standby_setting() -> None:
    assert standby_requested({})
    assert standby_requested({"CORRAL_DEV_STANDBY": "1"})
    for off in ("0", "false", "no", "off"):
        assert not standby_requested({"CORRAL_DEV_STANDBY": off})


def test_a_crash_is_restarted_after_the_backoff_and_reported() -> None:
    clock = Clock()
    sup, out, _ = supervisor(clock)
    child, other = FakeChild("scheduler"), FakeChild("gateway")
    sup.watch(child)
    sup.watch(other)
    clock.now += 60
    child.code = -9
    sup.poll()
    assert child.relaunches == 0, "waits out the backoff first"
    assert not sup.all_running()
    clock.now += 0.4
    sup.poll()
    assert child.relaunches == 0
    clock.now += 0.1
    sup.poll()
    assert child.relaunches == 1
    child.ready = False
    sup.poll()
    assert not sup.all_running(), "relaunched but not ready yet"
    child.ready = True
    clock.now += 1.5
    sup.poll()
    assert sup.all_running()
    assert other.relaunches == 0, "the others are left alone"
    text = out.getvalue()
    assert "scheduler      exited with -9 after 60.0s; restart 1 in 0.5s" in text
    assert "(log tail: /logs/scheduler.log)" in text
    assert "scheduler      ready again 2.0s after the crash" in text
    assert sup.summary() == "1 restart (scheduler 1)"
    assert sup.history[0].recovered_in_s == pytest.approx(2.0)


def test_repeated_rapid_crashes_are_loud_then_give_up_with_the_log_tail() -> None:
    clock = Clock()
    sup, out, err = supervisor(clock)
    child = FakeChild("session-store")
    sup.watch(child)
    for _ in range(POLICY.max_rapid_failures - 1):
        clock.now += 1
        crash_and_recover(sup, child, clock, code=3)
    assert child.relaunches == 3
    assert "WARNING: keeps crashing: 3 rapid failures in a row (gives up at 4)" in err.getvalue()
    assert "boom: the last line" in err.getvalue()
    child.code = 3
    with pytest.raises(GaveUp, match="session-store failed 4 times in a row") as info:
        sup.poll()
    assert info.value.name == "session-store"
    assert "boom: the last line" in str(info.value)
    assert "/logs/session-store.log" in str(info.value)
    assert out.getvalue().count("exited with 3") == 3


def test_a_restart_that_never_gets_ready_is_stopped_and_counts_as_a_failure() -> None:
    clock = Clock()
    sup, _, err = supervisor(clock)
    child = FakeChild()
    sup.watch(child)
    clock.now += 100
    child.code = 1
    sup.poll()
    clock.now += 1
    sup.poll()
    child.ready = False
    clock.now += POLICY.ready_timeout_s + 1
    sup.poll()
    assert child.stops == 1
    assert "was not ready within 10s" in err.getvalue()
    assert sup.restarts["svc"] == 2
    assert sup.summary() == "2 restarts (svc 2)"


def test_a_relaunch_that_raises_is_a_failed_run() -> None:
    clock = Clock()
    sup, _, err = supervisor(clock)
    child = FakeChild("mongo")
    sup.watch(child)
    clock.now += 100
    child.code = -9
    child.relaunch_error = RuntimeError("secantusd-py exited with 1 while starting")
    sup.poll()
    for _ in range(POLICY.max_rapid_failures - 1):
        clock.now += POLICY.max_backoff_s
        sup.poll()
    clock.now += POLICY.max_backoff_s
    with pytest.raises(GaveUp, match="mongo failed 4 times"):
        sup.poll()
    assert "restart failed: secantusd-py exited with 1" in err.getvalue()
