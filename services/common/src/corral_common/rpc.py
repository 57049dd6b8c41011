"""Request/reply over RabbitMQ (`corral.rpc`), for the gateway's queries to other services.

A server consumes its own queue `rpc.<service>` and dispatches on `method`; a client publishes
with a correlation id and `reply_to` its private reply queue, and awaits the matching reply.
Bodies are JSON: `{"method", "params"}` in, `{"ok": true, "result"}` or `{"ok": false, "error":
{"type", "message", "status", "details"}}` out, so a CorralError raised by a handler reaches the
caller as the same CorralError.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable
from typing import Any

import aio_pika
import aiormq
import structlog
from aio_pika.abc import AbstractChannel, AbstractExchange, AbstractIncomingMessage, AbstractQueue

from corral_common import jsonutil
from corral_common.broker import Broker
from corral_common.errors import CorralError, ErrorType
from corral_common.ids import new_id
from corral_common.telemetry import extract_context, inject_context, tracer
from corral_common.timeouts import within

log = structlog.get_logger(__name__)

RPC_EXCHANGE = "corral.rpc"
Handler = Callable[[dict[str, Any]], Awaitable[Any]]


def rpc_queue_name(service: str) -> str:
    return f"rpc.{service}"


async def _rpc_exchange(channel: AbstractChannel) -> AbstractExchange:
    return await channel.declare_exchange(RPC_EXCHANGE, aio_pika.ExchangeType.DIRECT, durable=True)


class RpcServer:
    """Serves `methods` on `rpc.<service>`; replicas share the queue and so the load."""

    def __init__(self, broker: Broker, service: str, methods: dict[str, Handler]) -> None:
        self.broker = broker
        self.service = service
        self.methods = methods
        self._channel: AbstractChannel | None = None

    async def start(self, prefetch: int = 32) -> None:
        self._channel = await self.broker.channel(prefetch=prefetch)
        exchange = await _rpc_exchange(self._channel)
        queue = await self._channel.declare_queue(
            rpc_queue_name(self.service), durable=True, arguments={"x-queue-type": "quorum"}
        )
        await queue.bind(exchange, self.service)
        await queue.consume(self._on_request)

    async def close(self) -> None:
        if self._channel is not None:
            with contextlib.suppress(Exception):
                await self._channel.close()

    async def _on_request(self, message: AbstractIncomingMessage) -> None:
        async with message.process(requeue=False, ignore_processed=True):
            reply = await self._dispatch(message)
            if not message.reply_to or self._channel is None:
                return
            await self._channel.default_exchange.publish(
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
    def __init__(self, broker: Broker, timeout_s: float = 10.0) -> None:
        self.broker = broker
        self.timeout_s = timeout_s
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

    async def call(self, service: str, method: str, **params: Any) -> Any:
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
                routing_key=service,
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
        raise CorralError(
            error_type,
            str(error.get("message") or "internal error"),
            status=error.get("status"),
            details=error.get("details") or {},
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
        },
    }


def _unavailable(service: str, why: str) -> CorralError:
    return CorralError(
        ErrorType.INTERNAL_ERROR,
        f"the {service} service did not answer: {why}",
        status=503,
        details={"service": service},
    )
