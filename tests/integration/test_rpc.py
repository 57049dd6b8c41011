"""corral_common.rpc over a real RabbitMQ."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest

from corral_common.broker import Broker
from corral_common.contracts.session_store import SESSION_STORE, SearchParams, SearchResult
from corral_common.errors import CorralError, ErrorType
from corral_common.rpc import MethodTable, RpcClient, RpcServer, rpc_route
from corral_common.settings import CorralSettings


@pytest.fixture
async def pair(fresh_broker: Callable[[], str]) -> AsyncIterator[tuple[RpcServer, RpcClient]]:
    broker = Broker(CorralSettings(amqp_url=fresh_broker()), "test")
    await broker.start()

    async def echo(params: dict[str, Any]) -> Any:
        return {"echo": params}

    async def missing(params: dict[str, Any]) -> Any:
        raise CorralError(ErrorType.SESSION_NOT_FOUND, "no such session", details=params)

    async def broken(params: dict[str, Any]) -> Any:
        raise ValueError("a bug")

    server = RpcServer(broker, "things", {"echo": echo, "missing": missing, "broken": broken})
    await server.start()
    client = RpcClient(broker, timeout_s=2)
    await client.start()
    yield server, client
    await client.close()
    await server.close()
    await broker.close()


async def test_call_returns_the_result(pair: tuple[RpcServer, RpcClient]) -> None:
    _, client = pair
    assert await client.call_raw("things", "echo", a=1, b=["x"]) == {"echo": {"a": 1, "b": ["x"]}}


async def test_corral_errors_cross_the_wire_intact(pair: tuple[RpcServer, RpcClient]) -> None:
    _, client = pair
    with pytest.raises(CorralError) as info:
        await client.call_raw("things", "missing", session_id="s1")
    assert info.value.error_type is ErrorType.SESSION_NOT_FOUND
    assert info.value.status == 404
    assert info.value.details == {"session_id": "s1"}


async def test_handler_bugs_are_internal_errors(pair: tuple[RpcServer, RpcClient]) -> None:
    _, client = pair
    with pytest.raises(CorralError) as info:
        await client.call_raw("things", "broken")
    assert info.value.error_type is ErrorType.INTERNAL_ERROR
    assert "a bug" not in info.value.message  # no internals leak to callers
    with pytest.raises(CorralError):
        await client.call_raw("things", "nope")


async def test_a_service_nobody_serves_is_a_prompt_503(
    pair: tuple[RpcServer, RpcClient],
) -> None:
    _, client = pair
    with pytest.raises(CorralError) as info:
        await client.call_raw("nobody", "echo")
    assert info.value.status == 503
    assert "no instance" in info.value.message


async def test_a_lane_keeps_slow_methods_apart(fresh_broker: Callable[[], str]) -> None:
    """Methods on a lane are served from a queue of their own: with the lane's window full of
    slow calls, a call on the main queue is answered at once, and errors keep their headers."""
    broker = Broker(CorralSettings(amqp_url=fresh_broker()), "test")
    await broker.start()
    lanes = {"things": {"slow": "reads"}}
    release = asyncio.Event()
    started = 0

    async def slow(params: dict[str, Any]) -> Any:
        nonlocal started
        started += 1
        await release.wait()
        return "slow"

    async def fast(params: dict[str, Any]) -> Any:
        return "fast"

    async def busy(params: dict[str, Any]) -> Any:
        raise CorralError(
            ErrorType.RATE_LIMIT_EXCEEDED, "busy", status=503, headers={"Retry-After": "2"}
        )

    server = RpcServer(broker, "things", {"slow": slow, "fast": fast, "busy": busy}, lanes=lanes)
    await server.start(prefetch=2, lane_prefetch={"reads": 1})
    client = RpcClient(broker, timeout_s=10, lanes=lanes)
    await client.start()
    try:
        slow_calls = [asyncio.create_task(client.call_raw("things", "slow")) for _ in range(3)]
        # The main queue is not behind the lane's backlog (its window of one is taken).
        assert await client.call_raw("things", "fast") == "fast"
        assert started <= 1
        with pytest.raises(CorralError) as info:
            await client.call_raw("things", "busy")
        assert (info.value.status, info.value.headers) == (503, {"Retry-After": "2"})
        release.set()
        assert await asyncio.gather(*slow_calls) == ["slow"] * 3
    finally:
        await client.close()
        await server.close()
        await broker.close()


async def test_declared_methods_over_the_broker(fresh_broker: Callable[[], str]) -> None:
    """A typed call and a server by declaration: the lane from the declaration, params parsed
    on arrival, the result validated on return."""
    broker = Broker(CorralSettings(amqp_url=fresh_broker()), "test")
    await broker.start()
    table = MethodTable(SESSION_STORE.service)

    @table.serves(SESSION_STORE.search)
    async def search(p: SearchParams) -> SearchResult:
        return SearchResult(query=p.q, results=[{"hit": p.limit}], count=1, partial=False)

    server = RpcServer(broker, SESSION_STORE.service, table.handlers)
    await server.start()
    client = RpcClient(broker, timeout_s=5)
    await client.start()
    try:
        found = await client.call(SESSION_STORE.search, SearchParams(q=" two  words", limit=3))
        assert found == SearchResult(
            query="two words", results=[{"hit": 3}], count=1, partial=False
        )
        # The untyped path routes by RPC_LANES, the typed one by the declaration: one queue.
        assert rpc_route(SESSION_STORE.service, "search") == SESSION_STORE.search.route
        with pytest.raises(CorralError) as bad:
            await client.call_raw(SESSION_STORE.service, "search", q="", limit=3)
        assert (bad.value.error_type, bad.value.status) == (ErrorType.INVALID_REQUEST, 400)
        assert bad.value.message == "invalid q: Value error, must not be empty"
    finally:
        await client.close()
        await server.close()
        await broker.close()
