"""The session lifecycle at the edge, in process: `session_id: "new"`, `max_history_length` and
`metadata` read (test_extensions.py shows them stripped); stateless prompts sized against the
window (context_check.py); `POST /sessions`, the archived listing, export and import, and the
operators' clear-all over a fake session store, with the caller's principal owning what is
created."""

from __future__ import annotations

from typing import Any, cast

import pytest
from aiohttp import web
from aiohttp.test_utils import make_mocked_request
from aiohttp.typedefs import Handler
from pytest_aiohttp import AiohttpClient

from corral_common.contracts.session_store import MAX_METADATA_BYTES
from corral_common.errors import CorralError, ErrorType
from corral_gateway import admin, corral
from corral_gateway.app import edge_middlewares
from corral_gateway.context_check import check_stateless, fit_chat, generate_tokens, window_of
from corral_gateway.extensions import read_extensions
from corral_gateway.identity.principal import CALLER
from corral_gateway.settings import GatewaySettings
from corral_gateway.state import GATEWAY, Gateway
from corral_gateway.validation import OllamaRequestError
from services.gateway.tests.fakes import FakeGateway, alice


def request(**headers: str) -> web.Request:
    return make_mocked_request("POST", "/api/chat", headers=headers)


# -- the request's session fields ------------------------------------------------------------


@pytest.mark.parametrize(
    ("headers", "body"),
    [
        ({"X-Session-Id": "new"}, {}),
        ({}, {"session_id": "new"}),
        ({}, {"options": {"session_id": "new"}}),
    ],
)
def test_new_asks_for_a_made_up_session_id(headers: dict[str, str], body: dict[str, Any]) -> None:
    ext = read_extensions(request(**headers), body)
    assert ext.session_created is True
    assert ext.session_id is not None and len(ext.session_id) == 32 and ext.session_id != "new"
    assert read_extensions(request(**headers), body).session_id != ext.session_id
    assert read_extensions(request(), {"session_id": "mine"}).session_created is False


def test_history_cap_and_metadata_from_the_body_or_options() -> None:
    ext = read_extensions(request(), {"max_history_length": 4, "metadata": {"task": "x"}})
    assert (ext.session.max_history_length, ext.session.metadata) == (4, {"task": "x"})
    ext = read_extensions(request(), {"options": {"max_history_length": 0, "metadata": {"a": 1}}})
    assert (ext.session.max_history_length, ext.session.metadata) == (0, {"a": 1})
    ext = read_extensions(request(), {"max_history_length": None, "metadata": None})
    assert (ext.session.max_history_length, ext.session.metadata) == (None, None)


@pytest.mark.parametrize(
    ("body", "words"),
    [
        ({"max_history_length": -1}, "max_history_length must be a whole number"),
        ({"max_history_length": True}, "max_history_length must be a whole number"),
        ({"max_history_length": 2.5}, "max_history_length must be a whole number"),
        ({"options": {"max_history_length": "3"}}, "max_history_length must be a whole number"),
        ({"metadata": "tag"}, "metadata must be a JSON object"),
        ({"metadata": ["a"]}, "metadata must be a JSON object"),
        ({"metadata": {"x": "y" * MAX_METADATA_BYTES}}, f"at most {MAX_METADATA_BYTES} are kept"),
    ],
)
def test_bad_session_fields_are_a_clear_400(body: dict[str, Any], words: str) -> None:
    with pytest.raises(OllamaRequestError) as info:
        read_extensions(request(), body)
    assert info.value.status == 400
    assert words in info.value.message


# -- stateless prompts against the window ----------------------------------------------------


def words(n: int) -> str:
    return " ".join(["word"] * n)


def test_the_window_is_num_ctx_else_the_model_capped_else_the_default() -> None:
    assert window_of({"num_ctx": 256}, 8192, 4096) == 256
    assert window_of({}, 8192, 4096) == 4096
    assert window_of(None, 1024, 4096) == 1024
    assert window_of({"num_ctx": "x"}, None, 4096) == 4096
    assert window_of({"num_ctx": True}, 512, 4096) == 512


def test_a_chat_that_fits_says_nothing() -> None:
    assert check_stateless("chat", {"messages": [{"role": "user", "content": "hi"}]}, 64) is None


