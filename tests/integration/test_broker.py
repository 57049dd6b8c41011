"""corral_common.broker over a real RabbitMQ: confirms, refusals, and trace context in headers."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable

import aio_pika
import pytest
from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider

from corral_common.broker import Broker, BrokerUnavailable, QueueFull, Unroutable, encode
from corral_common.messages import Job
from corral_common.settings import CorralSettings
from corral_common.telemetry import extract_context
from corral_common.topology import JOBS_QUEUE, JOBS_ROUTING_KEY, event_key


@pytest.fixture
async def broker(fresh_broker: Callable[[], str]) -> AsyncIterator[Broker]:
    broker = Broker(CorralSettings(amqp_url=fresh_broker(), queue_max_length=2), "test")
    await broker.start()
    yield broker
    await broker.close()


def job(request_id: str) -> Job:
    return Job(
        request_id=request_id,
        gateway_id="gw",
        kind="chat",
        model="m",
        payload={"model": "m", "messages": []},
        enqueued_at=0,
    )


async def test_jobs_are_confirmed_and_a_full_queue_refuses(broker: Broker) -> None:
    jobs = broker.topology.jobs
    await broker.publish_durable(jobs, JOBS_ROUTING_KEY, encode(job("a")))
    await broker.publish_durable(jobs, JOBS_ROUTING_KEY, encode(job("b")))
    # The quorum queue's length limit is approximate under bursts (one over is allowed), so
    # keep publishing until the broker says no; it must within a couple more.

    async def publish_until_refused() -> None:
        for i in range(3):
            await broker.publish_durable(jobs, JOBS_ROUTING_KEY, encode(job(f"c{i}")))

    with pytest.raises(QueueFull):
        await publish_until_refused()
    queue = await (await broker.channel()).declare_queue(JOBS_QUEUE, passive=True)
    assert 2 <= (queue.declaration_result.message_count or 0) <= 3


async def test_a_final_event_nobody_listens_for_is_unroutable(broker: Broker) -> None:
    with pytest.raises(Unroutable):
        await broker.publish_event(event_key("gone", "r1", "done"), b"{}", durable=True)
    # Transient events to nobody are dropped silently: they are best-effort by design.
    await broker.publish_event(event_key("gone", "r1", "token"), b"{}", durable=False)


async def test_publishing_while_disconnected_fails_fast(broker: Broker) -> None:
    await broker.close()
    with pytest.raises(BrokerUnavailable):
        await broker.publish_durable(broker.topology.jobs, JOBS_ROUTING_KEY, b"{}")


async def test_trace_context_travels_in_amqp_headers(broker: Broker) -> None:
    provider = TracerProvider()
    tracer = provider.get_tracer("test")
    channel = await broker.channel()
    queue = await channel.get_queue(JOBS_QUEUE)
    received: asyncio.Future[aio_pika.abc.AbstractIncomingMessage] = asyncio.Future()

    async def on_message(message: aio_pika.abc.AbstractIncomingMessage) -> None:
        await message.ack()
        if not received.done():
            received.set_result(message)

    await queue.consume(on_message)
    with tracer.start_as_current_span("gateway request") as span:
        await broker.publish_durable(broker.topology.jobs, JOBS_ROUTING_KEY, encode(job("t")))
        sent_trace_id = span.get_span_context().trace_id
    message = await asyncio.wait_for(received, timeout=10)
    assert "traceparent" in message.headers
    carried = trace.get_current_span(extract_context(message.headers)).get_span_context()
    assert carried.trace_id == sent_trace_id
