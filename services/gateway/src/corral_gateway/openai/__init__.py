"""The OpenAI-compatible surface (`/v1`), as Ollama serves it.

The reference is Ollama's own compatibility layer (`openai/openai.go`, `middleware/openai.go` in
ollama/ollama): the same request mapping onto the native API, the same answer shapes. The first
four modules are pure translation, with no I/O:

- `requests`: the OpenAI request bodies (pydantic), validated with Ollama's error texts, and their
  translation to native `/api/chat`, `/api/generate` and `/api/embed` bodies, Corral's extension
  fields included.
- `responses`: native answers and stream chunks as OpenAI objects (completions, chunks, embeddings,
  models), with one small stateful class per stream.
- `errors`: Corral's failures in OpenAI's error shape, as a JSON answer or an SSE `error` event.
- `sse`: Server-Sent Events framing: data events, `[DONE]`, and comment lines for queue feedback and
  heartbeats.
- `chunk_shapes`: the relay's chunk shapes for `/v1` and its SSE encoder; `routes`: the handlers.

`add_routes` registers the surface: every handler's typed errors rendered in OpenAI's shape.
"""

from __future__ import annotations

from aiohttp import web

from corral_gateway.openai import routes
from corral_gateway.openai.errors import OpenAIError, from_corral
from corral_gateway.responses import json_response
from corral_gateway.surfaces import SURFACE_ERRORS, Route, Surface, as_corral_error


def openai_error(error: Exception, headers: dict[str, str]) -> web.StreamResponse:
    """OpenAI's shape: `{"error": {"message", "type", "param", "code"}}` (errors.py); a refusal
    from the shared path (body too large, a bad X-Request-Id, model missing) as the
    `invalid_request` it is (`surfaces.as_corral_error`)."""
    if isinstance(error, OpenAIError):
        answer, extra = error, {}
    else:
        typed = as_corral_error(error)
        answer, extra = from_corral(typed), typed.headers
    return json_response(answer.body(), answer.status, {**headers, **extra, **answer.headers})


OPENAI = Surface("openai", openai_error, (*SURFACE_ERRORS, OpenAIError))


ROUTES = (
    Route("POST", "/v1/chat/completions", routes.chat_completions),
    Route("POST", "/v1/completions", routes.completions),
    Route("POST", "/v1/embeddings", routes.embeddings),
    # GET only, as Ollama registers them: a HEAD is a 405 there.
    Route("GET", "/v1/models", routes.list_models, head=False),
    # Ollama's route takes no `/` in the name; Corral takes any, so namespaced models resolve.
    Route("GET", "/v1/models/{model:.+}", routes.retrieve_model, head=False),
)


def add_routes(router: web.UrlDispatcher) -> None:
    OPENAI.add(router, *ROUTES)
