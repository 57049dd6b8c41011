"""A request's own terms at the edge: the total deadline and retry terms read from a request
(body, header, options) and carried by the job (test_extensions.py shows them stripped before
the backend); the relay's answers past the deadline; and `retry_after` in Corral's error bodies
wherever Retry-After is said."""

from __future__ import annotations

import time
from typing import Any, cast

import orjson
import pytest
from aiohttp import web
from aiohttp.test_utils import make_mocked_request
from pytest_aiohttp import AiohttpClient

from corral_common.errors import CorralError, ErrorType
from corral_common.messages import Failed, Started, Tokens
from corral_gateway import relay as relay_module
from corral_gateway.extensions import Extensions, read_extensions
from corral_gateway.relay import RelayTimings
from corral_gateway.request_terms import RequestTerms, read_terms
from corral_gateway.surfaces import CORRAL, OLLAMA, Route, answer_with, corral_error
from corral_gateway.ticket import run_job
from corral_gateway.validation import OllamaRequestError
from services.gateway.tests import fakes
from services.gateway.tests.fakes import FakeGateway, chunk, job

RID = "req-terms"
NOW = 1_000_000.0


def request(**headers: str) -> web.Request:
    return make_mocked_request("POST", "/api/chat", headers=headers)


def terms(body: dict[str, Any], **headers: str) -> RequestTerms:
    options = body.get("options") or {}
    return read_terms(request(**headers), body, options, arrived_at=NOW)


# --- reading the terms ------------------------------------------------------------------------


def test_the_deadline_comes_from_the_body_a_header_or_the_options() -> None:
    assert terms({"timeout_ms": 120000}).finish_by == NOW + 120
    assert terms({}, **{"X-Request-Timeout": "2.5"}).finish_by == NOW + 2.5
    assert terms({"options": {"timeout": 30}}).finish_by == NOW + 30
    assert terms({}) == RequestTerms()
    # The body first, then the header, then the options.
    both = {"timeout_ms": 1000, "options": {"timeout": 99}}
    assert terms(both, **{"X-Request-Timeout": "50"}).finish_by == NOW + 1
    assert terms({"options": {"timeout": 99}}, **{"X-Request-Timeout": "50"}).finish_by == NOW + 50


def test_the_retry_terms_come_from_the_body_or_the_options() -> None:
    assert terms({"max_retries": 5, "retry_backoff": 2.0}) == RequestTerms(None, 5, 2.0)
    assert terms({"options": {"max_retries": 0, "retry_backoff": 0}}) == RequestTerms(None, 0, 0.0)
    assert terms({"max_retries": 1, "options": {"max_retries": 4}}).max_retries == 1


@pytest.mark.parametrize(
    ("body", "headers", "names"),
    [
        ({"timeout_ms": 0}, {}, "timeout_ms"),
        ({"timeout_ms": -5}, {}, "timeout_ms"),
        ({"timeout_ms": "1000"}, {}, "timeout_ms"),  # a body field is a number, not text
        ({"timeout_ms": True}, {}, "timeout_ms"),
        ({}, {"X-Request-Timeout": "soon"}, "X-Request-Timeout"),
        ({}, {"X-Request-Timeout": "0"}, "X-Request-Timeout"),
        ({"options": {"timeout": "nan"}}, {}, "options.timeout"),
        ({"max_retries": -1}, {}, "max_retries"),
        ({"max_retries": 1.5}, {}, "max_retries"),
        ({"options": {"max_retries": "3"}}, {}, "max_retries"),
        ({"retry_backoff": -0.1}, {}, "retry_backoff"),
        ({"retry_backoff": [1]}, {}, "retry_backoff"),
    ],
)
def test_values_that_cannot_be_terms_are_refused_naming_the_field(
    body: dict[str, Any], headers: dict[str, str], names: str
) -> None:
    with pytest.raises(OllamaRequestError) as refused:
        terms(body, **headers)
    assert refused.value.status == 400
    assert names in refused.value.message


