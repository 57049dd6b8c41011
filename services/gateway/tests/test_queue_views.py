"""`GET /queue/{request_id}` by who asks: the request's owner, an admin, and everyone with auth
off see it with its model and priority; any other caller only its anonymous place in the lane.
Both where the view comes from: a request relayed by this gateway, and one only the
schedulers' lane report knows (relayed by another replica)."""

from __future__ import annotations

import time
from typing import Any, Literal, cast

import orjson
import pytest
from aiohttp import web
from aiohttp.test_utils import make_mocked_request

from corral_common.broker import BrokerUnavailable
from corral_common.errors import CorralError
from corral_common.messages import (
    Job,
    LaneEntry,
)
from corral_common.status_board import StatusBoard
from corral_gateway.corral.queue_views import where
from corral_gateway.identity.principal import CALLER, Caller
from corral_gateway.settings import GatewaySettings
from corral_gateway.state import GATEWAY, Gateway
from corral_gateway.usage import Usage
from services.gateway.tests import fakes

ALICE = Caller(scope="user", address="10.0.0.1", key_id="key_a", principal="alice")
BOB = Caller(scope="user", address="10.0.0.2", key_id="key_b", principal="bob")
ADMIN = Caller(scope="admin", address="10.0.0.3", key_id="operator", principal="operator")
ANONYMOUS = Caller(scope=None, address="127.0.0.1")

ANONYMOUS_FIELDS = {"request_id", "state", "position", "estimated_wait_ms"}


class View:
    """A relayed request as this gateway holds it."""

    def __init__(self, job: Job, where: tuple[int, int]) -> None:
        self.job: Job | None = job
        self.where: tuple[int, int] | None = where


class Broker:
    async def publish_control(self, routing_key: str, body: bytes) -> None:
        raise BrokerUnavailable("down")  # the view then answers from the last reports


class Hub:
    def __init__(self) -> None:
        self.status = StatusBoard(10.0)


class FakeGateway:
    def __init__(self, auth: Literal["off", "on"]) -> None:
        self.settings = GatewaySettings(auth=auth)
        self.relays: dict[str, Any] = {}
        self.hub = Hub()
        self.broker = Broker()
        self.status_asked_at = 0.0
        self.usage = Usage()


def job(request_id: str, owner: str) -> Job:
    return Job(
        request_id=request_id,
        gateway_id="gw",
        kind="chat",
        model="llama3.2",
        payload={},
        session_id="alices-diary",
        owner=owner,
        client_key=owner,
        priority="interactive",
        enqueued_at=time.time(),
    )


def gateway_with(auth: Literal["off", "on"], relayed_here: bool) -> FakeGateway:
    gw = FakeGateway(auth)
    if relayed_here:
        gw.relays["r1"] = View(job("r1", "alice"), (2, 1500))
        return gw
    entry = LaneEntry(
        request_id="r1",
        kind="chat",
        model="llama3.2",
        position=2,
        estimated_wait_ms=1500,
        waited_ms=10,
        priority="interactive",
        client_key="alice",
        owner="alice",
    )
    gw.hub.status.update(fakes.scheduler_status([entry], waiting=3, running=1))
    return gw


async def ask(gw: FakeGateway, caller: Caller, request_id: str = "r1") -> web.Response:
    app = web.Application()
    app[GATEWAY] = cast(Gateway, gw)
    request = make_mocked_request(
        "GET", f"/queue/{request_id}", app=app, match_info={"request_id": request_id}
    )
    request[CALLER] = caller
    return await where(request)


def body(response: web.Response) -> dict[str, Any]:
    assert response.body is not None
    return cast(dict[str, Any], orjson.loads(cast(bytes, response.body)))


@pytest.mark.parametrize("relayed_here", [True, False])
@pytest.mark.parametrize(
    ("auth", "caller"),
    [("on", ALICE), ("on", ADMIN), ("off", ANONYMOUS)],
)
async def test_whoever_may_see_the_request_gets_its_details(
    relayed_here: bool, auth: Literal["off", "on"], caller: Caller
) -> None:
    response = await ask(gateway_with(auth, relayed_here), caller)
    assert response.status == 200
    assert body(response) == {
        "request_id": "r1",
        "state": "queued",
        "position": 2,
        "estimated_wait_ms": 1500,
        "model": "llama3.2",
        "priority": "interactive",
    }
    assert response.headers["X-Queue-Position"] == "2"


@pytest.mark.parametrize("relayed_here", [True, False])
async def test_another_caller_sees_only_an_anonymous_position(relayed_here: bool) -> None:
    response = await ask(gateway_with("on", relayed_here), BOB)
    assert response.status == 200
    shown = body(response)
    assert set(shown) == ANONYMOUS_FIELDS
    assert (shown["position"], shown["estimated_wait_ms"]) == (2, 1500)
    raw = cast(bytes, response.body)
    for secret in (b"alice", b"llama3.2", b"alices-diary", b"interactive"):
        assert secret not in raw
    assert not any(b"alice" in value.encode() for value in response.headers.values())


async def test_an_unknown_request_is_not_found_for_everyone() -> None:
    for caller in (ALICE, BOB):
        with pytest.raises(CorralError) as caught:
            await ask(gateway_with("on", relayed_here=False), caller, "nobody")
        assert caught.value.status == 404
