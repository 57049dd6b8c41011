"""Pulls and creates over a scripted backend and a recording publisher: order, sharing,
failures, and one watcher's trouble staying its own."""

from __future__ import annotations

import asyncio
from collections import defaultdict
from collections.abc import AsyncIterator
from typing import Any

import pytest

from corral_common.broker import BrokerUnavailable, Unroutable
from corral_common.errors import CorralError, ErrorType
from corral_common.messages import EVENT_ADAPTER, Event, Failed, Progress
from corral_model_manager.operations import ModelOperation, ModelOperations, Watcher

WAIT_S = 5.0
End = None


class ScriptedBackend:
    """The n-th stream plays the lines fed to `call=n`, as they are fed."""

    def __init__(self) -> None:
        self.scripts: defaultdict[int, asyncio.Queue[dict[str, Any] | Exception | None]] = (
            defaultdict(asyncio.Queue)
        )
        self.calls: list[tuple[str, dict[str, Any]]] = []

    def feed(self, *items: dict[str, Any] | Exception | None, call: int = 0) -> None:
        for item in items:
            self.scripts[call].put_nowait(item)

    async def stream(self, path: str, body: dict[str, Any]) -> AsyncIterator[dict[str, Any]]:
        script = self.scripts[len(self.calls)]
        self.calls.append((path, body))
        while True:
            item = await script.get()
            if item is None:
                return
            if isinstance(item, Exception):
                raise item
            yield item


class Recorder:
    """Publishes into per-request queues; chosen requests fail to publish."""

    def __init__(self) -> None:
        self.events: defaultdict[str, asyncio.Queue[Event]] = defaultdict(asyncio.Queue)
        self.keys: list[str] = []
        self.refuse: dict[str, Exception] = {}

    async def publish(self, routing_key: str, body: bytes) -> None:
        event = EVENT_ADAPTER.validate_json(body)
        error = self.refuse.get(event.request_id)
        if error is not None:
            raise error
        self.keys.append(routing_key)
        self.events[event.request_id].put_nowait(event)

    async def next(self, request_id: str) -> Event:
        async with asyncio.timeout(WAIT_S):
            return await self.events[request_id].get()

    async def lines(self, request_id: str) -> list[dict[str, Any]]:
        """Progress lines up to and including the final one."""
        lines = []
        while True:
            event = await self.next(request_id)
            assert isinstance(event, Progress), event
            lines.append(event.line)
            if event.final:
                return lines


class Setup:
    def __init__(self, interval_s: float = 0.0) -> None:
        self.backend = ScriptedBackend()
        self.recorder = Recorder()
        self.succeeded: list[str] = []
        self.published_at_success: list[int] = []

        async def on_success(operation: ModelOperation) -> None:
            self.published_at_success.append(len(self.recorder.keys))
            self.succeeded.append(operation.model)

        self.operations = ModelOperations(
            self.backend,
            self.recorder.publish,
            interval_s=interval_s,
            on_success=on_success,
        )


def watcher(request_id: str, gateway_id: str = "gw1") -> Watcher:
    return Watcher(gateway_id=gateway_id, request_id=request_id)


PULL_LINES: list[dict[str, Any]] = [
    {"status": "pulling manifest"},
    {"status": "pulling sha256:aa", "digest": "sha256:aa", "total": 100, "completed": 0},
    {"status": "pulling sha256:aa", "digest": "sha256:aa", "total": 100, "completed": 100},
    {"status": "verifying sha256 digest"},
    {"status": "writing manifest"},
    {"status": "success"},
]


async def test_every_line_reaches_the_watcher_in_order_then_success() -> None:
    s = Setup()
    assert s.operations.pull("llama3.2", watcher("r1")) is False
    s.backend.feed(*PULL_LINES)
    assert await s.recorder.lines("r1") == PULL_LINES
    assert s.backend.calls == [("/api/pull", {"model": "llama3.2"})]
    assert s.recorder.keys[0] == "gw.gw1.r1.progress"
    # The model list was refreshed and broadcast before the client could see `success`.
    assert s.succeeded == ["llama3.2"]
    assert s.published_at_success == [len(PULL_LINES) - 1]
    await s.operations.close()
    [pull] = s.operations.pulls()
    assert pull["state"] == "success"
    assert pull["status"] == "success"
    assert pull["percent"] == 100.0


