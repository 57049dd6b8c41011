"""Routes events from this gateway's broker queue to the requests waiting for them.

Each request registers before its job is published, so no event can arrive unclaimed. Events for
requests that are gone (client left) are dropped. When the broker connection drops, this
gateway's exclusive queue goes with it, so every waiting request is failed at once rather than
left hanging.
"""

from __future__ import annotations

import asyncio
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

import orjson
import structlog
from aio_pika.abc import AbstractIncomingMessage
from prometheus_client import Gauge
from pydantic import BaseModel, Field, ValidationError

from corral_common.contracts.identity import KEYS_CHANGED_KEY, KeyChanged
from corral_common.messages import (
    EVENT_ADAPTER,
    LIVE_KINDS,
    Event,
    Failed,
    ModelList,
    Positions,
    Tokens,
)
from corral_common.status_board import StatusBoard, StoreBoard
from corral_common.topology import (
    MODELS_ROUTING_KEY,
    STATUS_ROUTING_KEY,
    STORE_STATUS_ROUTING_KEY,
    positions_key,
)
from corral_gateway.places import Places

log = structlog.get_logger(__name__)

STRAYS_REMEMBERED = 10_000

HELD = Gauge(
    "corral_gateway_held_requests",
    "What the hub holds per request: requests listening for their job's events, and this "
    "gateway's jobs in the lane (placed: places.py); both back to 0 when no request is open",
    ["what"],
)


@dataclass(frozen=True)
class BrokerLost:
    """Not an event from the scheduler: the gateway lost the broker while the request waited."""

    kind: str = "broker_lost"


Delivery = Event | BrokerLost
M = TypeVar("M", bound=BaseModel)


def _reading(model: type[M], what: str, handle: Callable[[M], None]) -> Callable[[bytes], None]:
    """`handle`, fed a broadcast's body read as `model`; an unreadable body is dropped, as the
    status boards drop theirs."""

    def take(body: bytes) -> None:
        try:
            decoded = model.model_validate_json(body)
        except ValidationError:
            log.warning(f"unreadable {what} dropped")
            return
        handle(decoded)

    return take


class RawTokens(Tokens):
    """A token batch read with each chunk's JSON text as the scheduler sent it (`lines[i]` is
    `chunks[i]`), so a surface that relays the backend's chunks unchanged writes that text
    instead of encoding every chunk again (`ollama.chunks.OllamaChunks.passthrough`)."""

    lines: list[bytes] = Field(default_factory=list)


# How a scheduler lays out a token batch (corral_scheduler.events.tokens_body): its chunks one
# per line, between these.
_CHUNKS_OPEN = b'"chunks":[\n'
_CHUNKS_CLOSE = b"\n]"
_TOKEN_PREFIX = b'{"kind":"token",'


def read_tokens(body: bytes) -> RawTokens | None:
    """A token batch laid out one chunk per line, read without validating every chunk through
    pydantic: the chunks are parsed in one call and their text kept (`RawTokens`). None for
    anything else (another event, a batch from a scheduler that lays it out otherwise), which
    is read as before. A raw newline in a JSON message is whitespace outside any string, so
    the lines between the array's brackets are its elements, each ending with its comma."""
    if not body.startswith(_TOKEN_PREFIX):
        return None
    head, found, rest = body.partition(_CHUNKS_OPEN)
    if not found:
        return None
    inner, found, tail = rest.rpartition(_CHUNKS_CLOSE)
    if not found or b"\n" in tail:
        return None
    try:
        envelope = Tokens.model_validate_json(head + b'"chunks":[]' + tail)
        chunks = orjson.loads(b"[" + inner + b"]")
    except (ValidationError, orjson.JSONDecodeError):
        return None
    lines = inner.split(b",\n") if inner else []
    if len(lines) != len(chunks) or (chunks and set(map(type, chunks)) != {dict}):
        return None
    return RawTokens.model_construct(
        request_id=envelope.request_id,
        seq=envelope.seq,
        chunks=chunks,
        started=envelope.started,
        lines=lines,
    )


