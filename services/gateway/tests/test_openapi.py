"""The OpenAPI document the gateway serves at /openapi.json: valid OpenAPI 3.1, built from the
router (every route with its access level, none missing), open routes without security, and
request body schemas that agree with the decoders they describe."""

from __future__ import annotations

from typing import Any

import orjson
import pytest
from aiohttp import web
from jsonschema import Draft202012Validator
from openapi_spec_validator import validate
from pytest_aiohttp import AiohttpClient

from corral_gateway import corral, ollama, openapi
from corral_gateway.app import create_app
from corral_gateway.openai.requests import parse_chat
from corral_gateway.openapi import OPENAPI_PATH, build_document, route_template
from corral_gateway.settings import GatewaySettings
from corral_gateway.surfaces import route_meta
from corral_gateway.validation import OllamaRequestError, decode_body

METHODS = ("get", "head", "post", "put", "patch", "delete")


ROUTER = create_app(GatewaySettings()).router
DOCUMENT = build_document(ROUTER)


def operations(document: dict[str, Any]) -> dict[tuple[str, str], dict[str, Any]]:
    return {
        (method.upper(), path): operation
        for path, item in document["paths"].items()
        for method, operation in item.items()
        if method in METHODS
    }


def body_validator(name: str) -> Draft202012Validator:
    """A validator for one of the document's component schemas, its references resolved."""
    return Draft202012Validator(
        {"$ref": f"#/components/schemas/{name}", "components": DOCUMENT["components"]}
    )


def test_the_document_is_valid_openapi_3_1() -> None:
    validate(DOCUMENT)
    assert DOCUMENT["openapi"] == "3.1.0"


def test_every_registered_route_is_documented_with_its_access() -> None:
    documented = operations(DOCUMENT)
    registered = set()
    for route in ROUTER.routes():
        meta = route_meta(route.handler)
        path = route_template(route)
        if meta is None or path is None:
            continue
        if route.method == "HEAD" and ("GET", path) in documented:
            continue  # aiohttp's add_get answers HEAD too
        registered.add((route.method, path))
        operation = documented[(route.method, path)]
        assert operation["x-corral-access"] == meta.access, (route.method, path)
        assert operation["tags"] == [meta.surface]
    ops = {("GET", "/health"), ("GET", "/ready"), ("GET", "/metrics")}
    assert set(documented) == registered | ops
    assert documented[("GET", OPENAPI_PATH)]["x-corral-access"] == "open"
    assert documented[("GET", "/metrics")]["x-corral-access"] == "admin"


def test_open_routes_need_no_key_and_the_others_take_either_scheme() -> None:
    schemes = DOCUMENT["components"]["securitySchemes"]
    assert schemes["bearer"] == {
        "type": "http",
        "scheme": "bearer",
        "description": schemes["bearer"]["description"],
    }
    assert schemes["apiKey"] == {"type": "apiKey", "in": "header", "name": "X-API-Key"}
    for (method, path), operation in operations(DOCUMENT).items():
        if operation["x-corral-access"] == "open":
            assert operation["security"] == [], (method, path)
            assert "401" not in operation["responses"]
        else:
            assert operation["security"] == [{"bearer": []}, {"apiKey": []}], (method, path)
            assert "401" in operation["responses"]
        if operation["x-corral-access"] == "admin":
            assert "403" in operation["responses"], (method, path)


def test_operation_ids_are_unique_and_errors_in_the_surface_shape() -> None:
    ids = [operation["operationId"] for operation in operations(DOCUMENT).values()]
    assert len(ids) == len(set(ids))
    shapes = {"ollama": "OllamaError", "corral": "CorralError", "admin": "CorralError"}
    shapes["openai"] = "OpenAIError"
    shapes["conversations"] = "ConversationError"
    for (method, path), operation in operations(DOCUMENT).items():
        surface = operation["tags"][0]
        for status, answer in operation["responses"].items():
            if int(status) < 400 or surface == "ops":
                continue
            ref = answer["content"]["application/json"]["schema"]["$ref"]
            assert ref == f"#/components/schemas/{shapes[surface]}", (method, path, status)


def test_path_parameters_are_declared_without_the_routers_regex() -> None:
    documented = operations(DOCUMENT)
    load = documented[("POST", "/admin/models/{name}/load")]
    path = [p for p in load["parameters"] if p["in"] == "path"]
    assert path == [{"name": "name", "in": "path", "required": True, "schema": path[0]["schema"]}]
    assert ("GET", "/v1/models/{model}") in documented


