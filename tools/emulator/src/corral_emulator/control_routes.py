"""The `/_emulator/*` control API that tests, benchmarks and demos drive the emulator with."""

from __future__ import annotations

import asyncio
from typing import Any

from aiohttp import web

from corral_emulator.failures import FailurePlan
from corral_emulator.state import STATE_KEY
from corral_emulator.wire import ApiError, decode_json_object, error_response, json_response

WAIT_DEFAULT_TIMEOUT_S = 10.0
_COMPARISONS = {
    "ge": lambda value, target: value >= target,
    "le": lambda value, target: value <= target,
    "eq": lambda value, target: value == target,
}


async def stats(request: web.Request) -> web.Response:
    return json_response(request.app[STATE_KEY].stats())


async def reset(request: web.Request) -> web.Response:
    state = request.app[STATE_KEY]
    state.reset()
    return json_response(state.stats())


async def get_config(request: web.Request) -> web.Response:
    return json_response(request.app[STATE_KEY].config.to_mapping())


async def set_config(request: web.Request) -> web.Response:
    state = request.app[STATE_KEY]
    try:
        changes = await _json_body(request)
        state.config.apply(changes)
    except ValueError as exc:
        return error_response(400, str(exc))
    except ApiError as exc:
        return error_response(exc.status, exc.message)
    if "models" in changes:
        state.models_changed()
    return json_response(state.config.to_mapping())


async def add_failure(request: web.Request) -> web.Response:
    state = request.app[STATE_KEY]
    try:
        state.failures.add(FailurePlan.from_mapping(await _json_body(request)))
    except ValueError as exc:
        return error_response(400, str(exc))
    except ApiError as exc:
        return error_response(exc.status, exc.message)
    return json_response({"pending_failures": state.failures.pending()})


async def clear_failures(request: web.Request) -> web.Response:
    state = request.app[STATE_KEY]
    state.failures.clear()
    return json_response({"pending_failures": state.failures.pending()})


async def recorded_requests(request: web.Request) -> web.Response:
    log = request.app[STATE_KEY].requests
    endpoint = request.query.get("endpoint")
    if endpoint is None:
        return json_response({"requests": log.all()})
    return json_response({"endpoint": endpoint, "requests": log.bodies(endpoint)})


async def timeline(request: web.Request) -> web.Response:
    """Every generation request (chat, generate and their /v1 forms, streamed or not) in the
    order their handlers started: when each started and ended (monotonic and wall clock ns),
    how it ended, its tokens. Entries still running have no end yet; `/_emulator/wait?
    timeline_open=eq:0` waits for the last end to be stamped."""
    entries = request.app[STATE_KEY].timeline.entries()
    return json_response({"requests": [entry.to_mapping() for entry in entries]})


async def hold(request: web.Request) -> web.Response:
    state = request.app[STATE_KEY]
    state.gate.hold()
    return json_response(state.stats())


async def release(request: web.Request) -> web.Response:
    state = request.app[STATE_KEY]
    state.gate.release()
    return json_response(state.stats())


async def wait(request: web.Request) -> web.Response:
    """`?completed=2&active=eq:0&timeout=5`: wait until every named stat meets its target.

    A bare number means "at least"; `eq:`, `le:` and `ge:` prefixes pick the comparison.
    Answers the stats when met, 408 with the stats on timeout.
    """
    state = request.app[STATE_KEY]
    try:
        timeout = float(request.query.get("timeout", WAIT_DEFAULT_TIMEOUT_S))
        conditions = [
            _condition(name, text) for name, text in request.query.items() if name != "timeout"
        ]
    except ValueError as exc:
        return error_response(400, str(exc))
    known = state.stats()
    unknown = [name for name, _, _ in conditions if not isinstance(known.get(name), int)]
    if unknown:
        return error_response(400, f"not numeric stats: {unknown}")

    def met() -> bool:
        current = state.stats()
        return all(_COMPARISONS[op](current[name], target) for name, op, target in conditions)

    try:
        async with asyncio.timeout(timeout):
            await state.wait_for(met)
    except TimeoutError:
        return json_response(
            {"error": "timed out waiting for emulator stats", "stats": state.stats()}, status=408
        )
    return json_response(state.stats())


def _condition(name: str, text: str) -> tuple[str, str, int]:
    op, _, number = text.rpartition(":")
    op = op or "ge"
    if op not in _COMPARISONS:
        raise ValueError(f"bad comparison {op!r} for {name!r}; use ge, le or eq")
    return name, op, int(number)


async def _json_body(request: web.Request) -> dict[str, Any]:
    raw = await request.read()
    return decode_json_object(raw, "EmulatorControl") if raw.strip() else {}


def add_control_routes(app: web.Application) -> None:
    app.router.add_get("/_emulator/stats", stats, allow_head=False)
    app.router.add_post("/_emulator/reset", reset)
    app.router.add_get("/_emulator/config", get_config, allow_head=False)
    app.router.add_post("/_emulator/config", set_config)
    app.router.add_post("/_emulator/fail", add_failure)
    app.router.add_delete("/_emulator/fail", clear_failures)
    app.router.add_get("/_emulator/requests", recorded_requests, allow_head=False)
    app.router.add_get("/_emulator/timeline", timeline, allow_head=False)
    app.router.add_post("/_emulator/hold", hold)
    app.router.add_post("/_emulator/release", release)
    app.router.add_get("/_emulator/wait", wait, allow_head=False)
