"""Dead letters in process: a dead-lettered job of this gateway fails its waiting request."""

from __future__ import annotations

from typing import Any

from corral_common.dead_letters import (
    GATEWAY_ID_HEADER,
    REQUEST_ID_HEADER,
    DeadLetters,
    death,
)
from corral_common.messages import Failed
from corral_common.status_board import StatusBoard
from corral_gateway.hub import Hub


class Message:
    def __init__(self, headers: dict[str, Any]) -> None:
        self.headers = headers


def hub() -> Hub:
    return Hub(StatusBoard(10.0), lambda _: None)


def dead(gateway_id: str, request_id: str, reason: bytes | str, **extra: Any) -> Message:
    return Message(
        {
            GATEWAY_ID_HEADER: gateway_id,
            REQUEST_ID_HEADER: request_id,
            "x-death": [{"reason": reason, "queue": "scheduler.jobs", "count": 1}],
            **extra,
        }
    )


async def test_a_dead_letter_fails_the_waiting_request_naming_the_reason() -> None:
    h = hub()
    waiting = h.register("req-1")
    await DeadLetters("gw-a", h.fail).on_message(dead("gw-a", "req-1", b"rejected"))  # type: ignore[arg-type]
    failed = waiting.get_nowait()
    assert isinstance(failed, Failed)
    assert failed.status == 500
    assert "'req-1'" in failed.message and "dead-lettered: rejected" in failed.message


async def test_over_the_delivery_limit_says_so() -> None:
    h = hub()
    waiting = h.register("req-2")
    message = dead("gw-a", "req-2", "delivery_limit", **{"x-delivery-count": 5})
    await DeadLetters("gw-a", h.fail).on_message(message)  # type: ignore[arg-type]
    failed = waiting.get_nowait()
    assert isinstance(failed, Failed)
    assert "5 times" in failed.message and "delivery_limit" in failed.message


async def test_other_gateways_and_unknown_requests_are_left_alone() -> None:
    h = hub()
    waiting = h.register("req-3")
    letters = DeadLetters("gw-a", h.fail)
    await letters.on_message(dead("gw-b", "req-3", "rejected"))  # type: ignore[arg-type]
    await letters.on_message(dead("gw-a", "someone-else", "rejected"))  # type: ignore[arg-type]
    await letters.on_message(Message({}))  # type: ignore[arg-type]
    assert waiting.empty()


def test_the_reason_falls_back_to_the_first_death_header() -> None:
    assert death({"x-first-death-reason": "expired"}) == ("expired", 0)
    assert death({}) == ("unknown", 0)