async def test_seq_counts_each_watchers_own_events() -> None:
    s = Setup()
    s.operations.pull("tiny", watcher("r1"))
    s.backend.feed(*PULL_LINES)
    seqs = []
    while True:
        event = await s.recorder.next("r1")
        assert isinstance(event, Progress)
        seqs.append(event.seq)
        if event.final:
            break
    assert seqs == list(range(len(PULL_LINES)))


async def test_a_second_pull_of_the_same_model_joins_from_the_latest_line() -> None:
    s = Setup()
    assert s.operations.pull("llama3.2", watcher("r1")) is False
    s.backend.feed(*PULL_LINES[:3])
    for expected in PULL_LINES[:3]:
        event = await s.recorder.next("r1")
        assert isinstance(event, Progress) and event.line == expected
    # Another spelling of the same model, from another gateway.
    assert s.operations.pull("llama3.2:latest", watcher("r2", "gw2")) is True
    first = await s.recorder.next("r2")
    assert isinstance(first, Progress)
    assert (first.line, first.seq) == (PULL_LINES[2], 0)
    assert s.operations.pulls()[0]["watchers"] == 2
    s.backend.feed(*PULL_LINES[3:])
    assert await s.recorder.lines("r2") == PULL_LINES[3:]
    assert await s.recorder.lines("r1") == PULL_LINES[3:]
    assert len(s.backend.calls) == 1
    await s.operations.close()
    # A pull after the first finished asks the backend again.
    assert s.operations.pull("llama3.2", watcher("r3")) is False
    s.backend.feed({"status": "success"}, call=1)
    assert await s.recorder.lines("r3") == [{"status": "success"}]
    assert len(s.backend.calls) == 2
    await s.operations.close()


async def test_joining_before_the_first_line_gets_everything() -> None:
    s = Setup()
    s.operations.pull("tiny", watcher("r1"))
    assert s.operations.pull("tiny", watcher("r2")) is True
    s.backend.feed(*PULL_LINES)
    assert await s.recorder.lines("r1") == PULL_LINES
    assert await s.recorder.lines("r2") == PULL_LINES


async def test_an_error_line_fails_every_watcher() -> None:
    s = Setup()
    s.operations.pull("nope", watcher("r1"))
    s.operations.pull("nope", watcher("r2"))
    s.backend.feed(
        {"status": "pulling manifest"},
        {"error": "pull model manifest: file does not exist"},
    )
    for request_id in ("r1", "r2"):
        progress = await s.recorder.next(request_id)
        assert isinstance(progress, Progress) and not progress.final
        failed = await s.recorder.next(request_id)
        assert isinstance(failed, Failed)
        assert (failed.status, failed.error_type) == (500, "backend_error")
        assert failed.message == "pull model manifest: file does not exist"
    await s.operations.close()
    [pull] = s.operations.pulls()
    assert pull["state"] == "error"
    assert pull["error"] == "pull model manifest: file does not exist"
    assert s.succeeded == []


@pytest.mark.parametrize(
    ("error", "status", "error_type"),
    [
        (CorralError(ErrorType.BACKEND_ERROR, "name is invalid", status=400), 400, "backend_error"),
        (
            CorralError(ErrorType.OLLAMA_CONNECTION_ERROR, "Cannot connect"),
            503,
            "ollama_connection_error",
        ),
        (CorralError(ErrorType.BACKEND_TIMEOUT, "Timeout"), 504, "backend_timeout"),
    ],
)
async def test_backend_failures_become_failed_events(
    error: CorralError, status: int, error_type: str
) -> None:
    s = Setup()
    s.operations.pull("tiny", watcher("r1"))
    s.backend.feed(error)
    failed = await s.recorder.next("r1")
    assert isinstance(failed, Failed)
    assert (failed.status, failed.error_type, failed.message) == (status, error_type, error.message)