class Hub:
    def __init__(
        self,
        status: StatusBoard,
        cancel_stray: Callable[[str], None],
        on_models: Callable[[ModelList], None] = lambda _: None,
        stores: StoreBoard | None = None,
        on_key_changed: Callable[[KeyChanged], None] = lambda _: None,
        gateway_id: str | None = None,
    ) -> None:
        self._waiting: dict[str, asyncio.Queue[Delivery]] = {}
        self.status = status
        # This gateway's jobs in the lane, for the provisional positions of those the scheduler
        # has not admitted yet (places.py); every status broadcast recounts the others'.
        self.places = Places(status)
        HELD.labels("listening").set_function(lambda: len(self._waiting))
        HELD.labels("placed").set_function(lambda: len(self.places))
        # The session stores' broadcasts, for /health (the store up or down, its last write).
        self.stores = stores or StoreBoard(stale_after_s=10.0)
        # The broadcasts that share this queue with job events, by routing key. A key created
        # or revoked (the session store's `KeyChanged`) goes to the gate, which forgets it.
        self._broadcasts: dict[str | None, Callable[[bytes], None]] = {
            STATUS_ROUTING_KEY: self._status,
            STORE_STATUS_ROUTING_KEY: self.stores.take,
            MODELS_ROUTING_KEY: _reading(ModelList, "model list", on_models),
            KEYS_CHANGED_KEY: _reading(KeyChanged, "key change", on_key_changed),
        }
        if gateway_id is not None:
            # The lane's position updates for this gateway's requests, one message for all.
            self._broadcasts[positions_key(gateway_id)] = _reading(
                Positions, "position update", self._positions
            )
        # A job whose request is not waiting here has no client (it left, or was failed when
        # the broker went away and the job came back after): it is cancelled, once.
        self._cancel_stray = cancel_stray
        self._strays: OrderedDict[str, None] = OrderedDict()
        # In-process readers of every job event this gateway receives (the operator's page:
        # ui/lane_feed.py), so nothing else needs a broker queue of its own for them.
        self._observers: list[Callable[[Event], None]] = []

    def observe(self, observer: Callable[[Event], None]) -> None:
        self._observers.append(observer)

    def register(self, request_id: str) -> asyncio.Queue[Delivery]:
        if request_id in self._waiting:
            raise KeyError(request_id)
        queue: asyncio.Queue[Delivery] = asyncio.Queue()
        self._waiting[request_id] = queue
        return queue

    def unregister(self, request_id: str) -> None:
        self._waiting.pop(request_id, None)
        self.places.forget(request_id)

    @property
    def in_flight(self) -> int:
        return len(self._waiting)

    async def on_message(self, message: AbstractIncomingMessage) -> None:
        take = self._broadcasts.get(message.routing_key)
        if take is not None:
            take(message.body)
            return
        event: Event | None = read_tokens(message.body)
        try:
            if event is None:
                event = EVENT_ADAPTER.validate_json(message.body)
        except ValidationError:
            log.warning("unreadable event dropped", routing_key=message.routing_key)
            return
        if isinstance(event, Tokens) and event.started is not None:
            # The job's `started` rode on its first token batch: it comes first.
            self._deliver(event.started)
        self._deliver(event)

    def _status(self, body: bytes) -> None:
        self.status.take(body)
        self.places.status_arrived()

    def _positions(self, update: Positions) -> None:
        for position in update.positions:
            self._deliver(position)

    def _deliver(self, event: Event) -> None:
        for observer in self._observers:
            observer(event)
        queue = self._waiting.get(event.request_id)
        if queue is not None:
            queue.put_nowait(event)
            self.places.heard(event)
        elif event.kind in LIVE_KINDS and event.request_id not in self._strays:
            self._strays[event.request_id] = None
            while len(self._strays) > STRAYS_REMEMBERED:
                self._strays.popitem(last=False)
            log.info("cancelling a job nobody waits for", request_id=event.request_id)
            self._cancel_stray(event.request_id)

    def fail(self, failed: Failed) -> bool:
        """Deliver a failure that did not come from a scheduler (a dead-lettered job) to its
        request; False when no request of that id waits here."""
        queue = self._waiting.get(failed.request_id)
        if queue is None:
            return False
        queue.put_nowait(failed)
        return True

    def broker_lost(self) -> None:
        for queue in self._waiting.values():
            queue.put_nowait(BrokerLost())