@pytest.mark.parametrize(
    ("schema", "kind", "body"),
    [
        (
            "OllamaChatRequest",
            "chat",
            {"model": "m", "messages": [{"role": "user", "content": "hi"}]},
        ),
        ("OllamaChatRequest", "chat", {"model": "m", "think": "high", "keep_alive": "5m"}),
        ("OllamaChatRequest", "chat", {"model": "m", "stream": None, "options": {"seed": 1}}),
        ("OllamaGenerateRequest", "generate", {"model": "m", "prompt": "x", "images": ["aGk="]}),
        ("OllamaEmbedRequest", "embed", {"model": "m", "input": ["a", "b"], "dimensions": 8}),
        ("OllamaCopyRequest", "copy", {"source": "a", "destination": "b"}),
        ("OllamaCreateRequest", "create", {"model": "m", "from": "llama3.2", "files": {}}),
    ],
)
def test_a_body_the_decoder_takes_fits_its_schema(
    schema: str, kind: str, body: dict[str, Any]
) -> None:
    decode_body(orjson.dumps(body), kind)
    assert not list(body_validator(schema).iter_errors(body))


@pytest.mark.parametrize(
    ("schema", "kind", "body"),
    [
        ("OllamaChatRequest", "chat", {"model": "m", "stream": "yes"}),
        ("OllamaChatRequest", "chat", {"model": "m", "messages": [None]}),
        ("OllamaChatRequest", "chat", {"model": "m", "think": "very"}),
        ("OllamaChatRequest", "chat", {"model": "m", "keep_alive": "soon"}),
        ("OllamaChatRequest", "chat", {"model": "m", "top_logprobs": 21}),
        ("OllamaGenerateRequest", "generate", {"model": "m", "context": [1.5]}),
        ("OllamaEmbedRequest", "embed", {"model": "m", "input": "x", "dimensions": "8"}),
        ("OllamaCopyRequest", "copy", {"source": 1, "destination": "b"}),
        ("OllamaPullRequest", "pull", {"model": "m", "insecure": "no"}),
    ],
)
def test_a_body_the_decoder_refuses_does_not_fit_its_schema(
    schema: str, kind: str, body: dict[str, Any]
) -> None:
    with pytest.raises(OllamaRequestError):
        decode_body(orjson.dumps(body), kind)
    assert list(body_validator(schema).iter_errors(body))


def test_the_v1_bodies_are_the_decoders_models() -> None:
    chat = {"model": "m", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 5}
    parse_chat(orjson.dumps(chat))
    assert not list(body_validator("OpenAIChatCompletionRequest").iter_errors(chat))
    assert list(body_validator("OpenAIChatCompletionRequest").iter_errors({"model": "m"}))
    wrong = {**chat, "stream": "yes"}
    assert list(body_validator("OpenAIChatCompletionRequest").iter_errors(wrong))


def test_key_creation_body() -> None:
    validator = body_validator("KeyCreateRequest")
    good = {
        "scope": "user",
        "label": "ci",
        "expires_at": "2030-01-01T00:00:00Z",
        "owner": "team-a",
        "max_priority": "normal",
        "limits": {"requests_per_minute": 10, "tokens_per_day": None, "max_queued": 0},
    }
    assert not list(validator.iter_errors(good))
    assert not list(validator.iter_errors({"scope": "admin", "expires_at": 1_900_000_000}))
    for bad in ({"label": "x"}, {"scope": "root"}, {"scope": "user", "limits": {"max_queued": -1}}):
        assert list(validator.iter_errors(bad)), bad
    documented = operations(DOCUMENT)
    assert ("POST", "/admin/keys") not in documented or "201" in documented[
        ("POST", "/admin/keys")
    ]["responses"]


async def test_the_document_is_served_open_and_built_once(aiohttp_client: AiohttpClient) -> None:
    app = web.Application()
    ollama.add_routes(app.router)
    corral.add_routes(app.router)
    openapi.add_routes(app.router)
    client = await aiohttp_client(app)
    first = await client.get(OPENAPI_PATH)
    assert first.status == 200
    assert first.content_type == "application/json"
    body = await first.read()
    document = orjson.loads(body)
    assert document == orjson.loads(orjson.dumps(build_document(app.router)))
    assert ("GET", OPENAPI_PATH) in operations(document)
    again = await client.get(OPENAPI_PATH)
    assert await again.read() == body
