"""The model manager's RPC methods (`corral.rpc`, service `model-manager`): the handlers of the
methods `corral_common.contracts.model_manager` declares (the blob ones are in `blob_rpc`).
Params arrive parsed; backend refusals raise the backend's own status and text
(`model 'x' not found`, 404), and a missing name is refused in Ollama's own words.
"""

from __future__ import annotations

from corral_common.contracts import Empty
from corral_common.contracts.model_manager import (
    MODEL_MANAGER,
    CopyParams,
    Created,
    CreateParams,
    Document,
    ModelInfo,
    ModelInfoParams,
    ModelListing,
    ModelNames,
    ModelNamesParams,
    ModelParams,
    NoParams,
    OperationParams,
    OperationStarted,
    PullList,
    ShowParams,
)
from corral_common.errors import CorralError, ErrorType
from corral_common.model_names import is_valid_model_name
from corral_common.rpc import Handler, MethodTable
from corral_model_manager.changes import ModelChanges
from corral_model_manager.model_list import ModelNames as NameList
from corral_model_manager.operations import ModelOperations, Watcher
from corral_model_manager.servers import ModelServers


def _watcher(params: OperationParams | CreateParams) -> Watcher:
    return Watcher(gateway_id=params.gateway_id, request_id=params.request_id)


def _listing(answer: object) -> ModelListing:
    """The backend's `/api/tags` or `/api/ps`, which must hold a model list."""
    if not isinstance(answer, dict) or not isinstance(answer.get("models"), list):
        raise CorralError(
            ErrorType.BACKEND_ERROR,
            "Invalid response format from Ollama: no model list",
            status=500,
        )
    return ModelListing.model_validate(answer)


def model_manager_methods(
    *,
    servers: ModelServers,
    operations: ModelOperations,
    names: NameList,
    changes: ModelChanges,
) -> dict[str, Handler]:
    table = MethodTable(MODEL_MANAGER.service)

    def managed(operation: str) -> None:
        """Only Ollama manages its models; a backend of no other kind answers 501 naming it
        (in a mixed pool, the Ollama servers do it)."""
        servers.managed(operation)

    @table.serves(MODEL_MANAGER.model_info)
    async def model_info(p: ModelInfoParams) -> ModelInfo:
        if not p.model:
            raise CorralError(ErrorType.INVALID_REQUEST, "model is required")
        return ModelInfo.model_validate(await servers.model_info(p.model))

    @table.serves(MODEL_MANAGER.tags)
    async def tags(_: NoParams) -> ModelListing:
        return _listing(await servers.tags())

    @table.serves(MODEL_MANAGER.ps)
    async def running(_: NoParams) -> ModelListing:
        return _listing(await servers.running())

    @table.serves(MODEL_MANAGER.show)
    async def show(p: ShowParams) -> Document:
        return Document.model_validate(await servers.show(p.model_dump(exclude_unset=True)))

    @table.serves(MODEL_MANAGER.pull)
    async def pull(p: OperationParams) -> OperationStarted:
        managed("pull")
        if not p.model.strip():
            # Ollama's own answer to a pull without a name (errtypes.InvalidModelNameErrMsg).
            raise CorralError(ErrorType.INVALID_REQUEST, "invalid model name")
        joined = operations.pull(p.model, _watcher(p), insecure=p.insecure)
        return OperationStarted(model=p.model, joined=joined)

    @table.serves(MODEL_MANAGER.push)
    async def push(p: OperationParams) -> OperationStarted:
        managed("push")
        if not p.model.strip():
            # PushHandler's own answer to a push without a name.
            raise CorralError(ErrorType.INVALID_REQUEST, "model is required")
        if not is_valid_model_name(p.model):
            # Ollama answers 500 `unqualified name: ...` once its push has begun; a name that
            # cannot be pushed is the client's error, answered before anything starts.
            raise CorralError(ErrorType.INVALID_REQUEST, "invalid model name")
        joined = operations.push(p.model, _watcher(p), insecure=p.insecure)
        return OperationStarted(model=p.model, joined=joined)

    @table.serves(MODEL_MANAGER.create)
    async def create(p: CreateParams) -> Created:
        managed("create")
        body = {key: value for key, value in p.body.items() if key != "stream"}
        operations.create(body, _watcher(p))
        model = body.get("model") or body.get("name") or ""
        return Created(model=model if isinstance(model, str) else str(model))

    @table.serves(MODEL_MANAGER.delete)
    async def delete(p: ModelParams) -> Empty:
        await servers.call("delete", "DELETE", "/api/delete", {"model": p.model})
        await changes.changed(p.model)
        return Empty()

    @table.serves(MODEL_MANAGER.copy)
    async def copy(p: CopyParams) -> Empty:
        body = {"source": p.source, "destination": p.destination}
        await servers.call("copy", "POST", "/api/copy", body)
        await changes.changed(p.destination)
        return Empty()

    @table.serves(MODEL_MANAGER.pulls)
    async def pulls(_: NoParams) -> PullList:
        return PullList(pulls=operations.pulls())

    @table.serves(MODEL_MANAGER.model_names)
    async def model_names(p: ModelNamesParams) -> ModelNames:
        listed = await names.refresh() if p.refresh else await names.current()
        return ModelNames(models=listed, updated_at=names.updated_at)

    return table.handlers
