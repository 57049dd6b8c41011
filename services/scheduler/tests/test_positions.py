"""The position broadcaster: one `Positions` message per gateway per round, carrying only the
jobs whose place changed, so position traffic grows with the lane's changes, not with the
clients waiting."""

from __future__ import annotations

from corral_common.topology import positions_key
from corral_scheduler.events import EventSink
from corral_scheduler.lane import Lane
from corral_scheduler.positions import PositionBroadcaster
from services.scheduler.tests import fakes


async def test_one_message_per_gateway_per_round_with_only_the_news() -> None:
    broker = fakes.FakeBroker()
    lane = Lane()
    lane.pause()  # everyone waits
    for i in range(5):
        lane.push(fakes.entry(fakes.job(f"a{i}", gateway_id="gwA")))
    for i in range(3):
        lane.push(fakes.entry(fakes.job(f"b{i}", gateway_id="gwB")))
    lane.push(fakes.entry(fakes.job("quiet", gateway_id="gwB", queue_progress=False)))
    broadcaster = PositionBroadcaster(lane, EventSink(broker), interval_s=0.25)  # type: ignore[arg-type]

    await broadcaster.broadcast()
    keys = sorted(key for key, _ in broker.published)
    assert keys == [positions_key("gwA"), positions_key("gwB")]
    assert [p["position"] for p in broker.of("a0") + broker.of("b2")] == [1, 8]
    assert broker.of("quiet") == []  # queue chunks off: told only by admission

    # Nothing moved: nothing is sent. One job ahead leaves: everyone behind it moves up, still
    # one message per gateway.
    broker.published.clear()
    await broadcaster.broadcast()
    assert broker.published == []
    lane.remove("a0")
    await broadcaster.broadcast()
    assert len(broker.published) == 2
    assert broker.of("a1")[-1]["position"] == 1


async def test_far_back_a_place_is_news_once_it_fell_by_a_tenth() -> None:
    broker = fakes.FakeBroker()
    lane = Lane()
    lane.pause()
    for i in range(120):
        lane.push(fakes.entry(fakes.job(f"j{i}", gateway_id="gw")))
    broadcaster = PositionBroadcaster(lane, EventSink(broker), interval_s=0.25)  # type: ignore[arg-type]
    await broadcaster.broadcast()
    for step in range(12):
        lane.remove(f"j{step}")
        await broadcaster.broadcast()
    # The 16th is told every place; the 120th only once it moved up by twelve (120 // 10).
    assert [p["position"] for p in broker.of("j15")] == list(range(16, 3, -1))
    assert [p["position"] for p in broker.of("j119")] == [120, 108]
