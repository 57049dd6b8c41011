"""The document: one operation per route a surface registered (`surfaces.route_meta`), tagged with
its surface and marked with what it asks of callers, plus the ops routes; and the components
(bodies, error shapes, security schemes, headers) the operations refer to."""

from __future__ import annotations

import inspect
import re
from collections.abc import Set
from dataclasses import dataclass, field
from importlib import metadata
from typing import Any

from aiohttp import web

from corral_gateway.openapi.bodies import (
    conversation_bodies,
    corral_bodies,
    key_bodies,
    openai_bodies,
)
from corral_gateway.openapi.error_schemas import ERROR_DESCRIPTIONS, ERROR_SCHEMAS, error_schemas
from corral_gateway.openapi.native_bodies import native_bodies
from corral_gateway.openapi.route_details import DETAILS, PATH_PARAMETERS, Detail, Param
from corral_gateway.openapi.schema_parts import BINARY, JSON, TEXT, Schema, ref
from corral_gateway.surfaces import route_meta

SECURITY: list[dict[str, list[str]]] = [{"bearer": []}, {"apiKey": []}]
SUCCESS_DESCRIPTIONS = {200: "OK", 201: "Created", 202: "Accepted"}


@dataclass(frozen=True)
class OpsRoute:
    path: str
    access: str
    summary: str
    media: tuple[str, ...]
    errors: Set[int] = field(default_factory=frozenset)


# Served by corral_common.ops on every service, registered without a surface.
OPS_ROUTES = (
    OpsRoute("/health", "open", "Health of the gateway and what it depends on.", (JSON,), {503}),
    OpsRoute("/ready", "open", "Whether the gateway can serve requests.", (JSON,), {503}),
    OpsRoute("/metrics", "admin", "Prometheus metrics.", (TEXT,), frozenset({401, 403, 429, 503})),
)
TAGS = [
    {"name": "ollama", "description": "Ollama's native API, answered as Ollama answers."},
    {"name": "corral", "description": "Corral's own API: sessions, search, the queue."},
    {"name": "admin", "description": "The operators' API: models, the lane, keys, audit."},
    {"name": "openai", "description": "The OpenAI-compatible API, as Ollama serves it."},
    {
        "name": "conversations",
        "description": "llama-chat's conversation API: conversations are sessions.",
    },
    {"name": "ops", "description": "Health, readiness and metrics, as every service serves."},
]

_PARAMETER = re.compile(r"\{([^}:]+)(?::[^}]*)?\}")


def route_template(route: web.AbstractRoute) -> str | None:
    """The route's path as OpenAPI writes it: `{name}`, without aiohttp's regex."""
    if route.resource is None:
        return None
    info = route.resource.get_info()
    template = info.get("formatter") or info.get("path")
    return _PARAMETER.sub(r"{\1}", str(template)) if template else None


def summary_of(handler: object, detail: Detail | None, method: str, path: str) -> str:
    """The table's summary, else the first sentence of the handler's docstring."""
    if detail is not None:
        return detail.summary
    doc = inspect.getdoc(handler)
    if doc:
        return doc.split("\n\n")[0].replace("\n", " ").split(". ")[0].rstrip(".")
    return f"{method} {path}"


def _parameter(location: str, param: Param) -> dict[str, Any]:
    found: dict[str, Any] = {"name": param.name, "in": location, "schema": param.schema}
    if param.description:
        found["description"] = param.description
    if param.required:
        found["required"] = True
    return found


def _error_statuses(access: str, detail: Detail | None, has_input: bool) -> set[int]:
    statuses = set(detail.errors if detail is not None else ())
    if detail is not None and detail.body is not None:
        statuses.add(413)  # the body is over CORRAL_MAX_BODY_BYTES
    if access != "open":
        statuses |= {401, 429, 503}
    if access == "admin":
        statuses.add(403)
    if has_input:
        statuses.add(400)
    return statuses


def _responses(
    successes: tuple[int, ...], media: tuple[str, ...], errors: set[int], error_schema: str
) -> dict[str, Any]:
    responses: dict[str, Any] = {}
    for status in successes:
        success: dict[str, Any] = {"description": SUCCESS_DESCRIPTIONS.get(status, "OK")}
        if media:
            success["content"] = {kind: {"schema": {}} for kind in media}
        responses[str(status)] = success
    for code in sorted(errors):
        answer: dict[str, Any] = {
            "description": ERROR_DESCRIPTIONS.get(code, "Error"),
            "content": {JSON: {"schema": ref(error_schema)}},
        }
        if code == 401:
            answer["headers"] = {"WWW-Authenticate": {"$ref": "#/components/headers/Auth"}}
        if code == 429:
            answer["headers"] = {"Retry-After": {"$ref": "#/components/headers/RetryAfter"}}
        responses[str(code)] = answer
    return responses


