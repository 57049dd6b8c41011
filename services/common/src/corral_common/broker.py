"""One robust broker connection per service, with the two publishing paths the contract asks for.

Durable messages (jobs, final events) go on a channel with publisher confirms and `mandatory`, so
a full queue or an unroutable message raises instead of vanishing. Chatty messages (tokens,
positions) go on a second channel without confirms, where a lost message costs little and a
confirm round trip per token would cost a lot.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any, cast

import aio_pika
import aiormq
import structlog
from aio_pika.abc import (
    AbstractChannel,
    AbstractExchange,
    AbstractRobustConnection,
    DeliveryMode,
)
from prometheus_client import Counter

from corral_common import jsonutil
from corral_common.metric_labels import zeroed
from corral_common.settings import CorralSettings
from corral_common.telemetry import inject_context
from corral_common.timeouts import within
from corral_common.topology import (
    CONTROL_EXCHANGE,
    EVENTS_EXCHANGE,
    Topology,
    declare_topology,
)

log = structlog.get_logger(__name__)

Listener = Callable[[], Awaitable[None] | None]

# Errors that mean "the broker is not there right now", as opposed to a refusal by the broker.
BROKER_DOWN_ERRORS: tuple[type[BaseException], ...] = (
    aiormq.exceptions.ChannelInvalidStateError,
    aiormq.exceptions.AMQPConnectionError,
    aiormq.exceptions.ChannelClosed,
    ConnectionError,
    asyncio.TimeoutError,
)
CONNECT_ERRORS: tuple[type[BaseException], ...] = (*BROKER_DOWN_ERRORS, OSError)

# Durable publishes by how the broker answered: confirmed (acked), queue_full (nacked: the
# queue's length limit), unroutable (returned), unavailable (no broker or no confirm in time).
PUBLISHES = zeroed(
    Counter(
        "corral_broker_publishes_total",
        "Confirmed (durable) publishes, by the broker's answer "
        "(confirmed, queue_full, unroutable, unavailable)",
        ["outcome"],
    ),
    "confirmed",
    "queue_full",
    "unroutable",
    "unavailable",
)


class BrokerUnavailable(Exception):
    """The broker could not take the message (down, reconnecting, or no confirm in time)."""


class Unroutable(BrokerUnavailable):
    """No queue is bound for the message (for an event: its gateway is gone)."""


class QueueFull(Exception):
    """The broker refused the message: the target queue is at its length limit."""


class Broker:
    def __init__(self, settings: CorralSettings, service: str) -> None:
        self.settings = settings
        self.service = service
        self._connection: AbstractRobustConnection | None = None
        self._confirm_channel: AbstractChannel | None = None
        self._fast_channel: AbstractChannel | None = None
        self._topology: Topology | None = None
        self._connected = asyncio.Event()
        self._on_lost: list[Listener] = []
        self._on_restored: list[Listener] = []

    # -- lifecycle ---------------------------------------------------------------------------

    async def start(self, retry_interval: float = 1.0) -> None:
        """Connect, retrying until the broker answers: services start before or after it."""
        while True:
            try:
                self._connection = await aio_pika.connect_robust(
                    self.settings.amqp_url,
                    reconnect_interval=retry_interval,
                    client_properties={"connection_name": f"corral-{self.service}"},
                )
                break
            except CONNECT_ERRORS as exc:
                log.warning("broker not reachable, retrying", error=str(exc))
                await asyncio.sleep(retry_interval)
        self._connection.close_callbacks.add(self._lost)
        self._connection.reconnect_callbacks.add(self._restored)
        self._confirm_channel = await self._connection.channel(
            publisher_confirms=True, on_return_raises=True
        )
        self._fast_channel = await self._connection.channel(publisher_confirms=False)
        self._topology = await declare_topology(self._confirm_channel, self.settings)
        self._connected.set()
        log.info("broker connected")

    async def close(self) -> None:
        self._connected.clear()
        if self._connection is not None:
            await self._connection.close()

    async def channel(
        self, prefetch: int | None = None, *, confirms: bool = False
    ) -> AbstractChannel:
        """A robust channel of its own, for a consumer with its own prefetch window; with
        `confirms`, publishes on it are confirmed and unroutable ones raise."""
        assert self._connection is not None
        channel = await self._connection.channel(
            publisher_confirms=confirms, on_return_raises=confirms
        )
        if prefetch is not None:
            await channel.set_qos(prefetch_count=prefetch)
        return channel

    @property
    def topology(self) -> Topology:
        assert self._topology is not None, "broker not started"
        return self._topology

    @property
    def connected(self) -> bool:
        return self._connected.is_set()

    def on_lost(self, listener: Listener) -> None:
        self._on_lost.append(listener)

    def on_restored(self, listener: Listener) -> None:
        self._on_restored.append(listener)

    async def _lost(self, *_: Any) -> None:
        if not self._connected.is_set():
            return
        self._connected.clear()
        log.warning("broker connection lost")
        await _notify(self._on_lost)

    async def _usable(self) -> None:
        """Return once messages can be published; raise BrokerUnavailable at once if not.

        After a reconnect aio-pika reopens channels one by one, and restores each consumer with
        its channel: deliveries (redelivered jobs above all) arrive before the publishing
        channels are back, and `connected` is only set once everything is. In that window the
        broker is there, so wait (within the publish timeout) instead of failing the message;
        while there is no transport at all, fail fast, so clients get their 503 at once.
        Callers check `connected` first: the usual case costs no coroutine.
        """
        if self._connected.is_set():
            return
        connection = self._connection
        if connection is None or connection.is_closed or not connection.connected.is_set():
            raise BrokerUnavailable("message broker is not connected")
        try:
            await within(self._connected.wait(), self.settings.publish_timeout_s)
        except TimeoutError as exc:
            raise BrokerUnavailable("message broker connection is still being restored") from exc

    async def _restored(self, *_: Any) -> None:
        self._connected.set()
        log.info("broker connection restored")
        await _notify(self._on_restored)

    # -- publishing --------------------------------------------------------------------------

    async def publish_durable(
        self,
        exchange: AbstractExchange,
        routing_key: str,
        body: bytes,
        *,
        headers: dict[str, Any] | None = None,
        expiration: float | None = None,
    ) -> None:
        """Persistent, confirmed, mandatory. Raises QueueFull or BrokerUnavailable."""
        try:
            if not self._connected.is_set():
                await self._usable()
            channel = await _underlay(self._confirm_channel)
        except BrokerUnavailable:
            PUBLISHES.labels("unavailable").inc()
            raise
        except BROKER_DOWN_ERRORS as exc:
            PUBLISHES.labels("unavailable").inc()
            raise BrokerUnavailable(f"message broker is not reachable: {exc}") from exc
        try:
            # The confirm channel was opened with `on_return_raises`: a return raises
            # PublishError, a nack DeliveryError (as aio-pika's Exchange.publish, which only
            # adds a Message object and a lookup on the way here).
            await channel.basic_publish(
                body,
                exchange=exchange.name,
                routing_key=routing_key,
                properties=_properties(headers, PERSISTENT, expiration),
                mandatory=True,
                timeout=self.settings.publish_timeout_s,
            )
        except aiormq.exceptions.PublishError as exc:
            PUBLISHES.labels("unroutable").inc()
            raise Unroutable(f"message was unroutable: {exc}") from exc
        except aiormq.exceptions.DeliveryError as exc:
            # A nack: with `x-overflow: reject-publish` this is the queue's length limit.
            PUBLISHES.labels("queue_full").inc()
            raise QueueFull(str(exc)) from exc
        except BROKER_DOWN_ERRORS as exc:
            PUBLISHES.labels("unavailable").inc()
            raise BrokerUnavailable(f"message broker is not reachable: {exc}") from exc
        PUBLISHES.labels("confirmed").inc()

    async def publish_event(self, routing_key: str, body: bytes, *, durable: bool) -> None:
        """Publish to `corral.events`: final events durably, the rest on the fast channel."""
        if durable:
            await self.publish_durable(self.topology.events, routing_key, body)
            return
        await self._publish_fast(self._fast_channel, EVENTS_EXCHANGE, routing_key, body)

    async def publish_control(self, routing_key: str, body: bytes) -> None:
        """Control messages are fire-and-forget: a cancel for a job nobody holds is harmless."""
        await self._publish_fast(self._fast_channel, CONTROL_EXCHANGE, routing_key, body)

    async def _publish_fast(
        self, channel: AbstractChannel | None, exchange: str, routing_key: str, body: bytes
    ) -> None:
        """Transient, unconfirmed, not mandatory: handed to the connection's writer and not
        waited for (`wait=False`: no round trip through the writer task per message). The
        order of publishes is kept (one writer queue per connection, bounded, so a slow socket
        still holds publishers back); what was not yet written when the connection drops is
        lost, as an unconfirmed message always could be."""
        assert channel is not None, "broker not started"
        try:
            if not self._connected.is_set():
                await self._usable()
            underlay = await _underlay(channel)
            await underlay.basic_publish(
                body,
                exchange=exchange,
                routing_key=routing_key,
                properties=_properties(None, TRANSIENT, None),
                wait=False,
            )
        except BROKER_DOWN_ERRORS as exc:
            raise BrokerUnavailable(str(exc)) from exc


PERSISTENT = int(DeliveryMode.PERSISTENT)
TRANSIENT = int(DeliveryMode.NOT_PERSISTENT)


async def _underlay(channel: AbstractChannel | None) -> aiormq.Channel:
    """The AMQP channel under a robust one (raising as aio-pika's own publish does when it is
    closed): aiormq's, whose `basic_publish` can skip waiting for the write."""
    assert channel is not None, "broker not started"
    if channel.is_closed:
        raise aiormq.exceptions.ChannelInvalidStateError(f"{channel!r} closed")
    return cast(aiormq.Channel, await channel.get_underlay_channel())


def _properties(
    headers: dict[str, Any] | None, delivery_mode: int, expiration: float | None
) -> aiormq.spec.Basic.Properties:
    """A message's properties, built directly (what aio-pika's Message would build), with the
    current trace context in its headers."""
    carried: dict[str, Any] = dict(headers or {})
    inject_context(carried)
    return aiormq.spec.Basic.Properties(
        content_type="application/json",
        delivery_mode=delivery_mode,
        headers=carried,
        expiration=None if expiration is None else str(int(expiration * 1000)),
    )


async def _notify(listeners: list[Listener]) -> None:
    for listener in listeners:
        try:
            result = listener()
            if result is not None:
                await result
        except Exception:
            log.exception("broker listener failed")


def encode(model: Any) -> bytes:
    """Pydantic models and plain JSON values alike."""
    dump = getattr(model, "model_dump_json", None)
    if dump is not None:
        return dump().encode()  # type: ignore[no-any-return]
    return jsonutil.dumps(model)