def test_a_chat_too_long_says_what_the_backend_will_drop() -> None:
    system = {"role": "system", "content": "be brief"}
    old = [{"role": "user", "content": words(40)}, {"role": "assistant", "content": words(40)}]
    last = {"role": "user", "content": "and now?"}
    info = check_stateless("chat", {"messages": [system, *old, *old, last]}, 130)
    assert info == {
        "truncated": True,
        "messages_used": 4,  # the system message, the newest two, the last
        "messages_dropped": 2,
        "limited_by": "tokens",
        "context_length": 130,
        "estimated": True,
    }


def test_a_last_message_too_large_for_the_window_is_413() -> None:
    messages = [{"role": "system", "content": "s"}, {"role": "user", "content": words(400)}]
    with pytest.raises(CorralError) as info:
        fit_chat(messages, 256)
    assert (info.value.status, info.value.error_type) == (413, ErrorType.CONTEXT_LIMIT_EXCEEDED)
    assert info.value.details["context_length"] == 256
    assert info.value.details["tokens_needed"] > 256


def test_a_generate_prompt_too_large_is_413_and_counts_its_context_and_images() -> None:
    assert check_stateless("generate", {"prompt": "hi"}, 64) is None
    with pytest.raises(CorralError):
        check_stateless("generate", {"prompt": words(400)}, 256)
    small = generate_tokens({"prompt": "hi"})
    assert generate_tokens({"prompt": "hi", "context": [1] * 50}) == small + 50
    assert generate_tokens({"prompt": "hi", "images": ["aGk="]}) > small + 700


# -- the routes ------------------------------------------------------------------------------


@pytest.fixture
async def fake(aiohttp_client: AiohttpClient) -> tuple[Any, FakeGateway]:
    @web.middleware
    async def as_alice(request: web.Request, handler: Handler) -> web.StreamResponse:
        request[CALLER] = alice()
        return await handler(request)

    settings = GatewaySettings()
    app = web.Application(middlewares=[*edge_middlewares(settings), as_alice])
    gateway = FakeGateway()
    app[GATEWAY] = cast(Gateway, gateway)
    corral.add_routes(app.router)
    admin.add_routes(app.router)
    return await aiohttp_client(app), gateway


def summary(session_id: str, **extra: Any) -> dict[str, Any]:
    return {
        "session_id": session_id,
        "title": None,
        "created_at": "2025-08-05T14:00:00.000Z",
        "last_activity": "2025-08-05T14:00:00.000Z",
        "message_count": 0,
        "models": [],
        **extra,
    }


async def test_create_answers_201_with_the_id_owned_by_the_caller(
    fake: tuple[Any, FakeGateway],
) -> None:
    client, gateway = fake

    async def create(params: Any) -> dict[str, Any]:
        return summary("abc", title=params.title, system_prompt=params.system_prompt)

    gateway.rpc.answers["create"] = create
    response = await client.post("/sessions", json={"title": "Trip", "system_prompt": "Be brief."})
    assert response.status == 201
    assert response.headers["X-Session-Id"] == "abc"
    assert response.headers["Location"] == "/sessions/abc/history"
    answer = await response.json()
    assert (answer["title"], answer["system_prompt"]) == ("Trip", "Be brief.")
    [(_, params)] = gateway.rpc.calls
    assert params.owner == "alice"
    # No body at all is fine too.
    assert (await client.post("/sessions")).status == 201


@pytest.mark.parametrize(
    ("body", "field"),
    [
        (b'{"name": "x"}', "name"),
        (b'{"title": 5}', "title"),
        (b'{"system_prompt": ["x"]}', "system_prompt"),
        (b"[]", None),
        (b"{not json", None),
    ],
)
async def test_a_bad_create_body_is_a_400(
    fake: tuple[Any, FakeGateway], body: bytes, field: str | None
) -> None:
    client, _ = fake
    response = await client.post("/sessions", data=body)
    assert response.status == 400
    error = (await response.json())["error"]
    assert error["type"] == "invalid_request"
    if field is not None:
        assert error["details"]["field"] == field


