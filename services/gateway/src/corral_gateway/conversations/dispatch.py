"""One path, two APIs: `POST /api/chat` is Ollama's chat and llama-chat's conversation message.

The rule, by the body's shape alone: a body is a **conversation message** when it is a JSON
object with a `conversation_id` that is not null and no `messages` (absent or null). Anything
else is **Ollama's**, and goes to Ollama's handler exactly as before (its errors, its load
idiom, its streams).

Why this rule: `conversation_id` is no field of Ollama's `ChatRequest`, and an Ollama body
without `messages` can only load a model (`done_reason: "load"`), which is never what a client
sending a conversation id means (it was answered 200 with an empty reply). A body with
`messages`, even `[]`, is Ollama's whatever else it carries: an Ollama client that tags its
requests with a `conversation_id` of its own keeps Ollama's answers, the load idiom included.
A conversation body missing `message` (or with a bad one) is then refused in llama-chat's shape
(400 `VALIDATION_ERROR`, `field: "message"`), not loaded.

The body is read once (aiohttp keeps it for the handler) and parsed here only when its bytes
contain `"conversation_id"` (the key written plainly, as every JSON encoder writes it), so an
Ollama chat, however large its images, is not parsed twice.
"""

from __future__ import annotations

from typing import Any

from aiohttp import web

from corral_common import jsonutil
from corral_gateway import metrics
from corral_gateway.body import read_body
from corral_gateway.conversations import chat_routes
from corral_gateway.conversations.errors import conversation_error
from corral_gateway.state import SETTINGS
from corral_gateway.surfaces import ERROR_HEADERS, SURFACE_ERRORS, RouteHandler
from corral_gateway.validation import OllamaRequestError

CONVERSATION_KEY = b'"conversation_id"'


def is_conversation_body(body: Any) -> bool:
    """The dispatch rule on a decoded body (see the module doc)."""
    return (
        isinstance(body, dict)
        and body.get("conversation_id") is not None
        and body.get("messages") is None
    )


def is_conversation_chat(raw: bytes) -> bool:
    """The dispatch rule on the raw body; what is not JSON is Ollama's to refuse."""
    if CONVERSATION_KEY not in raw:
        return False
    try:
        return is_conversation_body(jsonutil.loads_bounded(raw))
    except (jsonutil.TooDeep, jsonutil.JSONDecodeError):
        return False


async def in_seed_shape(request: web.Request, handler: RouteHandler) -> web.StreamResponse:
    """`handler`'s typed errors in llama-chat's shape. The route's own surface (Ollama's) has
    already admitted the caller (key, access, rate limit: counted once)."""
    try:
        return await handler(request)
    except SURFACE_ERRORS as exc:
        return conversation_error(exc, dict(request.get(ERROR_HEADERS, {})))


def chat_dispatch(ollama_chat: RouteHandler) -> RouteHandler:
    """The `/api/chat` handler: conversation messages to llama-chat's handler, everything else to
    `ollama_chat`."""

    async def chat(request: web.Request) -> web.StreamResponse:
        """Chat with a model (Ollama's request), or send a message to a conversation
        (llama-chat's `{"conversation_id", "message", "model"}`): a body with a `conversation_id`
        and no `messages` is a conversation message, any other is Ollama's."""
        try:
            raw = await read_body(request, request.app[SETTINGS].max_body_bytes)
        except OllamaRequestError:
            # Too large to be anything: refused by the surface as Ollama refuses it, and
            # counted as the native handler would have counted it.
            metrics.REQUESTS.labels("chat", "invalid").inc()
            raise
        if is_conversation_chat(raw):
            return await in_seed_shape(request, chat_routes.chat)
        return await ollama_chat(request)

    return chat
