"""Llama-chat's conversation API, base `/api`: models, config, conversations,
statistics, search, and conversation messages on `POST /api/chat`.

A conversation is a session (conversation N is session "N"), so both APIs address the same
history; errors are llama-chat's `{"success": false, "error", "code", "details"}` (errors.py).
The modules:

- `conversation_routes`: list, create, read, rename, delete, stats, and `/api/search`;
- `chat_routes`: a message to a conversation, through the native path (the lane, sessions);
- `dispatch`: `POST /api/chat`, told apart from Ollama's own chat by the body's shape (the
  Ollama surface registers the route with this dispatcher, `ollama/__init__.py`);
- `meta_routes`: `/api/models` and `/api/config`;
- `errors`: llama-chat's error shape.

`/api/search` was Corral's before llama-chat's API was served: it stays on the Corral surface
(its errors in Corral's shape, which its clients parse), and its answer carries both shapes'
fields.
"""

from __future__ import annotations

from aiohttp import web

from corral_gateway.conversations import conversation_routes, meta_routes
from corral_gateway.conversations.errors import conversation_error
from corral_gateway.surfaces import CORRAL, Route, Surface

CONVERSATIONS = Surface("conversations", conversation_error)


CONVERSATION = "/api/conversations/{conversation_id}"
ROUTES = (
    Route("GET", "/api/models", meta_routes.models),
    Route("GET", "/api/config", meta_routes.config),
    Route("GET", "/api/conversations", conversation_routes.conversation_list),
    Route("POST", "/api/conversations", conversation_routes.conversation_create),
    Route("GET", CONVERSATION, conversation_routes.conversation_detail),
    Route("PUT", CONVERSATION, conversation_routes.conversation_rename),
    Route("DELETE", CONVERSATION, conversation_routes.conversation_delete),
    Route("GET", "/api/stats/{conversation_id}", conversation_routes.conversation_stats),
)
# Corral's before llama-chat's API, so on the Corral surface still (the module's docstring says
# why).
SEARCH = Route("GET", "/api/search", conversation_routes.search)


def add_routes(router: web.UrlDispatcher) -> None:
    CONVERSATIONS.add(router, *ROUTES)
    CORRAL.add(router, SEARCH)
