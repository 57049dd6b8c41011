"""What /health calls healthy, degraded and unhealthy (meta.judge), and the store board."""

from __future__ import annotations

from typing import Any

import pytest

from corral_common.messages import DatabaseStatus, StoreStatus
from corral_common.status_board import StoreBoard
from corral_gateway.corral.health import judge

FINE: dict[str, Any] = {
    "broker_ok": True,
    "schedulers": 1,
    "expected_schedulers": 1,
    "lane_stuck": False,
    "backend_ok": True,
    "store": "up",
}


@pytest.mark.parametrize(
    ("change", "status", "reason"),
    [
        ({}, "healthy", None),
        ({"store": "unknown"}, "healthy", None),
        ({"broker_ok": False}, "unhealthy", "broker disconnected"),
        ({"schedulers": 0}, "unhealthy", "no scheduler is alive"),
        ({"lane_stuck": True}, "unhealthy", "the lane is stuck"),
        ({"backend_ok": False}, "degraded", "backend unreachable"),
        ({"store": "down"}, "degraded", "session store down"),
        ({"expected_schedulers": 2}, "degraded", "1 of 2 expected schedulers alive"),
        ({"lane_stuck": True, "store": "down"}, "unhealthy", "the lane is stuck"),
    ],
)
def test_verdicts(change: dict[str, Any], status: str, reason: str | None) -> None:
    verdict, reasons = judge(**{**FINE, **change})
    assert verdict == status
    assert reasons == ([] if reason is None else [reason])


def status(instance: str, sent_at: float, up: bool, wrote: float | None) -> StoreStatus:
    return StoreStatus(
        instance_id=instance,
        sent_at=sent_at,
        database=DatabaseStatus(up=up, last_write_at=wrote, error=None if up else "disk full"),
    )


def test_the_store_board_is_unknown_then_up_then_down_when_silent() -> None:
    now = [100.0]
    board = StoreBoard(stale_after_s=10, clock=lambda: now[0])
    assert board.state() == "unknown"
    board.update(status("a", 100.0, True, 99.5))
    assert (board.state(), board.last_write_at()) == ("up", 99.5)
    board.update(status("a", 101.0, False, 99.5))
    assert (board.state(), board.error()) == ("down", "disk full")
    board.update(status("a", 100.5, True, 99.5))  # an older broadcast changes nothing
    assert board.state() == "down"
    board.update(status("a", 102.0, True, 102.0))
    assert board.state() == "up"
    now[0] = 130.0  # it fell silent
    assert board.state() == "down"
    assert board.error() == "no status from any session store for a while"
