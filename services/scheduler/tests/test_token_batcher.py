"""The token batcher: the first chunk at once, then at most one batch per window, in order;
closing flushes without waiting the window out. The event sink: a `done` with a session routed
as `turn`, and `started` riding on the first token batch. No clocks are read: a window far
longer than any test shows what waits for it."""

from __future__ import annotations

import asyncio
from typing import Any

import orjson

from corral_common.messages import Done, Job, Started, Tokens
from corral_scheduler.events import TOKEN_WINDOW_S, EventSink, TokenBatcher

FOREVER_S = 3600.0


class Published:
    def __init__(self) -> None:
        self.batches: list[tuple[int, list[dict[str, Any]]]] = []
        self.arrived = asyncio.Event()

    async def __call__(self, seq: int, chunks: list[dict[str, Any]]) -> None:
        self.batches.append((seq, chunks))
        self.arrived.set()

    async def next(self) -> None:
        await self.arrived.wait()
        self.arrived.clear()


def chunk(n: int) -> dict[str, Any]:
    return {"message": {"content": f"t{n}"}}


async def settle_loop() -> None:
    """Let the batcher run what it would run now: yielding loop turns, not waiting on time, to
    show that something does *not* happen inside the window (no event marks a non-event)."""
    for _ in range(20):
        await asyncio.sleep(0)


async def test_the_first_chunk_goes_out_at_once_and_the_rest_wait_for_the_window() -> None:
    published = Published()
    batcher = TokenBatcher(published, window_s=FOREVER_S)
    batcher.add(chunk(0))
    await published.next()
    assert published.batches == [(0, [chunk(0)])]
    for n in range(1, 5):
        batcher.add(chunk(n))
    await settle_loop()
    # Inside the window: nothing more went out.
    assert len(published.batches) == 1
    # Closing flushes at once, in order, as one batch.
    assert await batcher.close() == 2
    assert published.batches == [(0, [chunk(0)]), (1, [chunk(n) for n in range(1, 5)])]


async def test_a_full_batch_ends_its_window_early() -> None:
    published = Published()
    batcher = TokenBatcher(published, window_s=FOREVER_S, max_chunks=3)
    batcher.add(chunk(0))
    await published.next()
    batcher.extend([chunk(1), chunk(2)])
    await settle_loop()
    assert len(published.batches) == 1
    # The third chunk fills the batch: out without the window or a close.
    batcher.add(chunk(3))
    await published.next()
    assert published.batches[1] == (1, [chunk(1), chunk(2), chunk(3)])
    # The next batch waits its window again until it too is full.
    batcher.extend([chunk(4), chunk(5)])
    await settle_loop()
    assert len(published.batches) == 2
    batcher.extend([chunk(6), chunk(7)])
    await published.next()
    assert published.batches[2] == (2, [chunk(n) for n in range(4, 8)])
    assert await batcher.close() == 3


async def test_after_the_window_the_next_batch_goes_out_without_a_close() -> None:
    published = Published()
    batcher = TokenBatcher(published, window_s=0.01)
    batcher.add(chunk(0))
    await published.next()
    batcher.add(chunk(1))
    batcher.add(chunk(2))
    await published.next()
    assert published.batches == [(0, [chunk(0)]), (1, [chunk(1), chunk(2)])]
    batcher.add(chunk(3))
    await published.next()
    assert await batcher.close() == 3
    flat = [c for _, chunks in published.batches for c in chunks]
    assert flat == [chunk(n) for n in range(4)]
    assert [seq for seq, _ in published.batches] == [0, 1, 2]


async def test_without_a_window_only_what_piles_up_during_a_publish_is_batched() -> None:
    gate, publishing = asyncio.Event(), asyncio.Event()
    batches: list[list[dict[str, Any]]] = []

    async def slow(seq: int, chunks: list[dict[str, Any]]) -> None:
        batches.append(chunks)
        publishing.set()
        await gate.wait()

    batcher = TokenBatcher(slow, window_s=0)
    batcher.add(chunk(0))
    await publishing.wait()
    batcher.add(chunk(1))
    batcher.add(chunk(2))
    gate.set()
    assert await batcher.close() == 2
    assert batches == [[chunk(0)], [chunk(1), chunk(2)]]


