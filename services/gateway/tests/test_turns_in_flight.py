"""Read-your-writes without holding the answer: a session chat's final chunk goes out when its
job is done, and the next request on the session at this gateway waits for the store's
`stored` instead (turns_in_flight.py)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any, cast

import pytest
from aiohttp import web
from prometheus_client import REGISTRY
from pytest_aiohttp import AiohttpClient

from corral_common.messages import Event, Stored
from corral_gateway import ollama
from corral_gateway.settings import GatewaySettings
from corral_gateway.state import GATEWAY, SETTINGS, Gateway
from corral_gateway.turns_in_flight import TurnsInFlight
from services.gateway.tests import fakes
from services.gateway.tests.fakes import FakeGateway, FakeHub

MODEL = "m"
SESSION = "s1"


class ObservedHub(FakeHub):
    """The fake hub with the real hub's observers: `deliver` hands an event to them, as the
    real hub does with every event it receives, whether or not its request still listens."""

    def __init__(self) -> None:
        super().__init__()
        self.observers: list[Callable[[Event], None]] = []

    def observe(self, observer: Callable[[Event], None]) -> None:
        self.observers.append(observer)

    def deliver(self, event: Event) -> None:
        for observer in self.observers:
            observer(event)
        if event.request_id in self.waiting:
            self.feed(event.request_id, event)


class Models:
    async def check(self, model: str, *, not_found: str | None = None) -> None:
        return None


class SessionGateway(FakeGateway):
    def __init__(self, stored_timeout_s: float = 30.0) -> None:
        super().__init__(GatewaySettings(heartbeat_s=60, stored_timeout_s=stored_timeout_s))
        self.observed = ObservedHub()
        self.hub = self.observed
        self.observed.observe(self.turns.observe)
        self.models = Models()
        # What happened, in order: "assemble" (the store asked for the history), "stored".
        self.story: list[str] = []

        async def assemble(params: Any) -> dict[str, Any]:
            self.story.append("assemble")
            return {
                "messages": [m.model_dump(exclude_unset=True) for m in params.messages],
                "context_info": {
                    "truncated": False,
                    "messages_used": 1,
                    "tokens_used": 9,
                    "turns_dropped": 0,
                },
                "context_length": 4096,
            }

        self.rpc.answers = {"assemble": assemble}

    def stored(self, request_id: str) -> None:
        self.story.append("stored")
        self.observed.deliver(Stored(request_id=request_id, outcome="stored"))


def answered(request_id: str) -> list[Event]:
    return fakes.answered(request_id, "hi", model=MODEL, session_id=SESSION)


def waited() -> float:
    return REGISTRY.get_sample_value("corral_gateway_turn_waits_total") or 0.0


def chat(request_id: str, stream: bool) -> dict[str, Any]:
    return {
        "model": MODEL,
        "messages": [{"role": "user", "content": "hello"}],
        "session_id": SESSION,
        "request_id": request_id,
        "stream": stream,
    }


async def client_of(aiohttp_client: AiohttpClient, gateway: SessionGateway) -> Any:
    app = web.Application()
    app[SETTINGS] = gateway.settings
    app[GATEWAY] = cast(Gateway, gateway)
    ollama.add_routes(app.router)
    return await aiohttp_client(app)


@pytest.mark.parametrize("stream", [True, False])
async def test_the_answer_goes_out_before_the_turn_is_stored_and_the_next_turn_waits_for_it(
    aiohttp_client: AiohttpClient, stream: bool
) -> None:
    gateway = SessionGateway()
    client = await client_of(aiohttp_client, gateway)
    gateway.hub.feed("r1", *answered("r1"))
    # No `stored` has come: the whole answer is there all the same.
    response = await client.post("/api/chat", json=chat("r1", stream))
    assert response.status == 200
    text = await response.text()
    assert '"done":true' in text.replace(" ", "")
    turns = gateway.turns
    assert len(turns) == 1 and len(turns.pending(SESSION)) == 1

    # The next message on the session, sent at once: its assembly waits for the turn.
    waits = waited()
    waiting = asyncio.Event()
    settled = turns.settled

    async def watched(session_id: str | None = None) -> None:
        waiting.set()
        await settled(session_id)

    turns.settled = watched  # type: ignore[method-assign]
    gateway.hub.feed("r2", *answered("r2"))
    second = asyncio.create_task(client.post("/api/chat", json=chat("r2", stream)))
    await asyncio.wait_for(waiting.wait(), 10)
    assert gateway.story == ["assemble"]
    assert waited() == waits + 1
    gateway.stored("r1")
    response = await second
    assert response.status == 200
    await response.read()
    assert gateway.story == ["assemble", "stored", "assemble"]
    # r2's own turn is in flight now; r1's is gone.
    assert len(turns.pending(SESSION)) == 1 and len(turns) == 1
    gateway.stored("r2")
    assert len(turns) == 0


async def test_a_stored_that_came_before_the_answer_was_finished_leaves_nothing_in_flight(
    aiohttp_client: AiohttpClient,
) -> None:
    gateway = SessionGateway()
    client = await client_of(aiohttp_client, gateway)
    gateway.hub.feed("r1", *answered("r1"), Stored(request_id="r1", outcome="stored"))
    response = await client.post("/api/chat", json=chat("r1", False))
    assert response.status == 200
    assert len(gateway.turns) == 0


async def test_without_a_wait_configured_nothing_is_recorded(
    aiohttp_client: AiohttpClient,
) -> None:
    gateway = SessionGateway(stored_timeout_s=0)
    client = await client_of(aiohttp_client, gateway)
    gateway.hub.feed("r1", *answered("r1"))
    response = await client.post("/api/chat", json=chat("r1", False))
    assert response.status == 200
    assert len(gateway.turns) == 0


async def test_a_turn_never_confirmed_lapses() -> None:
    turns = TurnsInFlight()
    turns.record(SESSION, "r1", 0.01)
    assert turns.pending(SESSION)
    # The wait ends on the lapse (the store never answered), not on a `stored`.
    await turns.settled(SESSION)
    assert len(turns) == 0 and not turns.pending()


async def test_turns_are_waited_for_by_session() -> None:
    turns = TurnsInFlight()
    turns.record("a", "r1", 30)
    turns.record("b", "r2", 30)
    # Nothing in flight for "c": no wait at all.
    await turns.settled("c")
    waiting = asyncio.ensure_future(turns.settled("a"))
    everything = asyncio.ensure_future(turns.settled())
    turns.observe(Stored(request_id="r1", outcome="stored"))
    await waiting
    assert not everything.done()
    turns.observe(Stored(request_id="r2", outcome="duplicate"))
    await everything
    # A `stored` for a turn not (or no longer) recorded changes nothing.
    turns.observe(Stored(request_id="r1", outcome="stored"))
    assert len(turns) == 0


async def test_a_waiter_cancelled_leaves_the_turn_for_others() -> None:
    turns = TurnsInFlight()
    turns.record("a", "r1", 30)
    waiting = asyncio.Event()

    async def wait_for_the_turn() -> None:
        waiting.set()
        # No suspension between the event and the wait: when the test hears the event, this
        # waiter is inside `settled`.
        await turns.settled("a")

    first = asyncio.ensure_future(wait_for_the_turn())
    await waiting.wait()
    first.cancel()
    with pytest.raises(asyncio.CancelledError):
        await first
    second = asyncio.ensure_future(turns.settled("a"))
    turns.settle("r1")
    await second
