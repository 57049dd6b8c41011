"""The model manager's RPC methods (`corral.rpc`, service `model-manager`).

| method | params | result |
| --- | --- | --- |
| `model_info` | `{model}` | `{model, context_length, details, capabilities}` (cached) |
| `tags`, `ps` | `{}` | the backend's `/api/tags`, `/api/ps` |
| `show` | the client's `/api/show` body | the backend's answer |
| `pull` | `{model, insecure?, request_id, gateway_id}` | `{model, joined}` at once; events follow |
| `push` | `{model, insecure?, request_id, gateway_id}` | `{model, joined}` at once; events follow |
| `create` | `{body, request_id, gateway_id}` | `{model}` at once; events follow |
| `delete` | `{model}` | `{}` |
| `copy` | `{source, destination}` | `{}` |
| `pulls` | `{}` | `{pulls: [{model, state, status, digest, total, completed, percent,
  started_at, updated_at, error, watchers}]}` |
| `model_names` | `{refresh?}` | `{models: [canonical names], updated_at}` |
| `blob_head`, `blob_upload_*` | see `corral_common.blobs` (served by `blob_rpc`) | |

Backend refusals raise the backend's own status and text (`model 'x' not found`, 404).
"""

from __future__ import annotations

from typing import Any

from corral_common.blobs import PUSH
from corral_common.errors import CorralError, ErrorType
from corral_common.rpc import Handler
from corral_model_manager.backend import Backend
from corral_model_manager.catalogue import ModelCatalogue
from corral_model_manager.changes import ModelChanges
from corral_model_manager.model_list import ModelNames
from corral_model_manager.operations import ModelOperations, Watcher

# Ids travel in topic routing keys, where these characters have meanings of their own.
_ROUTING_SPECIALS = frozenset(".*#")


def _id_param(params: dict[str, Any], name: str) -> str:
    value = params.get(name)
    if not isinstance(value, str) or not value or _ROUTING_SPECIALS & set(value):
        raise CorralError(ErrorType.INVALID_REQUEST, f"{name} is required (an id without dots)")
    return value


def _watcher(params: dict[str, Any]) -> Watcher:
    return Watcher(
        gateway_id=_id_param(params, "gateway_id"), request_id=_id_param(params, "request_id")
    )


def _name_param(params: dict[str, Any], name: str) -> str:
    """A model name as the client gave it; an empty or missing one is for the backend to
    refuse in its own words."""
    value = params.get(name)
    return value if isinstance(value, str) else ""


def model_manager_methods(
    *,
    catalogue: ModelCatalogue,
    backend: Backend,
    operations: ModelOperations,
    names: ModelNames,
    changes: ModelChanges,
) -> dict[str, Handler]:
    async def model_info(params: dict[str, Any]) -> Any:
        model = params.get("model")
        if not isinstance(model, str) or not model:
            raise CorralError(ErrorType.INVALID_REQUEST, "model is required")
        return await catalogue.model_info(model)

    async def tags(_: dict[str, Any]) -> Any:
        return await catalogue.tags()

    async def running(_: dict[str, Any]) -> Any:
        return await catalogue.running()

    async def show(params: dict[str, Any]) -> Any:
        return await catalogue.show(params)

    async def pull(params: dict[str, Any]) -> Any:
        model = params.get("model")
        if not isinstance(model, str) or not model.strip():
            # Ollama's own answer to a pull without a name (errtypes.InvalidModelNameErrMsg).
            raise CorralError(ErrorType.INVALID_REQUEST, "invalid model name")
        joined = operations.pull(model, _watcher(params), insecure=bool(params.get("insecure")))
        return {"model": model, "joined": joined}

    async def push(params: dict[str, Any]) -> Any:
        model = params.get("model")
        if not isinstance(model, str) or not model.strip():
            # PushHandler's own answer to a push without a name.
            raise CorralError(ErrorType.INVALID_REQUEST, "model is required")
        joined = operations.push(model, _watcher(params), insecure=bool(params.get("insecure")))
        return {"model": model, "joined": joined}

    async def create(params: dict[str, Any]) -> Any:
        body = params.get("body")
        if not isinstance(body, dict):
            raise CorralError(ErrorType.INVALID_REQUEST, "body is required")
        body = {key: value for key, value in body.items() if key != "stream"}
        operations.create(body, _watcher(params))
        return {"model": body.get("model") or body.get("name") or ""}

    async def delete(params: dict[str, Any]) -> Any:
        model = _name_param(params, "model")
        await backend.call("DELETE", "/api/delete", {"model": model})
        await changes.changed(model)
        return {}

    async def copy(params: dict[str, Any]) -> Any:
        source = _name_param(params, "source")
        destination = _name_param(params, "destination")
        await backend.call("POST", "/api/copy", {"source": source, "destination": destination})
        await changes.changed(destination)
        return {}

    async def pulls(_: dict[str, Any]) -> Any:
        return {"pulls": operations.pulls()}

    async def model_names(params: dict[str, Any]) -> Any:
        listed = await names.refresh() if params.get("refresh") else await names.current()
        return {"models": listed, "updated_at": names.updated_at}

    return {
        "model_info": model_info,
        "tags": tags,
        "ps": running,
        "show": show,
        "pull": pull,
        PUSH: push,
        "create": create,
        "delete": delete,
        "copy": copy,
        "pulls": pulls,
        "model_names": model_names,
    }
