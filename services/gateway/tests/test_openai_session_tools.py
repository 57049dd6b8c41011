"""A `/v1` tool result in a session names its tool as Ollama's /v1 layer names it: the call it
answers is in the stored history, which the request's translation never sees, so the surface
names it once the session's conversation is assembled. The native surface stays Ollama's own
(it names nothing)."""

from __future__ import annotations

from typing import Any, cast

import pytest
from aiohttp import web
from pytest_aiohttp import AiohttpClient

from corral_common.messages import Event
from corral_gateway import ollama, openai
from corral_gateway.openai.requests import name_tool_results
from corral_gateway.settings import GatewaySettings
from corral_gateway.state import GATEWAY, SETTINGS, Gateway
from services.gateway.tests import fakes
from services.gateway.tests.fakes import FakeGateway

MODEL = "m"
CALL = {"id": "call_1", "function": {"index": 0, "name": "get_weather", "arguments": {}}}
# The session's stored turn: the user's question and the model's call.
HISTORY: list[dict[str, Any]] = [
    {"role": "user", "content": "weather in Paris?"},
    {"role": "assistant", "content": "", "tool_calls": [CALL]},
]


class Models:
    async def check(self, model: str, *, not_found: str | None = None) -> None:
        return None


class SessionGateway(FakeGateway):
    def __init__(self) -> None:
        super().__init__(GatewaySettings(heartbeat_s=60, stored_timeout_s=0.0))
        self.models = Models()

        async def assemble(params: Any) -> dict[str, Any]:
            new = [m.model_dump(exclude_unset=True) for m in params.messages]
            return {
                "messages": [*(dict(m) for m in HISTORY), *new],
                "context_info": {
                    "truncated": False,
                    "messages_used": 3,
                    "tokens_used": 9,
                    "turns_dropped": 0,
                },
                "context_length": 4096,
            }

        self.rpc.answers = {"assemble": assemble}


def answered(request_id: str) -> list[Event]:
    return fakes.answered(request_id, "sunny", model=MODEL, session_id="s1")


async def sent_messages(
    aiohttp_client: AiohttpClient, path: str, body: dict[str, Any]
) -> list[dict[str, Any]]:
    """The messages the lane got for `body`, posted to `path` in session "s1"."""
    gateway = SessionGateway()
    app = web.Application()
    app[SETTINGS] = gateway.settings
    app[GATEWAY] = cast(Gateway, gateway)
    ollama.add_routes(app.router)
    openai.add_routes(app.router)
    client = await aiohttp_client(app)
    gateway.hub.feed("r1", *answered("r1"))
    headers = {"X-Session-Id": "s1", "X-Request-Id": "r1"}
    response = await client.post(path, json=body, headers=headers)
    assert response.status == 200, await response.text()
    await response.read()
    [job] = gateway.submitter.submitted
    return cast(list[dict[str, Any]], job.payload["messages"])


async def test_a_v1_tool_result_answering_a_stored_call_is_named(
    aiohttp_client: AiohttpClient,
) -> None:
    tool = {"role": "tool", "tool_call_id": "call_1", "content": "sunny"}
    body = {"model": MODEL, "messages": [tool]}
    messages = await sent_messages(aiohttp_client, "/v1/chat/completions", body)
    assert messages[-1]["tool_name"] == "get_weather"
    assert messages[-1]["tool_call_id"] == "call_1"


async def test_a_native_tool_result_is_sent_as_the_client_sent_it(
    aiohttp_client: AiohttpClient,
) -> None:
    tool = {"role": "tool", "tool_call_id": "call_1", "content": "sunny"}
    body = {"model": MODEL, "messages": [tool], "stream": False}
    messages = await sent_messages(aiohttp_client, "/api/chat", body)
    assert "tool_name" not in messages[-1]


@pytest.mark.parametrize(
    ("message", "named"),
    [
        ({"role": "tool", "tool_call_id": "call_1", "content": "x"}, "get_weather"),
        ({"role": "Tool", "tool_call_id": "call_1", "content": "x"}, "get_weather"),
        # Named by the client, or by the translation: kept.
        ({"role": "tool", "tool_call_id": "call_1", "tool_name": "mine"}, "mine"),
        # No call of that id anywhere, or no id: nothing to name it by.
        ({"role": "tool", "tool_call_id": "call_9", "content": "x"}, None),
        ({"role": "tool", "content": "x"}, None),
        ({"role": "user", "tool_call_id": "call_1", "content": "x"}, None),
    ],
)
def test_tool_results_are_named_after_their_call(
    message: dict[str, Any], named: str | None
) -> None:
    messages = [*(dict(m) for m in HISTORY), dict(message)]
    name_tool_results(messages)
    assert messages[-1].get("tool_name") == named
    assert messages[:2] == HISTORY
