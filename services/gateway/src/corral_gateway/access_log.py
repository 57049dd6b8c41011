"""The gateway's access log: one line per request, at info level, when the answer is over.

    {"event": "request", "request_id": "...", "key_id": "key_...", "principal": "alice",
     "method": "POST", "path": "/api/chat", "model": "llama3.2", "status": 200,
     "queue_wait_ms": 12, "duration_ms": 1843.2, "client": "10.0.0.7", ...}

The middleware is the outermost one, so every answer is logged with the status the client
got: refusals at the edge (CORS, Host, unknown routes), the gate's 401/403/429, errors, and
streams (logged when the last byte is written; `duration_ms` spans the whole stream; one that broke
after its 200 went out says so in `error`, with the error's type). A client
that leaves first is logged with 499 (nginx's "client closed request"). What only the handler
learns (the model, the queue wait, the tokens) comes from the request's `usage.RequestRecord`;
the caller from the gate (`identity.principal.CALLER`). The same record feeds this gateway's
usage totals (`GET /admin/usage`, /health's `metrics`).

Never logged: the query string (a client may put a key there), headers, bodies. The key id is
the key's public id (`key_...`), not the key; and every line goes through the log redaction
(corral_common.logging) like any other. Probes and scrapes (`/health`, `/ready`, `/metrics`)
are logged at debug, so they do not drown the requests that matter. Access lines are exempt from
the log's repeat limit (one line per request is their point); `CORRAL_ACCESS_LOG=false` turns
them off.
"""

from __future__ import annotations

import time

import structlog
from aiohttp import web
from aiohttp.typedefs import Handler, Middleware

from corral_common.log_limits import UNLIMITED
from corral_gateway import usage
from corral_gateway.identity.principal import CALLER, Caller
from corral_gateway.responses import answered
from corral_gateway.state import GATEWAY

log = structlog.get_logger("corral_gateway.access")

QUIET_PATHS = frozenset({"/health", "/ready", "/metrics"})


def caller_key(caller: Caller | None, address: str) -> str:
    """Whom the usage report counts a request against: the key's principal (or key id), else
    the client's `X-Client-Id` (auth off), else its address."""
    if caller is not None and caller.key_id is not None:
        return f"key:{caller.principal or caller.key_id}"
    if caller is not None and caller.client_id:
        return f"client:{caller.client_id}"
    return f"ip:{address}"


def access_log_middleware(*, enabled: bool = True) -> Middleware:
    @web.middleware
    async def access_log(request: web.Request, handler: Handler) -> web.StreamResponse:
        record = usage.begin()
        return await answered(
            handler(request),
            lambda response, status: _finish(request, response, record, status, enabled),
        )

    return access_log


def _finish(
    request: web.Request,
    response: web.StreamResponse | None,
    record: usage.RequestRecord,
    status: int,
    enabled: bool,
) -> None:
    duration_ms = round((time.monotonic() - record.started) * 1000, 1)
    caller = request.get(CALLER)
    address = caller.address if caller is not None else (request.remote or "unknown")
    gateway = request.app.get(GATEWAY)
    if gateway is not None:
        gateway.usage.add(record, status, caller_key(caller, address))
    if not enabled:
        return
    request_id = response.headers.get("X-Request-Id") if response is not None else None
    fields: dict[str, object] = {
        "request_id": request_id or request.headers.get("X-Request-Id"),
        "method": request.method,
        "path": request.path,
        "status": status,
        "duration_ms": duration_ms,
        "client": address,
    }
    if caller is not None and caller.key_id is not None:
        fields["key_id"] = caller.key_id
        if caller.principal and caller.principal != caller.key_id:
            fields["principal"] = caller.principal
    if record.model is not None:
        fields["model"] = record.model
    if record.waited_ms is not None:
        fields["queue_wait_ms"] = record.waited_ms
    if record.prompt_tokens or record.generated_tokens:
        fields["prompt_tokens"] = record.prompt_tokens
        fields["generated_tokens"] = record.generated_tokens
    if record.truncated:
        fields["truncated"] = True
    if record.error is not None:
        fields["error"] = record.error
    emit = log.debug if request.path in QUIET_PATHS else log.info
    emit("request", **fields, **UNLIMITED)