async def test_a_close_with_nothing_pending_returns_at_once() -> None:
    published = Published()
    batcher = TokenBatcher(published, window_s=FOREVER_S)
    batcher.add(chunk(0))
    await published.next()
    assert await batcher.close() == 1


class Settings:
    token_batch_ms = 20.0


class Broker:
    settings = Settings()


def test_the_window_comes_from_the_schedulers_setting() -> None:
    assert EventSink(Broker()).token_window_s == 0.02  # type: ignore[arg-type]
    assert EventSink(object()).token_window_s == TOKEN_WINDOW_S  # type: ignore[arg-type]
    assert EventSink(Broker(), token_window_s=0).token_window_s == 0  # type: ignore[arg-type]


# -- the sink: routing of `done`, `started` on the first batch ----------------------------------


class Recorder:
    """A broker that records what is published (routing key, event kind, durable)."""

    def __init__(self) -> None:
        self.sent: list[tuple[str, dict[str, Any], bool]] = []
        self.arrived = asyncio.Event()

    async def publish_event(self, routing_key: str, body: bytes, *, durable: bool) -> None:
        self.sent.append((routing_key, orjson.loads(body), durable))
        self.arrived.set()


def a_job(session_id: str | None = None) -> Job:
    return Job(
        request_id="r1",
        gateway_id="gw",
        kind="chat",
        model="m",
        payload={},
        session_id=session_id,
        enqueued_at=0.0,
    )


def a_done(session_id: str | None) -> Done:
    return Done(
        request_id="r1",
        token_batches=0,
        final={},
        text="",
        waited_ms=0,
        model="m",
        session_id=session_id,
    )


async def test_only_a_done_with_a_session_is_routed_as_a_turn() -> None:
    broker = Recorder()
    sink = EventSink(broker)  # type: ignore[arg-type]
    await sink.send(a_job(), a_done(None))
    await sink.send(a_job("s1"), a_done("s1"))
    assert [(key, durable) for key, _, durable in broker.sent] == [
        ("gw.gw.r1.done", True),
        ("gw.gw.r1.turn", True),
    ]
    assert [event["kind"] for _, event, _ in broker.sent] == ["done", "done"]


STARTED = Started(request_id="r1", waited_ms=5)


def tokens(seq: int) -> Tokens:
    return Tokens(request_id="r1", seq=seq, chunks=[chunk(seq)])


async def test_started_rides_on_the_first_token_batch() -> None:
    broker = Recorder()
    sink = EventSink(broker, FOREVER_S, merge_started=True)  # type: ignore[arg-type]
    await sink.send(a_job(), STARTED)
    assert broker.sent == []
    await sink.send(a_job(), tokens(0))
    await sink.send(a_job(), tokens(1))
    [(key, first, _), (_, second, _)] = broker.sent
    assert key == "gw.gw.r1.token"
    assert first["started"] == {**STARTED.model_dump(), "kind": "started"}
    assert second["started"] is None


async def test_a_held_started_goes_out_before_any_other_event_of_its_job() -> None:
    broker = Recorder()
    sink = EventSink(broker, FOREVER_S, merge_started=True)  # type: ignore[arg-type]
    await sink.send(a_job(), STARTED)
    await sink.send(a_job(), a_done(None))
    assert [event["kind"] for _, event, _ in broker.sent] == ["started", "done"]


async def test_a_started_not_followed_by_tokens_within_the_window_goes_out_alone() -> None:
    broker = Recorder()
    sink = EventSink(broker, 0.001, merge_started=True)  # type: ignore[arg-type]
    await sink.send(a_job(), STARTED)
    await broker.arrived.wait()
    await sink.send(a_job(), tokens(0))
    assert [event["kind"] for _, event, _ in broker.sent] == ["started", "token"]
    assert broker.sent[1][1]["started"] is None


async def test_without_merging_started_is_its_own_message_at_once() -> None:
    broker = Recorder()
    sink = EventSink(broker, FOREVER_S, merge_started=False)  # type: ignore[arg-type]
    await sink.send(a_job(), STARTED)
    assert [event["kind"] for _, event, _ in broker.sent] == ["started"]
