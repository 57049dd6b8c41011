"""Ollama's native API, exactly as Ollama serves it: errors `{"error": "<text>"}`, NDJSON
streams, gin's plain 404/405 for unknown routes (surfaces.unknown_routes)."""

from __future__ import annotations

from aiohttp import web

from corral_gateway.conversations import dispatch
from corral_gateway.ollama import (
    blob_routes,
    chat_routes,
    embed_routes,
    meta_routes,
    model_routes,
    operation_routes,
)
from corral_gateway.surfaces import OLLAMA


def add_routes(router: web.UrlDispatcher) -> None:
    surface = OLLAMA
    surface.get(router, "/", meta_routes.root, "open")
    surface.get(router, "/api/version", meta_routes.version)
    # Also seed 004's conversation messages, told apart by the body (conversations/dispatch.py).
    surface.post(router, "/api/chat", dispatch.chat_dispatch(chat_routes.chat))
    surface.post(router, "/api/generate", chat_routes.generate)
    surface.post(router, "/api/embed", embed_routes.embed)
    surface.post(router, "/api/embeddings", embed_routes.embeddings)
    surface.get(router, "/api/tags", model_routes.tags)
    surface.get(router, "/api/ps", model_routes.running)
    surface.post(router, "/api/show", model_routes.show)
    surface.delete(router, "/api/delete", model_routes.delete, "admin")
    surface.post(router, "/api/copy", model_routes.copy, "admin")
    surface.post(router, "/api/pull", operation_routes.pull, "admin")
    surface.post(router, "/api/create", operation_routes.create, "admin")
    surface.post(router, "/api/push", operation_routes.push, "admin")
    surface.head(router, "/api/blobs/{digest}", blob_routes.head_blob, "admin")
    surface.post(router, "/api/blobs/{digest}", blob_routes.create_blob, "admin")
