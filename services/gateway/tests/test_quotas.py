"""Generated-token quotas (identity/quotas.py) against an in-process copy of the session store's
fixed-window counters, and the ticket that checks them before a generation is submitted and
charges its `eval_count` when it is done."""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import pytest
from aiohttp.test_utils import make_mocked_request

from corral_common.contracts.identity import CounterValue, CountParams, Counts, KeyLimits
from corral_common.errors import CorralError, ErrorType
from corral_common.messages import Done
from corral_gateway.encoders import NdjsonEncoder
from corral_gateway.extensions import Extensions
from corral_gateway.identity.principal import Caller
from corral_gateway.identity.quotas import TokenQuota, token_quota
from corral_gateway.ollama.chunks import OllamaChunks
from corral_gateway.relay import Relay, RelayTimings
from corral_gateway.settings import GatewaySettings
from corral_gateway.ticket import JobTicket, run_job
from services.gateway.tests.fakes import FakeGateway, alice, job

START = 19_676 * 86_400.0  # a day's start (so a minute's too), in November 2023


class Windows:
    """The store's fixed-window counters, in process: a window starts at a multiple of its
    length; `add` is added atomically and the window's total returned."""

    def __init__(self) -> None:
        self.totals: dict[tuple[str, str, float], int] = {}
        self.calls: list[CountParams] = []
        self.down = False

    async def __call__(self, params: CountParams) -> Counts:
        self.calls.append(params)
        if self.down:
            raise CorralError(ErrorType.INTERNAL_ERROR, "no answer", status=503)
        assert params.now is not None
        values = []
        for spec in params.counters:
            start = math.floor(params.now / spec.window_s) * spec.window_s
            key = (params.subject, spec.name, start)
            self.totals[key] = self.totals.get(key, 0) + spec.add
            values.append(
                CounterValue(name=spec.name, count=self.totals[key], reset_at=start + spec.window_s)
            )
        return Counts(counters=values)


class Clock:
    def __init__(self) -> None:
        self.now = START

    def __call__(self) -> float:
        return self.now


def user(**limits: int) -> Caller:
    return alice(limits=KeyLimits(**limits))


def quota(
    windows: Windows,
    clock: Clock,
    caller: Caller | None = None,
    *,
    tokens_per_minute: int = 0,
    tokens_per_day: int = 0,
) -> TokenQuota:
    settings = GatewaySettings(tokens_per_minute=tokens_per_minute, tokens_per_day=tokens_per_day)
    found = token_quota(caller or user(), settings, windows)
    assert found is not None
    return dataclasses.replace(found, wall=clock)


async def refusal(q: TokenQuota) -> CorralError:
    with pytest.raises(CorralError) as caught:
        await q.check()
    return caught.value


# --- which limits apply ---------------------------------------------------------------------


def test_no_limit_means_no_quota_and_no_counting() -> None:
    windows = Windows()
    assert token_quota(user(), GatewaySettings(), windows) is None
    # A key's own 0 turns a default off.
    off = user(tokens_per_minute=0, tokens_per_day=0)
    assert token_quota(off, GatewaySettings(tokens_per_minute=5, tokens_per_day=9), windows) is None
    assert windows.calls == []


def test_a_keys_own_limits_override_the_defaults() -> None:
    settings = GatewaySettings(tokens_per_minute=100, tokens_per_day=1000)
    found = token_quota(user(tokens_per_day=50), settings, Windows())
    assert found is not None
    assert [(limit.counter, limit.window_s, limit.limit) for limit in found.limits] == [
        ("tokens_minute", 60, 100),
        ("tokens_day", 86_400, 50),
    ]
    only_day = token_quota(user(tokens_per_minute=0), settings, Windows())
    assert only_day is not None and [limit.name for limit in only_day.limits] == ["tokens_per_day"]


def test_counters_are_the_callers_subject() -> None:
    anonymous = Caller(scope=None, address="192.0.2.9")
    found = token_quota(anonymous, GatewaySettings(tokens_per_day=10), Windows())
    assert found is not None and found.subject == "ip:192.0.2.9"
    assert quota(Windows(), Clock(), tokens_per_day=10).subject == "key:alice"


# --- checking and charging ------------------------------------------------------------------


async def test_usage_below_the_limit_passes_and_reaching_it_refuses() -> None:
    windows, clock = Windows(), Clock()
    q = quota(windows, clock, tokens_per_minute=100)
    await q.check()
    await q.charge(99)
    await q.check()
    clock.now += 15
    await q.charge(1)
    error = await refusal(q)
    assert error.status == 429 and error.error_type == ErrorType.RATE_LIMIT_EXCEEDED
    assert error.headers == {"Retry-After": "45"}
    assert error.details == {
        "limit": "tokens_per_minute",
        "allowed": 100,
        "used": 100,
        "reset_at": START + 60,
        "retry_after_s": 45,
    }
    assert "100 of 100 tokens per minute" in error.message
    # Checking only reads: refused checks add nothing.
    assert all(spec.add == 0 for call in windows.calls[-1:] for spec in call.counters)
    clock.now = START + 60
    await q.check()  # a new minute


