"""Operator endpoints under `/admin/models` and `/admin/pulls`: warm a model up or unload it
(through the serial lane, so never during a generation) and watch pulls. Corral-shaped answers
and errors."""

from __future__ import annotations

import time

from aiohttp import web

from corral_common.clip import clip
from corral_common.contracts.model_manager import MODEL_MANAGER, NoParams
from corral_common.errors import CorralError, ErrorType
from corral_common.ids import InvalidId
from corral_common.messages import Job, JobKind
from corral_gateway.extensions import header_request_id, invalid_id_error
from corral_gateway.identity.principal import caller_of
from corral_gateway.responses import json_response
from corral_gateway.state import GATEWAY
from corral_gateway.surfaces import answer_with
from corral_gateway.ticket import run_job
from corral_gateway.validation import OllamaRequestError, check_duration


async def load(request: web.Request) -> web.Response:
    return await _operate(request, "load")


async def unload(request: web.Request) -> web.Response:
    return await _operate(request, "unload")


async def pulls(request: web.Request) -> web.Response:
    answer = await request.app[GATEWAY].rpc.call(MODEL_MANAGER.pulls, NoParams())
    return json_response(answer.wire(), 200)


async def _operate(request: web.Request, kind: JobKind) -> web.Response:
    gateway = request.app[GATEWAY]
    model = request.match_info["name"]
    try:
        # The id names this job's events (`gw.<gateway>.<request_id>.<kind>`): an unchecked one
        # could pass the broker's routing-key limit and take the scheduler's lane down with it.
        request_id = header_request_id(request)
    except InvalidId as exc:
        raise invalid_id_error(exc) from exc
    headers = {"X-Request-Id": request_id}
    answer_with(request, headers)
    payload: dict[str, object] = {"model": model}
    if kind == "unload":
        payload["keep_alive"] = 0
    elif "keep_alive" in request.query:
        payload["keep_alive"] = request.query["keep_alive"]
    if isinstance(payload.get("keep_alive"), str):
        _duration(str(payload["keep_alive"]))
    force = _flag(request.query.get("force", "false"))
    await gateway.models.check(model)
    done = await run_job(
        gateway,
        Job(
            request_id=request_id,
            gateway_id=gateway.settings.instance_id,
            kind=kind,
            model=model,
            payload=payload,
            owner=caller_of(request).principal,
            queue_progress=False,
            enqueued_at=time.time(),
            force=force,
        ),
    )
    return json_response(
        {
            "model": model,
            "action": kind,
            "request_id": request_id,
            "waited_ms": done.waited_ms,
            "done_reason": done.final.get("done_reason"),
            "load_duration": done.final.get("load_duration"),
        },
        200,
        headers,
    )


def _duration(text: str) -> None:
    try:
        check_duration(text)
    except OllamaRequestError as exc:
        raise CorralError(ErrorType.INVALID_REQUEST, f"keep_alive: {exc.message}") from exc


def _flag(value: str) -> bool:
    lowered = value.strip().lower()
    if lowered in ("1", "true", "yes"):
        return True
    if lowered in ("0", "false", "no", ""):
        return False
    raise CorralError(
        ErrorType.INVALID_REQUEST, f"force must be true or false, not {clip(value)!r}"
    )
