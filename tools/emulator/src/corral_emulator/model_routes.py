"""The model-management endpoints: POST /api/pull, POST /api/push, DELETE /api/delete,
POST /api/copy and POST /api/create, validating in Ollama's order with its texts.

None of these is backend work on a model (Ollama serves them beside generations), so they are
counted apart from `active`; a pull can still be held at the hold gate.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from aiohttp import web

from corral_emulator.api_types import (
    parse_copy_request,
    parse_create_request,
    parse_delete_request,
    parse_pull_request,
    parse_push_request,
)
from corral_emulator.blobs import INVALID_DIGEST_FORMAT
from corral_emulator.creating import (
    FILE_PATH_NOT_RELATIVE,
    INVALID_MODEL_NAME,
    create_model,
    valid_file_path,
)
from corral_emulator.model_names import parse_model_name
from corral_emulator.progress import ProgressFailed, ProgressStream
from corral_emulator.pulling import pull_model
from corral_emulator.pushing import push_model
from corral_emulator.state import STATE_KEY
from corral_emulator.timestamps import now_local_rfc3339
from corral_emulator.wire import (
    ApiError,
    decode_json_object,
    empty_response,
    error_response,
    go_quote,
)


async def pull(request: web.Request) -> web.StreamResponse:
    state = request.app[STATE_KEY]
    try:
        body = decode_json_object(await request.read(), "PullRequest")
        state.requests.record("pull", body)
        parsed = parse_pull_request(body)
    except ApiError as exc:
        return error_response(exc.status, exc.message)
    # A missing name fails the same way: "" is not a valid name either.
    name = parse_model_name(parsed.model)
    if not name.is_valid:
        return error_response(400, INVALID_MODEL_NAME)
    out = ProgressStream(request, parsed.stream)
    return await _progress(out, lambda: pull_model(state, name.display_shortest, out))


async def push(request: web.Request) -> web.StreamResponse:
    state = request.app[STATE_KEY]
    try:
        body = decode_json_object(await request.read(), "PushRequest")
        state.requests.record("push", body)
        parsed = parse_push_request(body)
    except ApiError as exc:
        return error_response(exc.status, exc.message)
    if not parsed.model:
        return error_response(400, "model is required")
    name = parse_model_name(parsed.model)
    http = parsed.model.lower().startswith("http://")
    out = ProgressStream(request, parsed.stream)
    return await _progress(
        out, lambda: push_model(state, name, out, insecure=parsed.insecure, http=http)
    )


async def delete(request: web.Request) -> web.Response:
    state = request.app[STATE_KEY]
    try:
        body = decode_json_object(await request.read(), "DeleteRequest")
        state.requests.record("delete", body)
        text = parse_delete_request(body)
    except ApiError as exc:
        return error_response(exc.status, exc.message)
    name = parse_model_name(text)
    if not name.is_valid:
        return error_response(400, f"name {go_quote(text)} is invalid")
    if state.remove_model(name.display_shortest) is None:
        return error_response(404, f"model '{text}' not found")
    state.activity.deleted()
    return empty_response()


async def copy(request: web.Request) -> web.Response:
    state = request.app[STATE_KEY]
    try:
        body = decode_json_object(await request.read(), "CopyRequest")
        state.requests.record("copy", body)
        parsed = parse_copy_request(body)
    except ApiError as exc:
        return error_response(exc.status, exc.message)
    source = parse_model_name(parsed.source)
    if not source.is_valid:
        return error_response(400, f"source {go_quote(parsed.source)} is invalid")
    destination = parse_model_name(parsed.destination)
    if not destination.is_valid:
        return error_response(400, f"destination {go_quote(parsed.destination)} is invalid")
    spec = state.catalogue.find(source.display_shortest)
    if spec is None:
        return error_response(404, f"model {go_quote(parsed.source)} not found")
    copied = spec.derive(name=destination.display_shortest, modified_at=now_local_rfc3339())
    state.put_model(copied)
    state.activity.copied()
    return empty_response()


async def create(request: web.Request) -> web.StreamResponse:
    state = request.app[STATE_KEY]
    try:
        body = decode_json_object(await request.read(), "CreateRequest")
        state.requests.record("create", body)
        parsed = parse_create_request(body)
    except ApiError as exc:
        return error_response(exc.status, exc.message)
    for path, digest in (parsed.files or {}).items():
        if not valid_file_path(path):
            return error_response(400, FILE_PATH_NOT_RELATIVE)
        if not digest:
            return error_response(400, INVALID_DIGEST_FORMAT)
    name = parse_model_name(parsed.model)
    if not name.is_valid:
        return error_response(400, INVALID_MODEL_NAME)
    out = ProgressStream(request, parsed.stream)
    return await _progress(out, lambda: create_model(state, parsed, name.display_shortest, out))


async def _progress(
    out: ProgressStream, work: Callable[[], Awaitable[object]]
) -> web.StreamResponse:
    """Run a pull or create and answer as Ollama's streamResponse/waitForStream would."""
    try:
        await work()
    except ProgressFailed as exc:
        return await out.fail(exc)
    except ConnectionError:
        # Without handler cancellation a disconnect only shows up as a failed write.
        return out.response
    return await out.finish()