def test_the_queue_deadline_is_the_total_deadline_when_that_comes_first() -> None:
    ext = read_extensions(request(**{"X-Queue-Timeout": "60"}), {"model": "m", "timeout_ms": 5000})
    finish_by = ext.finish_by()
    assert finish_by is not None and finish_by == pytest.approx(ext.arrived_at + 5, abs=0.1)
    assert ext.deadline() == finish_by
    # A shorter queue timeout stays the queue's deadline; the total one is still the answer's.
    ext = read_extensions(
        request(**{"X-Queue-Timeout": "1"}), {"model": "m", "options": {"timeout": 30}}
    )
    assert ext.deadline() == pytest.approx(ext.arrived_at + 1, abs=0.1)
    assert ext.finish_by() == pytest.approx(ext.arrived_at + 30, abs=0.1)
    # Neither: no deadline at all.
    ext = read_extensions(request(), {"model": "m"})
    assert (ext.deadline(), ext.finish_by()) == (None, None)


# --- the job carries them ---------------------------------------------------------------------


async def test_the_job_submitted_carries_the_requests_terms() -> None:
    gw = FakeGateway()
    gw.hub.feed(RID, Failed(request_id=RID, status=404, error_type="x", message="x"))
    own = RequestTerms(finish_by=NOW + 10, max_retries=1, retry_backoff_s=0.25)
    with pytest.raises(CorralError):
        await run_job(gw.as_gateway(), job(RID, enqueued_at=NOW, deadline=NOW + 600), own)
    [sent] = gw.submitter.submitted
    assert (sent.finish_by, sent.max_retries, sent.retry_backoff_s) == (NOW + 10, 1, 0.25)
    # It must not start when it could no longer finish: its queue deadline is the sooner.
    assert sent.deadline == NOW + 10
    # Without terms, the job is as built.
    gw = FakeGateway()
    gw.hub.feed(RID, Failed(request_id=RID, status=404, error_type="x", message="x"))
    with pytest.raises(CorralError):
        await run_job(gw.as_gateway(), job(RID, enqueued_at=NOW, deadline=NOW + 600))
    [sent] = gw.submitter.submitted
    assert (sent.finish_by, sent.deadline) == (None, NOW + 600)


# --- the relay past the deadline --------------------------------------------------------------


def relay_app(gw: FakeGateway, ext: Extensions, *, stream: bool) -> web.Application:
    timings = RelayTimings(heartbeat_s=60, straggler_timeout_s=1, stored_timeout_s=0)
    return fakes.relay_app(gw, ext, job(RID, enqueued_at=NOW), timings=timings, stream=stream)


def extensions(timeout_s: float) -> Extensions:
    return Extensions(
        request_id=RID,
        session_id=None,
        queue_progress=False,
        client_key=None,
        terms=RequestTerms(finish_by=time.time() + timeout_s, max_retries=2),
    )


def lanes_timeout() -> Failed:
    return Failed(
        request_id=RID,
        status=504,
        error_type="backend_timeout",
        message="request timed out after 1.0 s (its deadline) while generating; the "
        "generation was stopped and its partial answer is not kept",
        details={"stage": "generating"},
    )


async def test_the_lanes_timeout_is_a_504_or_the_streams_last_line(
    aiohttp_client: AiohttpClient,
) -> None:
    gw = FakeGateway()
    gw.hub.feed(RID, Started(request_id=RID, waited_ms=0), lanes_timeout())
    client = await aiohttp_client(relay_app(gw, extensions(60), stream=False))
    response = await client.post("/chat")
    assert response.status == 504
    assert (await response.json())["error"].startswith("request timed out after 1.0 s")
    # The job carried the terms the relay holds the request to.
    [sent] = gw.submitter.submitted
    assert sent.max_retries == 2 and sent.finish_by is not None

    gw = FakeGateway()
    gw.hub.feed(
        RID,
        Started(request_id=RID, waited_ms=0),
        Tokens(request_id=RID, seq=0, chunks=[chunk("Echo:"), chunk(" part")]),
        lanes_timeout(),
    )
    client = await aiohttp_client(relay_app(gw, extensions(60), stream=True))
    response = await client.post("/chat")
    assert response.status == 200
    got = [orjson.loads(line) for line in (await response.read()).splitlines()]
    # The tokens already sent, then the error as the last line, and no `done` chunk.
    assert [c["message"]["content"] for c in got[:2]] == ["Echo:", " part"]
    assert set(got[-1]) == {"error"} and "not kept" in got[-1]["error"]
    assert not any(c.get("done") for c in got)


