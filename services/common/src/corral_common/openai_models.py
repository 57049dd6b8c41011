"""An OpenAI-compatible server's model list (`GET /v1/models`) in Ollama's shapes, and the
refusal of what such a server cannot do; shared by the scheduler (its backend's status) and
the model manager (`/api/tags`, `/api/ps`, `/api/show` for the gateway).

An OpenAI-compatible server (llama.cpp's `llama-server`, llama-cpp-python's server, vLLM, LM
Studio) lists model ids and little else: no sizes, digests or families. The entries here carry
what it said (the id as name and model, its `created` time) and Ollama's fields empty, so
clients that read `/api/tags` find every field they expect (`corral_common.ollama_shapes`).
Such a server holds the models it serves loaded for as long as it runs, so `/api/ps` lists the
same models. When the server reports its model's training context (llama-server's
`meta.n_ctx_train`), `/api/show` carries it as `model_info`'s `<architecture>.context_length`,
which the gateway's context check reads.
"""

from __future__ import annotations

import time
from datetime import UTC, datetime
from typing import Any, Literal

from corral_common.errors import CorralError, ErrorType
from corral_common.model_names import same_model
from corral_common.ollama_shapes import ModelDetails, RunningModel, ShowAnswer, TagEntry

BackendKind = Literal["ollama", "openai"]

# What an OpenAI-compatible server's models are said to be (model_info's architecture key).
ARCHITECTURE = "openai"
# `expires_at` of a model the server holds for as long as it runs: Ollama's "forever".
FOREVER = "2318-08-31T23:59:59Z"


def server_root(url: str) -> str:
    """An OpenAI-compatible server's root: its URL without a trailing `/v1` (both spellings
    are accepted in `CORRAL_BACKEND_URL`)."""
    base = url.rstrip("/")
    return base[: -len("/v1")] if base.endswith("/v1") else base


def auth_headers(api_key: str | None) -> dict[str, str]:
    """What authenticates Corral to a server that wants an API key (vLLM, LM Studio)."""
    return {"Authorization": f"Bearer {api_key}"} if api_key else {}


def model_ids(answer: Any) -> list[dict[str, Any]]:
    """The `data` entries of a `/v1/models` answer that have an id."""
    data = answer.get("data") if isinstance(answer, dict) else None
    if not isinstance(data, list):
        return []
    return [m for m in data if isinstance(m, dict) and isinstance(m.get("id"), str)]


def _details() -> ModelDetails:
    return {
        "parent_model": "",
        "format": "",
        "family": "",
        "families": None,
        "parameter_size": "",
        "quantization_level": "",
    }


def _modified_at(entry: dict[str, Any]) -> str:
    created = entry.get("created")
    seconds = created if isinstance(created, int | float) else time.time()
    return datetime.fromtimestamp(seconds, UTC).isoformat().replace("+00:00", "Z")


def tags_entries(answer: Any) -> list[TagEntry]:
    """`/v1/models` as `/api/tags` entries."""
    return [
        {
            "name": entry["id"],
            "model": entry["id"],
            "modified_at": _modified_at(entry),
            "size": _size(entry),
            "digest": "",
            "details": _details(),
        }
        for entry in model_ids(answer)
    ]


def ps_entries(answer: Any) -> list[RunningModel]:
    """`/v1/models` as `/api/ps` entries: the server holds what it serves."""
    return [
        {
            "name": entry["id"],
            "model": entry["id"],
            "size": _size(entry),
            "digest": "",
            "details": _details(),
            "expires_at": FOREVER,
            "size_vram": 0,
        }
        for entry in model_ids(answer)
    ]


def show_answer(answer: Any, model: str) -> ShowAnswer:
    """`/api/show` for one model of `/v1/models`; Ollama's 404 when the server lists no such
    model."""
    entry = next((e for e in model_ids(answer) if same_model(e["id"], model)), None)
    if entry is None:
        raise CorralError(ErrorType.MODEL_NOT_FOUND, f"model '{model}' not found", status=404)
    info: dict[str, Any] = {"general.architecture": ARCHITECTURE}
    meta = entry.get("meta")
    if isinstance(meta, dict) and isinstance(meta.get("n_ctx_train"), int):
        info[f"{ARCHITECTURE}.context_length"] = meta["n_ctx_train"]
    return {
        "license": "",
        "modelfile": "",
        "parameters": "",
        "template": "",
        "details": _details(),
        "model_info": info,
        "capabilities": ["completion"],
        "modified_at": _modified_at(entry),
    }


def _size(entry: dict[str, Any]) -> int:
    meta = entry.get("meta")
    size = meta.get("size") if isinstance(meta, dict) else None
    return size if isinstance(size, int) and not isinstance(size, bool) else 0


def not_supported(kind: BackendKind, operation: str) -> CorralError:
    """501: the backend kind has no such operation (an OpenAI-compatible server cannot pull,
    push, create, copy or delete models, nor take blobs)."""
    return CorralError(
        ErrorType.BACKEND_ERROR,
        f"{operation} is not supported by the {kind} backend (CORRAL_BACKEND_KIND={kind}): "
        "it serves the models it was started with; manage them on the server itself",
        status=501,
        details={"backend_kind": kind, "operation": operation},
    )