async def test_the_archived_flag_of_the_listing(fake: tuple[Any, FakeGateway]) -> None:
    client, gateway = fake

    async def listing(params: Any) -> dict[str, Any]:
        return {"sessions": [], "total": 0, "limit": params.limit, "offset": params.offset}

    gateway.rpc.answers["list"] = listing
    for query, archived in (("", False), ("?archived=true", True), ("?archived=0", False)):
        assert (await client.get(f"/sessions{query}")).status == 200
        assert gateway.rpc.calls[-1][1].archived is archived
    response = await client.get("/sessions?archived=TRUE")
    assert response.status == 400
    assert (await response.json())["error"]["details"] == {"parameter": "archived"}


async def test_export_and_import(fake: tuple[Any, FakeGateway]) -> None:
    client, gateway = fake
    exported = {
        "format": "corral.session.v1",
        "exported_at": "2025-08-05T15:00:00.000Z",
        "session": {"session_id": "s1", "title": "Plans"},
        "turn_count": 1,
        "message_count": 2,
        "turns": [
            {
                "id": "r1",
                "seq": 1,
                "model": "llama3.2",
                "kind": "chat",
                "messages": [
                    {"role": "user", "content": "hi"},
                    {"role": "assistant", "content": "hello"},
                ],
                "asked_at": "2025-08-05T14:00:00.000Z",
                "answered_at": "2025-08-05T14:00:01.000Z",
                "stats": {"eval_count": 1},
                "metadata": {"task": "x"},
            }
        ],
    }

    async def export(params: Any) -> dict[str, Any]:
        return exported

    async def import_(params: Any) -> dict[str, Any]:
        return summary(
            params.session.session_id,
            created=True,
            turns_imported=len(params.turns),
            turns_skipped=0,
        )

    gateway.rpc.answers |= {"export": export, "import": import_}
    response = await client.get("/sessions/s1/export")
    assert response.status == 200
    assert response.headers["Content-Disposition"] == 'attachment; filename="session-s1.json"'
    assert await response.json() == exported
    assert gateway.rpc.calls[-1][1].owner == "alice"  # a user's export is scoped to it

    # The caller owns what it imports, whatever the body says.
    response = await client.post("/sessions/import", json={**exported, "owner": "mallory"})
    assert response.status == 201
    assert response.headers["X-Session-Id"] == "s1"
    assert (await response.json())["turns_imported"] == 1
    params = gateway.rpc.calls[-1][1]
    assert params.owner == "alice"
    assert params.turns[0].metadata == {"task": "x"}

    response = await client.post("/sessions/import", json={**exported, "format": "v0"})
    assert response.status == 400
    assert (await response.json())["error"]["details"]["errors"][0]["field"] == "format"
    response = await client.post("/sessions/import", data=b'"an export"')
    assert response.status == 400


async def test_clear_all_needs_its_confirmation(fake: tuple[Any, FakeGateway]) -> None:
    client, gateway = fake

    async def clear(params: Any) -> dict[str, Any]:
        return {"deleted": True, "sessions_deleted": 3, "turns_deleted": 7}

    gateway.rpc.answers["clear"] = clear
    for query in ("", "?confirm=yes", "?confirm=DELETE-ALL-SESSIONS"):
        response = await client.delete(f"/admin/sessions{query}")
        assert response.status == 400
        error = (await response.json())["error"]
        assert error["details"] == {"parameter": "confirm", "expected": "delete-all-sessions"}
    assert gateway.rpc.calls == []
    response = await client.delete("/admin/sessions?confirm=delete-all-sessions")
    assert response.status == 200
    assert await response.json() == {"deleted": True, "sessions_deleted": 3, "turns_deleted": 7}


async def test_store_errors_keep_corrals_shape(fake: tuple[Any, FakeGateway]) -> None:
    client, gateway = fake

    async def missing(params: Any) -> dict[str, Any]:
        raise CorralError(ErrorType.SESSION_NOT_FOUND, "Session 'x' does not exist.")

    gateway.rpc.answers["export"] = missing
    response = await client.get("/sessions/x/export")
    assert response.status == 404
    assert (await response.json())["error"]["type"] == "session_not_found"