async def test_the_day_holds_after_the_minute_has_passed() -> None:
    windows, clock = Windows(), Clock()
    q = quota(windows, clock, tokens_per_minute=100, tokens_per_day=150)
    await q.charge(80)
    clock.now += 60
    await q.charge(80)
    clock.now += 60
    error = await refusal(q)
    assert error.details["limit"] == "tokens_per_day"
    assert error.details["used"] == 160
    assert error.headers["Retry-After"] == str(86_400 - 120)


async def test_every_exhausted_window_must_end_before_the_next_request() -> None:
    windows, clock = Windows(), Clock()
    q = quota(windows, clock, tokens_per_minute=10, tokens_per_day=10)
    await q.charge(10)
    error = await refusal(q)
    assert error.details["limit"] == "tokens_per_day"  # the later reset decides
    assert error.headers["Retry-After"] == "86400"


async def test_callers_are_counted_apart() -> None:
    windows, clock = Windows(), Clock()
    alice = quota(windows, clock, tokens_per_minute=10)
    bob = quota(windows, clock, user(), tokens_per_minute=10)
    bob = dataclasses.replace(bob, subject="key:bob")
    await alice.charge(10)
    await refusal(alice)
    await bob.check()


async def test_unreachable_counters_let_requests_through() -> None:
    windows, clock = Windows(), Clock()
    q = quota(windows, clock, tokens_per_minute=1)
    await q.charge(5)
    windows.down = True
    await q.check()  # fail open
    await q.charge(5)  # logged, not raised
    windows.down = False
    assert (await refusal(q)).details["used"] == 5


# --- the ticket -----------------------------------------------------------------------------


def done(request_id: str, **final: Any) -> Done:
    return Done(
        request_id=request_id,
        token_batches=0,
        final={"done": True, **final},
        text="",
        waited_ms=0,
        model="m",
    )


async def test_a_generation_over_its_quota_is_never_submitted() -> None:
    gw, windows, clock = FakeGateway(), Windows(), Clock()
    q = quota(windows, clock, tokens_per_minute=10)
    await q.charge(10)
    async with JobTicket(gw.as_gateway(), "r1", q) as ticket:
        with pytest.raises(CorralError) as caught:
            await ticket.submit(job("r1"))
        assert caught.value.status == 429
        assert not ticket.in_lane and ticket.job is None
    assert gw.submitter.submitted == []
    # Embeddings generate no tokens: not held back by the quota.
    gw.hub.feed("e1", done("e1"))
    await run_job(gw.as_gateway(), job("e1", "embed"))
    assert [j.request_id for j in gw.submitter.submitted] == ["e1"]
    assert gw.submitter.cancels == []


async def test_a_finished_generation_is_charged_once_in_the_background() -> None:
    gw, windows, clock = FakeGateway(), Windows(), Clock()
    q = quota(windows, clock, tokens_per_minute=100, tokens_per_day=1000)
    async with JobTicket(gw.as_gateway(), "r1", q) as ticket:
        await ticket.submit(job("r1"))
        assert ticket.job is not None and ticket.job.request_id == "r1"
        ticket.events.put_nowait(done("r1", eval_count=42))
        await ticket.outcome()
        ticket.settle(done("r1", eval_count=42))  # settling again charges nothing more
    await gw.settle()
    charged = [call for call in windows.calls if any(spec.add for spec in call.counters)]
    assert len(charged) == 1
    assert [(spec.name, spec.add) for spec in charged[0].counters] == [
        ("tokens_minute", 42),
        ("tokens_day", 42),
    ]
    await q.charge(58)
    assert (await refusal(q)).details["used"] == 100
    assert gw.submitter.cancels == []


@pytest.mark.parametrize("final", [{}, {"eval_count": 0}, {"eval_count": True}])
async def test_an_answer_without_generated_tokens_costs_nothing(final: dict[str, Any]) -> None:
    gw, windows, clock = FakeGateway(), Windows(), Clock()
    q = quota(windows, clock, tokens_per_minute=100)
    async with JobTicket(gw.as_gateway(), "r1", q) as ticket:
        await ticket.submit(job("r1"))
        ticket.settle(done("r1", **final))
    await gw.settle()
    assert gw.background == [] and gw.submitter.cancels == []
    assert all(spec.add == 0 for call in windows.calls for spec in call.counters)


async def test_a_relayed_generation_is_charged_when_it_is_done() -> None:
    gw, windows, clock = FakeGateway(), Windows(), Clock()
    q = quota(windows, clock, tokens_per_day=1000)
    ext = Extensions(request_id="r1", session_id=None, queue_progress=True, client_key=None)
    async with JobTicket(gw.as_gateway(), "r1", q) as ticket:
        relay = Relay(
            make_mocked_request("POST", "/api/chat"),
            ticket=ticket,
            kind="chat",
            stream=False,
            ext=ext,
            shape=OllamaChunks("chat", "m"),
            encoder=NdjsonEncoder(),
            extras=lambda done, first_position: {},
            timings=RelayTimings(heartbeat_s=60, straggler_timeout_s=60, stored_timeout_s=60),
        )
        await ticket.submit(job("r1"))
        ticket.events.put_nowait(done("r1", eval_count=7, message={"content": ""}))
        response = await relay.run()
        assert response.status == 200
    await gw.settle()
    assert [(spec.name, spec.add) for spec in windows.calls[-1].counters] == [("tokens_day", 7)]
    assert gw.submitter.cancels == []
