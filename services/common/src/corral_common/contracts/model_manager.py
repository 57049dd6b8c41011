"""The model manager's RPC methods (service `model-manager`), served by
`corral_model_manager.rpc_methods` and `blob_rpc`, called by the gateway and the session store.

    model_info  ModelInfoParams -> ModelInfo (cached): the model's context length, details
                and capabilities
    tags, ps    Empty -> ModelListing: the backend's `/api/tags`, `/api/ps`
    show        ShowParams (the client's `/api/show` body) -> Document: the backend's answer
    pull, push  OperationParams -> OperationStarted at once; status lines follow as
                `progress` events, then `final` or `error` (push: see `corral_common.blobs`)
    create      CreateParams -> Created at once; events follow
    delete      ModelParams -> Empty
    copy        CopyParams -> Empty
    pulls       Empty -> PullList: the pulls running or recently over (`GET /admin/pulls`)
    model_names ModelNamesParams -> ModelNames: the backend's models, canonical names
    blob_head, blob_upload_begin, _chunk, _finish, _abort: `corral_common.blobs` tells how a
                blob travels in pieces

Model names are passed as the client gave them: an empty one is for the backend (or the
handler, in Ollama's words) to refuse. Backend refusals raise the backend's own status and text
(`model 'x' not found`, 404).
"""

from __future__ import annotations

from typing import Annotated, Any, Final

from pydantic import AfterValidator, BeforeValidator, ConfigDict

from corral_common.contracts import MODEL_MANAGER_SERVICE, Empty, Method, Params, Result

# Ids travel in topic routing keys, where these characters have meanings of their own.
_ROUTING_SPECIALS = frozenset(".*#")


def _check_routing_id(value: str) -> str:
    if not value or _ROUTING_SPECIALS & set(value):
        raise ValueError("must be an id without dots")
    return value


RoutingId = Annotated[str, AfterValidator(_check_routing_id)]


def _as_given(value: object) -> object:
    return value if isinstance(value, str) else ""


ClientName = Annotated[str, BeforeValidator(_as_given)]
"""A model name as the client gave it; anything but a string is an empty one, which the backend
(or the handler, in Ollama's words) refuses."""


class NoParams(Params):
    pass


class Document(Result):
    """A backend's JSON object, passed on as it is (every field kept, in its order)."""


class ModelInfoParams(Params):
    model: ClientName = ""


class ModelInfo(Result):
    context_length: int | None
    details: dict[str, Any]
    capabilities: list[str]
    model: str


class ModelListing(Result):
    """`/api/tags` and `/api/ps`: `{"models": [...]}`, each model as the backend lists it."""

    models: list[dict[str, Any]]


class ShowParams(Params):
    """The client's `/api/show` body: `model` and whatever else it asks (`verbose`)."""

    model_config = ConfigDict(extra="allow", frozen=True)

    model: str


class ModelParams(Params):
    model: ClientName = ""


class CopyParams(Params):
    source: ClientName = ""
    destination: ClientName = ""


class OperationParams(Params):
    """`pull` and `push`: the events go to `gw.<gateway_id>.<request_id>.*`."""

    model: ClientName = ""
    insecure: bool = False
    request_id: RoutingId
    gateway_id: RoutingId


class OperationStarted(Result):
    model: str
    joined: bool
    """True when the same operation was already running and this request joined it."""


class CreateParams(Params):
    body: dict[str, Any]
    """The client's `/api/create` body, without `stream`."""
    request_id: RoutingId
    gateway_id: RoutingId


class Created(Result):
    model: str


class PullList(Result):
    pulls: list[dict[str, Any]]
    """`{model, state, status, digest, total, completed, percent, started_at, updated_at,
    error, watchers}`."""


class ModelNamesParams(Params):
    refresh: bool = False
    """Ask the backend now rather than answer the list as last seen."""


class ModelNames(Result):
    models: list[str]
    updated_at: float | None


class BlobHeadParams(Params):
    digest: str


class BlobHeadResult(Result):
    exists: bool


class BlobUploadBeginParams(Params):
    digest: str


class BlobUploadBeginResult(Result):
    upload_id: str | None
    """None when the backend already has the blob (`status` 200)."""
    status: int | None = None


class BlobUploadChunkParams(Params):
    upload_id: str
    offset: int
    data: str
    """base64 of the bytes."""


class BlobUploadChunkResult(Result):
    received: int


class BlobUploadParams(Params):
    """`blob_upload_finish` and `blob_upload_abort`."""

    upload_id: str


class BlobUploadFinishResult(Result):
    status: int
    """201 created, 200 already present: the backend's own answer."""


_MM = MODEL_MANAGER_SERVICE


class ModelManagerApi:
    """The declarations, one attribute per method."""

    service: Final = MODEL_MANAGER_SERVICE
    model_info: Final = Method(_MM, "model_info", ModelInfoParams, ModelInfo)
    tags: Final = Method(_MM, "tags", NoParams, ModelListing)
    ps: Final = Method(_MM, "ps", NoParams, ModelListing)
    show: Final = Method(_MM, "show", ShowParams, Document)
    pull: Final = Method(_MM, "pull", OperationParams, OperationStarted)
    push: Final = Method(_MM, "push", OperationParams, OperationStarted)
    create: Final = Method(_MM, "create", CreateParams, Created)
    delete: Final = Method(_MM, "delete", ModelParams, Empty)
    copy: Final = Method(_MM, "copy", CopyParams, Empty)
    pulls: Final = Method(_MM, "pulls", NoParams, PullList)
    model_names: Final = Method(_MM, "model_names", ModelNamesParams, ModelNames)
    blob_head: Final = Method(_MM, "blob_head", BlobHeadParams, BlobHeadResult)
    blob_upload_begin: Final = Method(
        _MM, "blob_upload_begin", BlobUploadBeginParams, BlobUploadBeginResult
    )
    blob_upload_chunk: Final = Method(
        _MM, "blob_upload_chunk", BlobUploadChunkParams, BlobUploadChunkResult
    )
    blob_upload_finish: Final = Method(
        _MM, "blob_upload_finish", BlobUploadParams, BlobUploadFinishResult
    )
    blob_upload_abort: Final = Method(_MM, "blob_upload_abort", BlobUploadParams, Empty)


MODEL_MANAGER = ModelManagerApi()
