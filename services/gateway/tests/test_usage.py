"""What the gateway observes of its requests (usage.py): the access-log line each request gets
(access_log.py), the usage totals behind `GET /admin/usage`, /health's `sessions`, `metrics` and
`ollama.models_available`, the model swaps per hour from the schedulers' per-server counts, and
the request-level Prometheus series."""

from __future__ import annotations

from collections.abc import MutableMapping
from typing import Any, cast

import pytest
from aiohttp import web
from aiohttp.typedefs import Handler
from prometheus_client import REGISTRY
from pytest_aiohttp import AiohttpClient
from structlog.testing import capture_logs

from corral_common.messages import (
    BackendStatus,
    DatabaseStatus,
    Done,
    Failed,
    ModelList,
    QueueStatus,
    SchedulerStatus,
    ServerStatus,
    SessionCounts,
    Started,
    StoreStatus,
    Tokens,
)
from corral_common.status_board import StoreBoard
from corral_gateway import admin
from corral_gateway.access_log import access_log_middleware, caller_key
from corral_gateway.corral.health import metrics_block, models_available, sessions_block
from corral_gateway.extensions import Extensions
from corral_gateway.identity.principal import CALLER, Caller
from corral_gateway.relay import RelayTimings
from corral_gateway.state import GATEWAY, Gateway
from corral_gateway.usage import (
    MAX_ROWS,
    OTHER,
    ObservedStatusBoard,
    RequestRecord,
    SwapHistory,
    Usage,
)
from services.gateway.tests.fakes import FakeGateway, alice, chunk, job, relay_app

RID = "req-usage-1"
TIMINGS = RelayTimings(heartbeat_s=60.0, straggler_timeout_s=1.0, stored_timeout_s=0.0)