async def test_a_stream_that_ends_without_success_is_a_failure() -> None:
    s = Setup()
    s.operations.pull("tiny", watcher("r1"))
    s.backend.feed({"status": "pulling manifest"}, End)
    assert isinstance(await s.recorder.next("r1"), Progress)
    failed = await s.recorder.next("r1")
    assert isinstance(failed, Failed) and failed.status == 500


async def test_one_watchers_publish_failures_do_not_stop_the_others() -> None:
    s = Setup()
    s.recorder.refuse["gone"] = Unroutable("no queue")
    s.recorder.refuse["flaky"] = BrokerUnavailable("hiccup")
    s.operations.pull("tiny", watcher("gone"))
    s.operations.pull("tiny", watcher("flaky"))
    s.operations.pull("tiny", watcher("fine"))
    s.backend.feed(PULL_LINES[0])
    assert (await s.recorder.next("fine")).kind == "progress"
    # The gateway of `gone` has no queue any more: it is dropped; `flaky` is kept.
    assert s.operations.pulls()[0]["watchers"] == 2
    del s.recorder.refuse["flaky"]
    s.backend.feed(*PULL_LINES[1:])
    assert await s.recorder.lines("fine") == PULL_LINES[1:]
    assert await s.recorder.lines("flaky") == PULL_LINES[1:]
    await s.operations.close()


async def test_byte_progress_is_throttled_but_each_layer_completes() -> None:
    s = Setup(interval_s=3600)
    s.operations.pull("big", watcher("r1"))
    layer = [
        {"status": "pulling sha256:bb", "digest": "sha256:bb", "total": 1000, "completed": n}
        for n in range(0, 1001, 100)
    ]
    s.backend.feed({"status": "pulling manifest"}, *layer, *PULL_LINES[3:])
    lines = await s.recorder.lines("r1")
    assert lines == [{"status": "pulling manifest"}, layer[0], layer[-1], *PULL_LINES[3:]]


async def test_a_held_line_goes_out_when_the_backend_pauses() -> None:
    s = Setup(interval_s=0.05)
    s.operations.pull("big", watcher("r1"))
    first = {"status": "pulling sha256:cc", "total": 10, "completed": 0}
    latest = {"status": "pulling sha256:cc", "total": 10, "completed": 5}
    s.backend.feed(first, latest)
    assert (await s.recorder.next("r1")).line == first  # type: ignore[union-attr]
    # Nothing more comes from the backend, yet the newest line is not held forever.
    assert (await s.recorder.next("r1")).line == latest  # type: ignore[union-attr]
    s.backend.feed({"status": "success"})
    assert await s.recorder.lines("r1") == [{"status": "success"}]


async def test_creates_are_never_shared() -> None:
    s = Setup()
    s.operations.create({"model": "mine", "from": "tiny"}, watcher("r1"))
    s.operations.create({"model": "mine", "from": "tiny"}, watcher("r2"))
    s.backend.feed({"status": "success"}, call=0)
    s.backend.feed({"status": "success"}, call=1)
    assert await s.recorder.lines("r1") == [{"status": "success"}]
    assert await s.recorder.lines("r2") == [{"status": "success"}]
    assert [call[0] for call in s.backend.calls] == ["/api/create", "/api/create"]
    assert s.succeeded == ["mine", "mine"]
    assert s.operations.pulls() == []


async def test_stopping_tells_watchers_the_pull_was_interrupted() -> None:
    s = Setup()
    s.operations.pull("tiny", watcher("r1"))
    s.backend.feed(PULL_LINES[0])
    assert isinstance(await s.recorder.next("r1"), Progress)
    await s.operations.close()
    failed = await s.recorder.next("r1")
    assert isinstance(failed, Failed)
    assert (failed.status, failed.error_type) == (503, "interrupted")
