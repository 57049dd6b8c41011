"""Pull progress thinning: conflated within a status, never reordered, never losing a status's
last line."""

from __future__ import annotations

from typing import Any

from corral_model_manager.throttle import ProgressThrottle, Step


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


def layer(completed: int, total: int = 100, digest: str = "sha256:a") -> dict[str, Any]:
    return {"status": f"pulling {digest}", "digest": digest, "total": total, "completed": completed}


def indices(steps: list[Step]) -> list[int]:
    return [step.index for step in steps]


def test_status_changes_always_go_out_at_once() -> None:
    throttle = ProgressThrottle(0.25, Clock())
    assert indices(throttle.offer(Step(0, {"status": "pulling manifest"}))) == [0]
    assert indices(throttle.offer(Step(1, layer(0)))) == [1]
    assert indices(throttle.offer(Step(2, {"status": "verifying sha256 digest"}))) == [2]
    assert indices(throttle.offer(Step(3, {"status": "success"}))) == [3]


def test_byte_progress_is_conflated_and_the_last_line_precedes_the_next_status() -> None:
    clock = Clock()
    throttle = ProgressThrottle(0.25, clock)
    assert indices(throttle.offer(Step(0, layer(0)))) == [0]
    assert throttle.offer(Step(1, layer(10))) == []
    assert throttle.offer(Step(2, layer(50))) == []
    assert throttle.held == Step(2, layer(50))
    assert throttle.due_at() == 0.25
    assert throttle.due() == []
    assert throttle.offer(Step(3, layer(100))) == []
    # The next status flushes the newest held line first: completed == total is seen.
    sent = throttle.offer(Step(4, {"status": "verifying sha256 digest"}))
    assert indices(sent) == [3, 4]
    assert sent[0].line["completed"] == 100


def test_a_held_line_goes_out_when_its_interval_has_passed() -> None:
    clock = Clock()
    throttle = ProgressThrottle(0.25, clock)
    throttle.offer(Step(0, layer(0)))
    throttle.offer(Step(1, layer(10)))
    clock.advance(0.25)
    assert indices(throttle.due()) == [1]
    assert throttle.held is None
    # The interval restarts from that send.
    assert throttle.offer(Step(2, layer(20))) == []
    clock.advance(0.3)
    assert indices(throttle.offer(Step(3, layer(30)))) == [3]
    assert throttle.held is None  # superseded, never sent after a newer line


def test_a_new_layer_is_a_new_status() -> None:
    throttle = ProgressThrottle(0.25, Clock())
    throttle.offer(Step(0, layer(0, digest="sha256:a")))
    throttle.offer(Step(1, layer(100, digest="sha256:a")))
    assert indices(throttle.offer(Step(2, layer(0, digest="sha256:b")))) == [1, 2]


def test_flush_sends_whatever_is_held() -> None:
    throttle = ProgressThrottle(0.25, Clock())
    throttle.offer(Step(0, layer(0)))
    throttle.offer(Step(1, layer(5)))
    assert indices(throttle.flush()) == [1]
    assert throttle.flush() == []