def _access(access: str) -> dict[str, Any]:
    """What an operation says of its caller: no security for an open route."""
    return {"security": [] if access == "open" else SECURITY, "x-corral-access": access}


def _operation(
    method: str, path: str, surface: str, access: str, handler: object
) -> dict[str, Any]:
    detail = DETAILS.get((method, path))
    parameters = [
        {
            "name": name,
            "in": "path",
            "required": True,
            "schema": PATH_PARAMETERS.get(name, {"type": "string", "minLength": 1}),
        }
        for name in _PARAMETER.findall(path)
    ]
    if detail is not None:
        parameters += [_parameter("query", param) for param in detail.query]
        parameters += [_parameter("header", param) for param in detail.headers]
    body = detail.body if detail is not None else None
    has_input = bool(parameters) or body is not None
    operation: dict[str, Any] = {
        "tags": [surface],
        "summary": summary_of(handler, detail, method, path),
    }
    description = inspect.getdoc(handler)
    if description:
        operation["description"] = description
    if parameters:
        operation["parameters"] = parameters
    if body is not None:
        if body == BINARY:
            content = {BINARY: {"schema": {"type": "string", "contentMediaType": BINARY}}}
        else:
            content = {JSON: {"schema": ref(body)}}
        operation["requestBody"] = {
            "required": detail.body_required if detail else True,
            "content": content,
        }
    successes = (detail.status, *detail.also) if detail is not None else (200,)
    media = detail.media if detail is not None else (JSON,)
    if method == "HEAD":
        media = ()
    errors = _error_statuses(access, detail, has_input)
    error_schema = ERROR_SCHEMAS.get(surface, "CorralError")
    operation["responses"] = _responses(successes, media, errors, error_schema)
    return {**operation, **_access(access)}


def component_schemas() -> dict[str, Schema]:
    return {
        **native_bodies(),
        **corral_bodies(),
        **openai_bodies(),
        **key_bodies(),
        **conversation_bodies(),
        **error_schemas(),
    }


def build_document(router: web.UrlDispatcher) -> dict[str, Any]:
    """The OpenAPI document of every route on `router`."""
    found: list[tuple[str, str, str, str, object, str]] = []
    get_paths: set[str] = set()
    for route in router.routes():
        meta = route_meta(route.handler)
        path = route_template(route)
        if meta is None or path is None:
            continue
        if route.method == "GET":
            get_paths.add(path)
        name = getattr(meta.handler, "__name__", "handler")
        found.append((route.method, path, meta.surface, meta.access, meta.handler, name))
    served = {route_template(route) for route in router.routes()}
    # aiohttp's add_get also registers HEAD; only a HEAD of its own is an operation.
    found = [entry for entry in found if not (entry[0] == "HEAD" and entry[1] in get_paths)]
    ids = [f"{surface}_{name}" for _, _, surface, _, _, name in found]
    paths: dict[str, dict[str, Any]] = {}
    for (method, path, surface, access, handler, _), base in zip(found, ids, strict=True):
        operation = _operation(method, path, surface, access, handler)
        shared = ids.count(base) > 1
        operation["operationId"] = f"{base}_{method.lower()}" if shared else base
        paths.setdefault(path, {})[method.lower()] = operation
    for ops in OPS_ROUTES:
        if ops.path not in served:
            continue
        paths.setdefault(ops.path, {})["get"] = {
            "tags": ["ops"],
            "summary": ops.summary,
            "operationId": f"ops_{ops.path.strip('/')}",
            "responses": _responses((200,), ops.media, set(ops.errors), "CorralError"),
            **_access(ops.access),
        }
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "Corral",
            "version": _version(),
            "description": "A shared, queue-aware, session-keeping front for one Ollama "
            "server. Keys go in `Authorization: Bearer <key>` or `X-API-Key: <key>`; "
            "`x-corral-access` says what each operation asks of its caller.",
        },
        "tags": TAGS,
        "paths": paths,
        "components": {
            "schemas": component_schemas(),
            "securitySchemes": {
                "bearer": {
                    "type": "http",
                    "scheme": "bearer",
                    "description": "An API key (`crl_...`, or the operator's key).",
                },
                "apiKey": {"type": "apiKey", "in": "header", "name": "X-API-Key"},
            },
            "headers": {
                "Auth": {
                    "description": 'The scheme to authenticate with: `Bearer realm="corral"`.',
                    "schema": {"type": "string"},
                },
                "RetryAfter": {
                    "description": "Seconds until the limit's window ends.",
                    "schema": {"type": "integer"},
                },
            },
        },
        "security": SECURITY,
    }


def _version() -> str:
    try:
        return metadata.version("corral-gateway")
    except metadata.PackageNotFoundError:
        return "0.0.0"
