"""Request/reply over RabbitMQ (`corral.rpc`), for the gateway's queries to other services.

A server consumes its own queue `rpc.<service>` and dispatches on `method`; a client publishes
with a correlation id and `reply_to` its private reply queue, and awaits the matching reply.
Bodies are JSON: `{"method", "params"}` in, `{"ok": true, "result"}` or `{"ok": false, "error":
{"type", "message", "status", "details", "headers"}}` out, so a CorralError raised by a handler
reaches the caller as the same CorralError (a `Retry-After` included).

Every method is declared once in `corral_common.contracts` (service, name, params and result
models, lane): `RpcClient.call(method, params)` sends the params model and returns the result
model, validated; a server registers its handlers by declaration (`MethodTable`), each handed
its params parsed by `contracts.parse`, so every server refuses bad params alike.

Lanes: a service's slow methods (the session store's search, stats, history and list) are
declared on a lane and served from a queue of their own, `rpc.<service>.<lane>`, with its
own consumer and prefetch window, so a burst of them waits behind its own kind and never
in front of the hot path (context assembly) on `rpc.<service>`. `RPC_LANES` is that table,
read from the declarations; a typed call routes by its declaration.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable, Mapping
from typing import Any, TypeVar

import aio_pika
import aiormq
import structlog
from aio_pika.abc import AbstractChannel, AbstractExchange, AbstractIncomingMessage, AbstractQueue
from pydantic import ValidationError

from corral_common import jsonutil
from corral_common.broker import Broker
from corral_common.contracts import Method, Params, Result, lanes_of, parse
from corral_common.contracts.conversations import CONVERSATIONS
from corral_common.contracts.identity import IDENTITY
from corral_common.contracts.model_manager import MODEL_MANAGER
from corral_common.contracts.session_store import SESSION_STORE
from corral_common.errors import CorralError, ErrorType
from corral_common.ids import new_id
from corral_common.telemetry import extract_context, inject_context, tracer
from corral_common.timeouts import within

log = structlog.get_logger(__name__)

RPC_EXCHANGE = "corral.rpc"
Handler = Callable[[dict[str, Any]], Awaitable[Any]]
P = TypeVar("P", bound=Params)
R = TypeVar("R", bound=Result)


# service -> method -> lane: methods that may be slow, served apart from the service's others.
RPC_LANES: dict[str, dict[str, str]] = lanes_of(
    [SESSION_STORE, IDENTITY, CONVERSATIONS, MODEL_MANAGER]
)


class MethodTable:
    """A server's methods, registered by declaration:

        table = MethodTable(SESSION_STORE.service)

        @table.serves(SESSION_STORE.history)
        async def history(params: HistoryParams) -> HistoryResult: ...

    Each handler gets its params parsed (`contracts.parse`: bad ones are refused with
    `invalid_request` before it runs) and returns its declared result, which travels dumped.
    `handlers` is what `RpcServer` serves."""

    def __init__(self, service: str) -> None:
        self.service = service
        self.handlers: dict[str, Handler] = {}

    def serves(
        self, method: Method[P, R]
    ) -> Callable[[Callable[[P], Awaitable[R]]], Callable[[P], Awaitable[R]]]:
        if method.service != self.service:
            raise ValueError(f"{method} is not a method of {self.service}")

        def register(handler: Callable[[P], Awaitable[R]]) -> Callable[[P], Awaitable[R]]:
            async def serve(params: dict[str, Any]) -> Any:
                result = await handler(parse(method.params, params))
                return result.wire()

            self.handlers[method.name] = serve
            return handler

        return register


def rpc_route(service: str, method: str, lanes: Mapping[str, Mapping[str, str]] = RPC_LANES) -> str:
    """The routing key (and queue suffix) a method's requests go to: `<service>` or, for a
    method on a lane of its own, `<service>.<lane>`."""
    lane = lanes.get(service, {}).get(method)
    return service if lane is None else f"{service}.{lane}"


def rpc_queue_name(route: str) -> str:
    return f"rpc.{route}"


async def _rpc_exchange(channel: AbstractChannel) -> AbstractExchange:
    return await channel.declare_exchange(RPC_EXCHANGE, aio_pika.ExchangeType.DIRECT, durable=True)


class RpcServer:
    """Serves `methods` on `rpc.<service>`, and those on a lane (`RPC_LANES`) on
    `rpc.<service>.<lane>`, each queue with a consumer and prefetch window of its own;
    replicas share the queues and so the load."""

    def __init__(
        self,
        broker: Broker,
        service: str,
        methods: dict[str, Handler],
        *,
        lanes: Mapping[str, Mapping[str, str]] = RPC_LANES,
    ) -> None:
        self.broker = broker
        self.service = service
        self.methods = methods
        self.lanes = lanes
        self._channels: list[AbstractChannel] = []

    async def start(
        self, prefetch: int = 32, lane_prefetch: Mapping[str, int] | None = None
    ) -> None:
        """`prefetch` is the main queue's window; `lane_prefetch` a lane's (default the same)."""
        # The main queue always exists: a caller that does not know a method's lane (an older
        # release) sends it there, and it is served there too.
        routes = {self.service} | {rpc_route(self.service, m, self.lanes) for m in self.methods}
        for route in sorted(routes):
            lane = route.removeprefix(f"{self.service}.") if route != self.service else None
            window = (lane_prefetch or {}).get(lane, prefetch) if lane else prefetch
            channel = await self.broker.channel(prefetch=window)
            self._channels.append(channel)
            exchange = await _rpc_exchange(channel)
            queue = await channel.declare_queue(
                rpc_queue_name(route), durable=True, arguments={"x-queue-type": "quorum"}
            )
            await queue.bind(exchange, route)
            await queue.consume(self._consumer(channel))

    async def close(self) -> None:
        for channel in self._channels:
            with contextlib.suppress(Exception):
                await channel.close()

    def _consumer(
        self, channel: AbstractChannel
    ) -> Callable[[AbstractIncomingMessage], Awaitable[None]]:
        # An `async def` callback (not a partial): the aio-pika instrumentor needs one.
        async def on_request(message: AbstractIncomingMessage) -> None:
            await self._on_request(channel, message)

        return on_request

    async def _on_request(self, channel: AbstractChannel, message: AbstractIncomingMessage) -> None:
        async with message.process(requeue=False, ignore_processed=True):
            reply = await self._dispatch(message)
            if not message.reply_to:
                return
            await channel.default_exchange.publish(
                aio_pika.Message(
                    jsonutil.dumps(reply),
                    content_type="application/json",
                    correlation_id=message.correlation_id,
                ),
                routing_key=message.reply_to,
            )

    async def _dispatch(self, message: AbstractIncomingMessage) -> dict[str, Any]:
        try:
            request = jsonutil.loads(message.body)
            method = str(request["method"])
            params = request.get("params") or {}
        except (jsonutil.JSONDecodeError, KeyError, TypeError):
            return _error_reply(CorralError(ErrorType.INVALID_REQUEST, "malformed RPC request"))
        handler = self.methods.get(method)
        if handler is None:
            return _error_reply(
                CorralError(ErrorType.INTERNAL_ERROR, f"unknown RPC method {method!r}")
            )
        with tracer().start_as_current_span(
            f"rpc {self.service}.{method}", context=extract_context(message.headers)
        ):
            try:
                return {"ok": True, "result": await handler(params)}
            except CorralError as exc:
                return _error_reply(exc)
            except Exception:
                log.exception("RPC handler failed", method=method)
                return _error_reply(CorralError(ErrorType.INTERNAL_ERROR, "internal error"))


class RpcClient:
    def __init__(
        self,
        broker: Broker,
        timeout_s: float = 10.0,
        *,
        lanes: Mapping[str, Mapping[str, str]] = RPC_LANES,
    ) -> None:
        self.broker = broker
        self.timeout_s = timeout_s
        self.lanes = lanes
        self._pending: dict[str, asyncio.Future[dict[str, Any]]] = {}
        self._channel: AbstractChannel | None = None
        self._exchange: AbstractExchange | None = None
        self._replies: AbstractQueue | None = None

    async def start(self) -> None:
        # Confirms with `mandatory`: a call to a service nobody runs fails at once instead of
        # waiting out its timeout.
        self._channel = await self.broker.channel(confirms=True)
        self._exchange = await _rpc_exchange(self._channel)
        self._replies = await self._channel.declare_queue(
            f"rpc.replies.{new_id()}", exclusive=True, auto_delete=True
        )
        await self._replies.consume(self._on_reply, no_ack=True)

    async def close(self) -> None:
        for future in self._pending.values():
            future.cancel()
        if self._channel is not None:
            with contextlib.suppress(Exception):
                await self._channel.close()

    async def call(self, method: Method[P, R], params: P) -> R:
        """The method's result, validated into its declared model; or the CorralError the
        handler raised. A result that does not match the declaration is an internal error."""
        answer = await self._request(method.service, method.name, params.wire(), method.route)
        try:
            return method.result.model_validate(answer)
        except ValidationError as exc:
            log.warning("RPC result off its contract", method=str(method), error=str(exc))
            raise CorralError(
                ErrorType.INTERNAL_ERROR,
                f"the {method.service} service answered {method.name} off its contract",
                details={"service": method.service, "method": method.name},
            ) from None

    async def call_raw(self, service: str, method: str, **params: Any) -> Any:
        """An undeclared call (tests of the wire itself, tools): the result as it came."""
        return await self._request(service, method, params, rpc_route(service, method, self.lanes))

    async def _request(self, service: str, method: str, params: dict[str, Any], route: str) -> Any:
        """Returns the handler's result, or raises the CorralError it raised."""
        assert self._exchange is not None and self._replies is not None, "RPC client not started"
        if not self.broker.connected:
            raise _unavailable(service, "message broker is not connected")
        correlation_id = new_id()
        future: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self._pending[correlation_id] = future
        headers: dict[str, Any] = {}
        inject_context(headers)
        try:
            await self._exchange.publish(
                aio_pika.Message(
                    jsonutil.dumps({"method": method, "params": params}),
                    content_type="application/json",
                    correlation_id=correlation_id,
                    reply_to=self._replies.name,
                    headers=headers,
                    expiration=self.timeout_s,
                ),
                routing_key=route,
            )
            reply = await within(future, self.timeout_s)
        except aiormq.exceptions.PublishError as exc:
            raise _unavailable(service, "no instance of it is running") from exc
        except TimeoutError as exc:
            raise _unavailable(service, f"no answer within {self.timeout_s:g} s") from exc
        finally:
            self._pending.pop(correlation_id, None)
        if reply.get("ok"):
            return reply.get("result")
        error = reply.get("error") or {}
        try:
            error_type = ErrorType(str(error.get("type")))
        except ValueError:
            error_type = ErrorType.INTERNAL_ERROR
        extra = error.get("headers")
        raise CorralError(
            error_type,
            str(error.get("message") or "internal error"),
            status=error.get("status"),
            details=error.get("details") or {},
            headers={str(k): str(v) for k, v in extra.items()} if isinstance(extra, dict) else None,
        )

    async def _on_reply(self, message: AbstractIncomingMessage) -> None:
        future = self._pending.get(message.correlation_id or "")
        if future is None or future.done():
            return
        try:
            future.set_result(jsonutil.loads(message.body))
        except jsonutil.JSONDecodeError:
            future.set_result({"ok": False, "error": {"type": "internal_error"}})


def _error_reply(exc: CorralError) -> dict[str, Any]:
    return {
        "ok": False,
        "error": {
            "type": str(exc.error_type),
            "message": exc.message,
            "status": exc.status,
            "details": exc.details,
            "headers": exc.headers,
        },
    }


def _unavailable(service: str, why: str) -> CorralError:
    return CorralError(
        ErrorType.INTERNAL_ERROR,
        f"the {service} service did not answer: {why}",
        status=503,
        details={"service": service},
    )