async def test_when_the_lane_says_nothing_the_relay_answers_504_and_cancels(
    aiohttp_client: AiohttpClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The scheduler gone mid-generation: the relay answers at the deadline (its grace cut to
    nothing here) and leaving cancels the job."""
    monkeypatch.setattr(relay_module, "FINISH_GRACE_S", 0.0)
    gw = FakeGateway()
    gw.hub.feed(RID, Started(request_id=RID, waited_ms=0))
    client = await aiohttp_client(relay_app(gw, extensions(0.05), stream=False))
    response = await client.post("/chat")
    assert response.status == 504
    assert "its deadline" in (await response.json())["error"]
    await gw.settle()
    assert gw.submitter.cancels == [RID]


async def test_past_the_deadline_while_queued_is_a_408(aiohttp_client: AiohttpClient) -> None:
    gw = FakeGateway()
    gw.hub.feed(RID)  # never started
    ext = extensions(0.05)
    ext = Extensions(**{**ext.__dict__, "queue_timeout_s": 600.0})
    client = await aiohttp_client(relay_app(gw, ext, stream=False))
    response = await client.post("/chat")
    assert response.status == 408
    await gw.settle()
    assert gw.submitter.cancels == [RID]


# --- retry_after in Corral's bodies -----------------------------------------------------------


def rendered(error: CorralError, headers: dict[str, str] | None = None) -> tuple[Any, Any]:
    response = corral_error(error, headers or {})
    assert isinstance(response, web.Response) and response.body is not None
    return orjson.loads(cast(bytes, response.body)), response.headers


@pytest.mark.parametrize(
    ("error", "seconds"),
    [
        (CorralError(ErrorType.RATE_LIMIT_EXCEEDED, "slow down", headers={"Retry-After": "7"}), 7),
        (CorralError(ErrorType.QUEUE_FULL, "full", details={"retry_after_s": 3}), 3),
        (CorralError(ErrorType.BROKER_UNAVAILABLE, "away", headers={"Retry-After": "5"}), 5),
        (CorralError(ErrorType.QUEUE_FULL, "full", details={"retry_after_s": 2.2}), 3),
    ],
)
def test_corral_errors_carry_retry_after_in_the_body_and_the_header(
    error: CorralError, seconds: int
) -> None:
    body, headers = rendered(error)
    assert body["error"]["retry_after"] == seconds
    assert headers["Retry-After"] == str(seconds)
    assert body["error"]["type"] == str(error.error_type)
    assert body["error"]["message"] == error.message


def test_an_error_that_says_nothing_of_retrying_has_neither() -> None:
    body, headers = rendered(CorralError(ErrorType.SESSION_NOT_FOUND, "no such session"))
    assert "retry_after" not in body["error"]
    assert "Retry-After" not in headers


def test_a_retry_after_the_request_carries_is_said_in_the_body_too() -> None:
    body, headers = rendered(CorralError(ErrorType.QUEUE_FULL, "full"), {"Retry-After": "9"})
    assert (body["error"]["retry_after"], headers["Retry-After"]) == (9, "9")


async def test_each_surface_keeps_its_shape(aiohttp_client: AiohttpClient) -> None:
    """Corral's routes say retry_after in the body; Ollama's keep Ollama's `{"error"}`."""

    async def full(request: web.Request) -> web.StreamResponse:
        answer_with(request, {"X-Request-Id": RID})
        raise CorralError(ErrorType.QUEUE_FULL, "queue full", details={"retry_after_s": 4})

    app = web.Application()
    CORRAL.add(app.router, Route("GET", "/corral", full))
    OLLAMA.add(app.router, Route("GET", "/ollama", full))
    client = await aiohttp_client(app)
    corral = await client.get("/corral")
    assert (corral.status, corral.headers["Retry-After"]) == (503, "4")
    assert (await corral.json())["error"]["retry_after"] == 4
    ollama = await client.get("/ollama")
    assert ollama.status == 503
    assert await ollama.json() == {"error": "queue full"}
