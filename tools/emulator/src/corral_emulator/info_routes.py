"""The read-only Ollama endpoints: /, /api/version, /api/tags, /api/show, /api/ps."""

from __future__ import annotations

import time

from aiohttp import web

from corral_emulator.api_types import parse_show_request
from corral_emulator.modelfile import modelfile_text, parameters_text
from corral_emulator.models import ModelSpec
from corral_emulator.state import STATE_KEY
from corral_emulator.wire import ApiError, decode_json_object, error_response, json_response


async def root(request: web.Request) -> web.Response:
    return web.Response(text="Ollama is running")


async def version(request: web.Request) -> web.Response:
    return json_response({"version": request.app[STATE_KEY].config.version})


async def tags(request: web.Request) -> web.Response:
    catalogue = request.app[STATE_KEY].catalogue
    return json_response({"models": [_tag_entry(spec) for spec in catalogue.listing()]})


async def show(request: web.Request) -> web.Response:
    state = request.app[STATE_KEY]
    try:
        body = decode_json_object(await request.read(), "ShowRequest")
        state.requests.record("show", body)
        name = parse_show_request(body).model
    except ApiError as exc:
        return error_response(exc.status, exc.message)
    if not name:
        return error_response(400, "model is required")
    spec = state.catalogue.find(name)
    if spec is None:
        return error_response(404, f"model '{name}' not found")
    return json_response(_show_response(spec))


async def ps(request: web.Request) -> web.Response:
    now = time.time_ns()
    runners = request.app[STATE_KEY].runners.loaded()
    return json_response({"models": [runner.describe(now) for runner in runners]})


def _tag_entry(spec: ModelSpec) -> dict[str, object]:
    return {
        "name": spec.full_name,
        "model": spec.full_name,
        "modified_at": spec.modified_at,
        "size": spec.size,
        "digest": spec.digest,
        "details": spec.details(),
    }


def _show_response(spec: ModelSpec) -> dict[str, object]:
    family = spec.family
    shown: dict[str, object] = {
        "license": "\n".join(spec.license),
        "modelfile": modelfile_text(spec),
        "parameters": parameters_text(spec),
        "template": spec.template,
    }
    # `system` and `messages` are omitempty in Go's ShowResponse.
    if spec.system:
        shown["system"] = spec.system
    shown["details"] = spec.details()
    if spec.messages:
        shown["messages"] = [dict(message) for message in spec.messages]
    shown["model_info"] = {
        "general.architecture": family,
        "general.basename": spec.full_name.split(":", 1)[0],
        "general.file_type": 15,
        "general.parameter_count": _parameter_count(spec.parameter_size),
        "general.quantization_version": 2,
        f"{family}.context_length": spec.context_length,
        f"{family}.embedding_length": spec.embedding_length,
    }
    shown["capabilities"] = list(spec.capabilities)
    shown["modified_at"] = spec.modified_at
    return shown


def _parameter_count(parameter_size: str) -> int:
    scale = {"K": 1e3, "M": 1e6, "B": 1e9, "T": 1e12}
    try:
        return int(float(parameter_size[:-1]) * scale[parameter_size[-1].upper()])
    except (KeyError, ValueError, IndexError):
        return 0
