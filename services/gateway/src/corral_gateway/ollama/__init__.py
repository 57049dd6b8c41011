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
from corral_gateway.surfaces import OLLAMA, Route

ROUTES = (
    Route("GET", "/", meta_routes.root, "open"),
    Route("GET", "/api/version", meta_routes.version),
    # Also llama-chat's conversation messages, told apart by the body (conversations/dispatch.py).
    Route("POST", "/api/chat", dispatch.chat_dispatch(chat_routes.chat)),
    Route("POST", "/api/generate", chat_routes.generate),
    Route("POST", "/api/embed", embed_routes.embed),
    Route("POST", "/api/embeddings", embed_routes.embeddings),
    Route("GET", "/api/tags", model_routes.tags),
    Route("GET", "/api/ps", model_routes.running, head=False),
    Route("POST", "/api/show", model_routes.show),
    Route("DELETE", "/api/delete", model_routes.delete, "admin"),
    Route("POST", "/api/copy", model_routes.copy, "admin"),
    Route("POST", "/api/pull", operation_routes.pull, "admin"),
    Route("POST", "/api/create", operation_routes.create, "admin"),
    Route("POST", "/api/push", operation_routes.push, "admin"),
    Route("HEAD", "/api/blobs/{digest}", blob_routes.head_blob, "admin"),
    Route("POST", "/api/blobs/{digest}", blob_routes.create_blob, "admin"),
)


def add_routes(router: web.UrlDispatcher) -> None:
    OLLAMA.add(router, *ROUTES)
