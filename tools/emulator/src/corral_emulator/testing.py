"""Helpers for tests that drive the emulator (this package's and other Corral packages')."""

from __future__ import annotations

import asyncio
import re
from collections.abc import Awaitable, Callable
from typing import Any

import orjson
from aiohttp import web
from aiohttp.test_utils import TestClient

from corral_emulator.state import EmulatorState

EmulatorTestClient = TestClient[web.Request, web.Application]
ClientFactory = Callable[..., Awaitable[EmulatorTestClient]]

RFC3339_UTC = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d{1,9})?Z$")
"""Ollama's `created_at`: UTC, `Z` suffix, up to nine fraction digits."""

DEFAULT_WAIT_S = 5.0


# The timing and count fields Ollama puts on a final chunk (all integers, durations in ns).
METRICS = (
    "total_duration",
    "load_duration",
    "prompt_eval_count",
    "prompt_eval_duration",
    "eval_count",
    "eval_duration",
)


async def post_stream(
    client: EmulatorTestClient, path: str, body: dict[str, Any]
) -> list[dict[str, Any]]:
    """POST a streaming request and return its chunks, checking status and content type."""
    response = await client.post(path, json=body)
    assert response.status == 200
    assert response.headers["Content-Type"] == "application/x-ndjson"
    return parse_ndjson(await response.read())


def parse_ndjson(body: bytes) -> list[dict[str, Any]]:
    """Parse an NDJSON body, enforcing Ollama's framing: one object per `\\n`-ended line and
    no blank lines (the Python client chokes on those)."""
    if not body.endswith(b"\n"):
        raise ValueError(f"NDJSON body does not end with a newline: {body[-80:]!r}")
    lines = body.split(b"\n")[:-1]
    if not all(lines):
        raise ValueError("blank line in NDJSON body")
    return [orjson.loads(line) for line in lines]


async def wait_for_state(
    state: EmulatorState, predicate: Callable[[], bool], within_s: float = DEFAULT_WAIT_S
) -> None:
    """Wait (without polling) until `predicate()` holds; TimeoutError after `within_s`."""
    async with asyncio.timeout(within_s):
        await state.wait_for(predicate)


def chat_body(
    content: str = "hello there", model: str = "llama3.2", **extra: Any
) -> dict[str, Any]:
    """A one-message /api/chat body; `extra` adds top-level fields (stream, options, ...)."""
    return {"model": model, "messages": [{"role": "user", "content": content}], **extra}