def sample(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


def done(
    *,
    model: str = "m",
    prompt: int = 30,
    generated: int = 12,
    load_ns: int = 0,
    waited_ms: int = 40,
) -> Done:
    final = {"model": model, "message": {"role": "assistant", "content": ""}, "done": True}
    final |= {"prompt_eval_count": prompt, "eval_count": generated, "load_duration": load_ns}
    return Done(
        request_id=RID, token_batches=0, final=final, text="", waited_ms=waited_ms, model=model
    )


def gateway_with_boards() -> FakeGateway:
    gw = FakeGateway()
    gw.hub.stores = StoreBoard(10.0)  # type: ignore[attr-defined]
    gw.hub.status = ObservedStatusBoard(10.0)
    return gw


def chat_app(
    gw: FakeGateway, extras: dict[str, Any] | None = None, *, stream: bool = False
) -> web.Application:
    """One chat relayed (fakes.relay_app) behind the access log, called by alice's key."""
    ext = Extensions(request_id=RID, session_id=None, queue_progress=True, client_key=None)
    app = relay_app(
        gw, ext, job(RID), timings=TIMINGS, stream=stream, extras=lambda d, p: extras or {}
    )

    @web.middleware
    async def as_alice(request: web.Request, handler: Handler) -> web.StreamResponse:
        request[CALLER] = alice()
        return await handler(request)

    app.middlewares[:0] = [access_log_middleware(), as_alice]
    app[GATEWAY] = cast(Gateway, gw)
    return app


def access_lines(logs: list[MutableMapping[str, Any]]) -> list[MutableMapping[str, Any]]:
    return [line for line in logs if line["event"] == "request"]


# -- the access log --------------------------------------------------------------------------------


async def test_one_access_line_per_request_with_what_the_request_learnt(
    aiohttp_client: AiohttpClient,
) -> None:
    gw = gateway_with_boards()
    gw.hub.feed(RID, Started(request_id=RID, waited_ms=40), done(load_ns=2_000_000_000))
    client = await aiohttp_client(
        chat_app(gw, {"context_info": {"truncated": True, "messages_used": 2}})
    )
    loads = sample("corral_gateway_model_load_time_seconds_count", model="m")
    truncations = sample("corral_gateway_context_truncations_total", model="m")
    prompt = sample("corral_gateway_tokens_total", model="m", kind="prompt")
    with capture_logs() as logs:
        response = await client.post(
            "/chat", json={}, headers={"Authorization": "Bearer crl_secret_never_logged"}
        )
        assert response.status == 200
    [line] = access_lines(logs)
    assert line["log_level"] == "info"
    assert {k: line[k] for k in ("request_id", "key_id", "principal", "method", "path")} == {
        "request_id": RID,
        "key_id": "key_a1",
        "principal": "alice",
        "method": "POST",
        "path": "/chat",
    }
    assert (line["model"], line["status"], line["queue_wait_ms"]) == ("m", 200, 40)
    assert (line["prompt_tokens"], line["generated_tokens"], line["truncated"]) == (30, 12, True)
    assert line["duration_ms"] >= 0
    assert "crl_secret" not in repr(line)
    # The same request in the usage totals and the metrics.
    assert gw.usage.report()["by_caller"]["key:alice"]["tokens"]["total"] == 42
    assert gw.usage.truncation_rate() == 1.0
    assert gw.usage.tokens_per_request() == 42
    assert sample("corral_gateway_model_load_time_seconds_count", model="m") == loads + 1
    assert sample("corral_gateway_context_truncations_total", model="m") == truncations + 1
    assert sample("corral_gateway_tokens_total", model="m", kind="prompt") == prompt + 30


async def test_a_failed_request_is_logged_with_its_status_and_counted_as_an_error(
    aiohttp_client: AiohttpClient,
) -> None:
    gw = gateway_with_boards()
    gw.hub.feed(
        RID,
        Failed(request_id=RID, status=503, error_type="ollama_connection_error", message="down"),
    )
    client = await aiohttp_client(chat_app(gw))
    with capture_logs() as logs:
        assert (await client.post("/chat", json={})).status == 503
    [line] = access_lines(logs)
    assert (line["status"], line["model"], line["request_id"]) == (503, "m", RID)
    assert "queue_wait_ms" not in line
    report = gw.usage.report()
    assert (report["requests"], report["errors"]) == (1, 1)
    assert report["by_model"]["m"]["errors"] == 1


async def test_a_stream_that_breaks_after_its_200_is_logged_with_its_error(
    aiohttp_client: AiohttpClient,
) -> None:
    gw = gateway_with_boards()
    gw.hub.feed(
        RID,
        Started(request_id=RID, waited_ms=3),
        Tokens(request_id=RID, seq=0, chunks=[chunk("Hel")]),
        Failed(request_id=RID, status=502, error_type="backend_error", message="cut"),
    )
    client = await aiohttp_client(chat_app(gw, stream=True))
    with capture_logs() as logs:
        response = await client.post("/chat", json={})
        assert response.status == 200
        assert b"cut" in await response.read()
    [line] = access_lines(logs)
    assert (line["status"], line["error"], line["queue_wait_ms"]) == (200, "backend_error", 3)
    assert gw.usage.total.errors == 1
    assert gw.usage.generations == 0


async def test_unknown_routes_are_logged_and_probes_only_at_debug(
    aiohttp_client: AiohttpClient,
) -> None:
    app = web.Application(middlewares=[access_log_middleware()])

    async def ok(request: web.Request) -> web.Response:
        return web.Response(text="ok")

    app.router.add_get("/health", ok)
    client = await aiohttp_client(app)
    with capture_logs() as logs:
        assert (await client.get("/nowhere?api_key=crl_x")).status == 404
        assert (await client.get("/health")).status == 200
    missing, probe = access_lines(logs)
    assert (missing["status"], missing["path"], missing["log_level"]) == (404, "/nowhere", "info")
    assert "model" not in missing and "key_id" not in missing
    assert probe["log_level"] == "debug"
    assert "crl_x" not in repr(logs)


async def test_switched_off_the_access_log_says_nothing_but_usage_still_counts(
    aiohttp_client: AiohttpClient,
) -> None:
    gw = gateway_with_boards()
    gw.hub.feed(RID, done())
    app = chat_app(gw)
    app.middlewares[0] = access_log_middleware(enabled=False)
    client = await aiohttp_client(app)
    with capture_logs() as logs:
        assert (await client.post("/chat", json={})).status == 200
    assert access_lines(logs) == []
    assert gw.usage.total.requests == 1


def test_callers_are_keys_then_client_ids_then_addresses() -> None:
    assert caller_key(alice(), "10.0.0.7") == "key:alice"
    keyed = Caller(scope="user", address="a", key_id="key_b")
    assert caller_key(keyed, "a") == "key:key_b"
    assert caller_key(Caller(scope=None, address="a", client_id="bot"), "a") == "client:bot"
    assert caller_key(None, "10.0.0.9") == "ip:10.0.0.9"


# -- the usage totals ------------------------------------------------------------------------------


def record(model: str | None = "m", **fields: Any) -> RequestRecord:
    return RequestRecord(model=model, kind="chat", **fields)


def test_usage_counts_requests_that_named_a_model_by_model_and_caller() -> None:
    usage = Usage()
    usage.add(record(prompt_tokens=10, generated_tokens=5, truncated=False), 200, "key:a")
    usage.add(record("n", prompt_tokens=1, generated_tokens=1, truncated=True), 200, "key:b")
    usage.add(record(), 404, "key:a")
    usage.add(record(None), 200, "key:a")  # GET /api/tags: no model, not counted
    report = usage.report()
    assert (report["requests"], report["errors"], report["tokens"]["total"]) == (3, 1, 17)
    assert report["by_model"]["m"]["requests"] == 2
    assert report["by_caller"]["key:a"] == {
        "requests": 2,
        "errors": 1,
        "tokens": {"prompt": 10, "generated": 5, "total": 15},
    }
    assert usage.truncation_rate() == 0.5
    # Tokens per answered generation: (15 + 2) / 2.
    assert usage.tokens_per_request() == 8


def test_usage_rows_are_bounded() -> None:
    usage = Usage()
    for n in range(MAX_ROWS + 10):
        usage.add(record(f"model-{n}"), 404, f"ip:{n}")
    assert len(usage.by_model) == MAX_ROWS + 1
    assert usage.by_model[OTHER].requests == 10
    assert usage.by_caller[OTHER].requests == 10


def test_an_idle_gateway_reports_zero_rates() -> None:
    assert (Usage().truncation_rate(), Usage().tokens_per_request()) == (0.0, 0)


# -- model swaps per hour --------------------------------------------------------------------------


def test_swaps_in_the_last_hour_from_cumulative_counts() -> None:
    history = SwapHistory(window_s=3600)
    # First heard with 5 swaps made at unknown times: the baseline, not counted.
    history.record("s1", 0.0, 5)
    assert history.in_window(0.0) == 0
    history.record("s1", 100.0, 7)
    history.record("s1", 200.0, 7)
    history.record("s2", 300.0, 0)
    history.record("s2", 400.0, 3)
    assert history.in_window(500.0) == 5
    # An hour after s1's last change, its swaps have left the window; s2's not yet.
    assert history.in_window(3700.0) == 3
    assert history.in_window(4100.0) == 0
    # A count that goes backwards starts over.
    history.record("s2", 4200.0, 1)
    history.record("s2", 4300.0, 2)
    assert history.in_window(4300.0) == 1


def status(scheduler: str, sent_at: float, swaps: list[int], waiting: int = 0) -> SchedulerStatus:
    return SchedulerStatus(
        scheduler_id=scheduler,
        sent_at=sent_at,
        backend=BackendStatus(url="http://b", connected=True),
        servers=[
            ServerStatus(name=f"b{n}", url="http://b", connected=True, swaps=count)
            for n, count in enumerate(swaps)
        ],
        queue=QueueStatus(waiting=waiting, running=1, average_wait_ms=0, processing_rate=0.0),
    )


def test_the_board_sums_the_servers_swaps_and_exports_the_queue() -> None:
    now = [1000.0]
    board = ObservedStatusBoard(10.0, clock=lambda: now[0])
    board.update(status("s1", 1000.0, [1, 2], waiting=4))
    now[0] = 1001.0
    board.update(status("s1", 1001.0, [2, 4], waiting=3))
    assert board.swaps_per_hour() == 3
    assert sample("corral_gateway_queue_depth", state="waiting") == 3
    assert sample("corral_gateway_queue_depth", state="running") == 1
    now[0] = 1100.0  # silent: its statuses are stale, the lane is not shown as full
    assert sample("corral_gateway_queue_depth", state="waiting") == 0


# -- /health's blocks and GET /admin/usage ---------------------------------------------------------


def counts(active: int, at: float) -> SessionCounts:
    return SessionCounts(active=active, total=active + 2, archived_today=1, counted_at=at)


def store(instance: str, sessions: SessionCounts | None) -> StoreStatus:
    return StoreStatus(
        instance_id=instance,
        sent_at=sessions.counted_at if sessions else 0.0,
        database=DatabaseStatus(up=True),
        sessions=sessions,
    )


def test_health_blocks_are_null_until_heard_then_the_newest_count() -> None:
    gw = gateway_with_boards()
    models = FakeModels()
    gw.models = models  # type: ignore[attr-defined]
    gateway = gw.as_gateway()
    assert sessions_block(gateway)["active"] is None
    assert models_available(gateway) is None
    gw.hub.stores.update(store("a", counts(3, 200.0)))  # type: ignore[attr-defined]
    gw.hub.stores.update(store("b", counts(4, 100.0)))  # type: ignore[attr-defined]
    gw.hub.stores.update(store("c", None))  # type: ignore[attr-defined]
    assert sessions_block(gateway) == {
        "active": 3,
        "total": 5,
        "archived_today": 1,
        "counted_at": 200.0,
    }
    models.update(ModelList(sent_at=1.0, models=["a", "b:latest", "c"]))
    assert models_available(gateway) == 3
    assert metrics_block(gateway) == {
        "context_truncation_rate": 0.0,
        "average_tokens_per_request": 0,
        "model_switches_per_hour": 0,
    }


class FakeModels:
    """The model directory's list, as the model manager broadcast it."""

    def __init__(self) -> None:
        self.names: list[str] = []
        self.updated_at = 0.0

    def update(self, models: ModelList) -> None:
        self.names = models.models
        self.updated_at = models.sent_at


@pytest.fixture
async def admin_client(aiohttp_client: AiohttpClient) -> tuple[Any, FakeGateway]:
    gw = gateway_with_boards()
    app = web.Application(middlewares=[access_log_middleware()])
    app[GATEWAY] = cast(Gateway, gw)
    admin.add_routes(app.router)
    return await aiohttp_client(app), gw


async def test_the_usage_report(admin_client: tuple[Any, FakeGateway]) -> None:
    client, gw = admin_client
    gw.usage.add(record(prompt_tokens=3, generated_tokens=4), 200, "key:alice")
    gw.hub.stores.update(store("a", counts(7, 50.0)))  # type: ignore[attr-defined]
    response = await client.get("/admin/usage")
    assert response.status == 200
    report = await response.json()
    assert report["scope"] == "gateway"
    assert (report["requests"], report["errors"], report["tokens"]["total"]) == (1, 0, 7)
    assert report["by_model"]["m"]["tokens"] == {"prompt": 3, "generated": 4, "total": 7}
    assert list(report["by_caller"]) == ["key:alice"]
    assert report["sessions"]["active"] == 7
    assert report["uptime_s"] >= 0
