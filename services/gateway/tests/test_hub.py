"""The hub hands each request its events; a gateway's `Positions` message (the lane's update
for all its waiting requests at once) becomes each request's own `Position`."""

from __future__ import annotations

from dataclasses import dataclass

from corral_common.broker import encode
from corral_common.messages import Position, Positions, Started, Tokens
from corral_common.status_board import StatusBoard
from corral_common.topology import event_key, positions_key
from corral_gateway.hub import Hub


@dataclass
class Message:
    routing_key: str
    body: bytes


async def test_a_positions_message_reaches_each_waiting_request() -> None:
    cancelled: list[str] = []
    hub = Hub(StatusBoard(10.0), cancelled.append, gateway_id="gw1")
    first, second = hub.register("r1"), hub.register("r2")
    update = Positions(
        positions=[
            Position(request_id="r1", position=1, estimated_wait_ms=100),
            Position(request_id="r2", position=2, estimated_wait_ms=300),
            Position(request_id="gone", position=3, estimated_wait_ms=500),
        ]
    )
    await hub.on_message(Message(positions_key("gw1"), encode(update)))  # type: ignore[arg-type]
    assert first.get_nowait() == update.positions[0]
    assert second.get_nowait() == update.positions[1]
    # A position for a request nobody waits for here: its job is cancelled, as for any live
    # event of a request that is gone.
    assert cancelled == ["gone"]


async def test_another_gateways_positions_are_not_read_as_a_job_event() -> None:
    hub = Hub(StatusBoard(10.0), lambda _: None, gateway_id="gw1")
    waiting = hub.register("r1")
    update = Positions(positions=[Position(request_id="r1", position=1, estimated_wait_ms=0)])
    await hub.on_message(Message(positions_key("gw2"), encode(update)))  # type: ignore[arg-type]
    assert waiting.empty()


async def test_a_started_riding_on_a_token_batch_is_handed_out_first() -> None:
    hub = Hub(StatusBoard(10.0), lambda _: None, gateway_id="gw1")
    waiting = hub.register("r1")
    started = Started(request_id="r1", waited_ms=12)
    batch = Tokens(request_id="r1", seq=0, chunks=[{"response": "a"}], started=started)
    await hub.on_message(Message(event_key("gw1", "r1", "token"), encode(batch)))  # type: ignore[arg-type]
    assert waiting.get_nowait() == started
    assert waiting.get_nowait() == batch
    assert waiting.empty()
