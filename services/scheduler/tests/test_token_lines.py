"""A fast backend's chunks are taken a read at a time and relayed as the backend wrote them:
only lines that are surely non-final chunks, that re-encoding would not change, form a run;
everything else is read one by one, as before. A token batch written around those lines reads
as the same `Tokens` as one encoded whole."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import aiohttp
import orjson
from aiohttp import web
from aiohttp.test_utils import TestServer

from corral_common.broker import encode
from corral_common.messages import EVENT_ADAPTER, Started, Tokens
from corral_scheduler.backends.base import ChunkRun
from corral_scheduler.backends.ollama import OllamaBackend, _run_of
from corral_scheduler.events import tokens_body
from services.scheduler.tests.fakes import (
    Delivery,
    FakeBroker,
    entry,
    job,
    make_executor,
    settle,
)


def line(content: str, **more: Any) -> bytes:
    return orjson.dumps(
        {"model": "m", "message": {"role": "assistant", "content": content}, **more, "done": False}
    )


def test_non_final_chunks_of_one_read_are_one_run_parsed_once() -> None:
    lines = [line(" a"), line(' "quoted" b\n'), line(" é")]
    run = _run_of(lines)
    assert isinstance(run, ChunkRun)
    assert run.lines == lines
    assert run.chunks == [orjson.loads(each) for each in lines]


def test_anything_that_may_not_be_a_plain_chunk_is_read_one_by_one() -> None:
    final = orjson.dumps({"model": "m", "done": True, "eval_count": 3})
    nested_done = orjson.dumps(
        {"message": {"tool_calls": [{"function": {"arguments": {"done": False}}}]}, "done": True}
    )
    assert _run_of([line(" a"), final]) is None
    assert _run_of([nested_done]) is None
    assert _run_of([line(" a"), b'{"error":"boom"}']) is None
    assert _run_of([line(" a"), b""]) is None
    # Re-encoding would spell these out (`\u003c` is `<`): not relayed as read.
    assert _run_of([line(" a").replace(b" a", b"\\u003c")]) is None
    assert _run_of([line(" a").replace(b" a", b"a\\/b")]) is None
    # Not one object per line, though each ends as a chunk does.
    assert _run_of([b'{"a":1},{"done":false}']) is None
    assert _run_of([b'{"a":[1,"done":false}']) is None
    assert _run_of([]) is None


def test_a_batch_written_around_its_lines_reads_as_the_same_tokens() -> None:
    lines = [line(" a"), line(" b\n")]
    chunks = [orjson.loads(each) for each in lines]
    started = Started(request_id="r1", waited_ms=5)
    for with_started in (None, started):
        body = tokens_body("r1", 3, lines, with_started)
        expected = Tokens(request_id="r1", seq=3, chunks=chunks, started=with_started)
        assert EVENT_ADAPTER.validate_json(body) == expected
        whole = orjson.loads(encode(expected))
        assert orjson.loads(body) == {k: v for k, v in whole.items() if v is not None}
        # One chunk per line of the message, each as the backend wrote it.
        assert body.split(b"\n")[1:-1] == [lines[0] + b",", lines[1]]


class RunBackend:
    """Streams one chat as a real Ollama backend's reads come: a run, then single chunks."""

    kind = "ollama"
    base_url = "http://backend"

    def __init__(self, pieces: list[Any]) -> None:
        self.pieces = pieces

    @asynccontextmanager
    async def stream(self, kind: str, payload: dict[str, Any]) -> AsyncIterator[Any]:
        async def pieces() -> AsyncIterator[Any]:
            for piece in self.pieces:
                yield piece

        yield pieces()


class RawBroker(FakeBroker):
    """Keeps every body as published, too."""

    def __init__(self) -> None:
        super().__init__()
        self.raw: list[tuple[str, bytes]] = []

    async def publish_event(self, routing_key: str, body: bytes, *, durable: bool) -> None:
        self.raw.append((routing_key, body))
        await super().publish_event(routing_key, body, durable=durable)


async def test_runs_and_single_chunks_make_one_answer_and_go_out_as_read() -> None:
    run_lines = [line("Hel"), line("lo")]
    thinking = {"message": {"role": "assistant", "content": "", "thinking": "hm"}, "done": False}
    call = {"function": {"name": "f", "arguments": {"x": 1}}}
    calling = {
        "message": {"role": "assistant", "content": "!", "tool_calls": [call]},
        "done": False,
    }
    final = {"message": {"role": "assistant", "content": ""}, "done": True, "eval_count": 4}
    backend = RunBackend(
        [ChunkRun([orjson.loads(each) for each in run_lines], run_lines), thinking, calling, final]
    )
    broker = RawBroker()
    executor = make_executor(broker, backend)
    settled: asyncio.Queue[tuple[str, str]] = asyncio.Queue()
    executor.lane.push(entry(job("r1"), Delivery(settled, "r1"), executor.lane.connection_epoch))
    task = asyncio.create_task(executor.run_forever())
    try:
        assert await settle(settled, 1) == {"r1": "ack"}
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
    relayed = [c for e in broker.of("r1") if e["kind"] == "token" for c in e["chunks"]]
    assert relayed == [*(orjson.loads(each) for each in run_lines), thinking, calling]
    # The run's lines travel as read, one per line of the message.
    first = next(body for key, body in broker.raw if key.endswith(".token"))
    assert first.split(b"\n")[1] == run_lines[0] + b","
    done = broker.final("r1")
    assert (done["text"], done["thinking"], done["tool_calls"]) == ("Hello!", "hm", [call])
    assert done["final"] == final


async def test_a_read_that_ends_the_stream_is_its_run_then_the_final_chunk() -> None:
    lines = [line(" a"), line(" b")]
    final = {"model": "m", "done": True, "eval_count": 2}
    body = b"\n".join([*lines, orjson.dumps(final)]) + b"\n"

    async def chat(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": "application/x-ndjson"})
        await response.prepare(request)
        await response.write(body)  # one write: one read
        await response.write_eof()
        return response

    app = web.Application()
    app.router.add_post("/api/chat", chat)
    async with TestServer(app) as server, aiohttp.ClientSession() as session:
        backend = OllamaBackend(
            session, str(server.make_url("")), connect_timeout_s=5, read_timeout_s=5
        )
        async with backend.stream("chat", {"model": "m"}) as pieces:
            got = [piece async for piece in pieces]
    assert got == [ChunkRun([orjson.loads(each) for each in lines], lines), final]
