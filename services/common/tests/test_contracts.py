"""The RPC contracts: every method declared once, servers parsing params alike, callers getting
their declared result (corral_common.contracts and corral_common.rpc, no broker)."""

from __future__ import annotations

from typing import Any

import pytest

from corral_common.contracts import (
    MODEL_MANAGER_SERVICE,
    SESSION_STORE_SERVICE,
    Empty,
    Method,
    Params,
    Result,
    declared,
    parse,
)
from corral_common.contracts.conversations import CONVERSATIONS
from corral_common.contracts.identity import IDENTITY
from corral_common.contracts.model_manager import (
    MODEL_MANAGER,
    BlobUploadChunkParams,
    BlobUploadChunkResult,
    ModelInfo,
    ModelInfoParams,
    NoParams,
    OperationParams,
    ShowParams,
)
from corral_common.contracts.session_store import (
    SESSION_STORE,
    AssembleParams,
    AssembleResult,
    RenameParams,
    SearchResult,
    SessionSummary,
)
from corral_common.errors import CorralError, ErrorType
from corral_common.rpc import RPC_LANES, MethodTable, RpcClient, rpc_route


def test_every_method_is_declared_once_with_its_models() -> None:
    store, manager = declared(SESSION_STORE), declared(MODEL_MANAGER)
    assert [m.name for m in store] == [
        "assemble", "history", "list", "rename", "delete", "search", "stats",
        "create", "export", "import", "clear",
    ]  # fmt: skip
    assert len(manager) == 16
    for api, service in ((store, SESSION_STORE_SERVICE), (manager, MODEL_MANAGER_SERVICE)):
        assert {m.service for m in api} == {service}
        assert len({m.name for m in api}) == len(api)
        for method in api:
            assert issubclass(method.params, Params) and issubclass(method.result, Result)


def test_lanes_come_from_the_declarations() -> None:
    reads = {"search": "reads", "stats": "reads", "history": "reads", "list": "reads"}
    reads |= {"export": "reads", "import": "reads"}
    identity = {m.name: "identity" for m in declared(IDENTITY)}
    conversations = {
        f"conversation_{name}": "reads" for name in ("detail", "list", "stats", "search")
    }
    assert {SESSION_STORE_SERVICE: reads | identity | conversations} == RPC_LANES
    for method in (*declared(SESSION_STORE), *declared(CONVERSATIONS), *declared(MODEL_MANAGER)):
        assert method.route == rpc_route(method.service, method.name)
    assert SESSION_STORE.search.route == "session-store.reads"
    assert SESSION_STORE.assemble.route == "session-store"


@pytest.mark.parametrize(
    ("method", "params", "result"),
    [
        (
            SESSION_STORE.assemble,
            AssembleParams(
                session_id="s1",
                model="llama3.2",
                messages=[{"role": "user", "content": "hi", "name": "kept"}],
                request_id="r1",
            ),
            AssembleResult.model_validate(
                {
                    "messages": [{"role": "user", "content": "hi"}],
                    "context_info": {
                        "truncated": False,
                        "messages_used": 1,
                        "tokens_used": 3,
                        "turns_dropped": 0,
                    },
                    "context_length": None,
                }
            ),
        ),
        (
            SESSION_STORE.search,
            SESSION_STORE.search.params(q="  machine   learning ", limit=5, caller="c"),
            SearchResult(
                query="q", results=[{"session_id": "s", "x": 1.5}], count=1, partial=False
            ),
        ),
        (
            MODEL_MANAGER.show,
            ShowParams(model="tiny", verbose=True),
            MODEL_MANAGER.show.result.model_validate({"license": "MIT", "details": {"a": 1}}),
        ),
        (
            MODEL_MANAGER.pull,
            OperationParams(model="tiny", request_id="r1", gateway_id="gw1"),
            MODEL_MANAGER.pull.result(model="tiny", joined=False),
        ),
        (MODEL_MANAGER.pulls, NoParams(), MODEL_MANAGER.pulls.result(pulls=[])),
        (MODEL_MANAGER.delete, MODEL_MANAGER.delete.params(model="x"), Empty()),
    ],
)
def test_params_and_results_round_trip(
    method: Method[Any, Any], params: Params, result: Result
) -> None:
    assert parse(method.params, params.wire()) == params
    assert method.result.model_validate(result.wire()) == result


def test_params_travel_as_the_caller_set_them() -> None:
    params = AssembleParams(session_id="s1", model="m", messages=[{"role": "user"}])
    # Defaults the caller left alone are not sent (an older server keeps its own).
    assert params.wire() == {"session_id": "s1", "model": "m", "messages": [{"role": "user"}]}
    assert RenameParams(session_id="s", title="  two   words ").wire() == {
        "session_id": "s",
        "title": "two words",
    }


def test_documents_keep_every_field_in_its_order() -> None:
    answer = {"license": "MIT", "modelfile": "FROM x", "details": {}, "model_info": {"a": 1}}
    shown = MODEL_MANAGER.show.result.model_validate(answer).wire()
    assert list(shown) == list(answer) and shown == answer
    summary = {
        "session_id": "s",
        "title": None,
        "created_at": "2025-01-01T00:00:00.000Z",
        "last_activity": None,
        "message_count": 2,
        "models": ["m"],
        "newer": "a field a newer store adds",
    }
    assert SessionSummary.model_validate(summary).wire() == summary


def _invalid(exc: pytest.ExceptionInfo[CorralError]) -> tuple[ErrorType, int, str, Any]:
    error = exc.value
    return error.error_type, error.status, error.message, error.details


def test_bad_params_are_refused_alike_by_callers_and_servers() -> None:
    bad = {"session_id": "s", "title": "x" * 201}
    with pytest.raises(CorralError) as on_server:
        parse(RenameParams, bad)
    with pytest.raises(CorralError) as on_caller:
        RenameParams(**bad)
    assert (
        _invalid(on_server)
        == _invalid(on_caller)
        == (
            ErrorType.INVALID_REQUEST,
            400,
            "invalid title: at most 200 characters",
            {"errors": [{"field": "title", "message": "at most 200 characters"}]},
        )
    )


async def test_servers_parse_params_by_declaration() -> None:
    calls: list[Any] = []
    store = MethodTable(SESSION_STORE.service)
    manager = MethodTable(MODEL_MANAGER.service)

    @store.serves(SESSION_STORE.rename)
    async def rename(p: RenameParams) -> SessionSummary:
        calls.append(p)
        return SessionSummary(
            session_id=p.session_id,
            title=p.title,
            created_at=None,
            last_activity=None,
            message_count=0,
            models=[],
        )

    @manager.serves(MODEL_MANAGER.blob_upload_chunk)
    async def chunk(p: BlobUploadChunkParams) -> BlobUploadChunkResult:
        calls.append(p)
        return BlobUploadChunkResult(received=p.offset)

    renamed = await store.handlers["rename"]({"session_id": "s", "title": " a  b", "x": 1})
    assert renamed["title"] == "a b" and calls == [RenameParams(session_id="s", title="a b")]

    # Both services refuse bad params in one shape, before the handler runs.
    with pytest.raises(CorralError) as bad_id:
        await store.handlers["rename"]({"session_id": "a.b", "title": "t"})
    with pytest.raises(CorralError) as missing:
        await manager.handlers["blob_upload_chunk"]({"upload_id": "u"})
    assert bad_id.value.error_type is missing.value.error_type is ErrorType.INVALID_REQUEST
    assert bad_id.value.message.startswith("invalid session_id: ")
    assert missing.value.message == "invalid offset: Field required"
    assert missing.value.details == {
        "errors": [
            {"field": "offset", "message": "Field required"},
            {"field": "data", "message": "Field required"},
        ]
    }
    assert len(calls) == 1


def test_a_table_serves_only_its_own_service() -> None:
    with pytest.raises(ValueError, match="not a method of session-store"):
        MethodTable(SESSION_STORE.service).serves(MODEL_MANAGER.tags)


class _Answering(RpcClient):
    """A client whose broker answers `answer`, and which records what it sent."""

    def __init__(self, answer: Any) -> None:
        self.answer = answer
        self.sent: list[tuple[str, str, dict[str, Any], str]] = []

    async def _request(self, service: str, method: str, params: dict[str, Any], route: str) -> Any:
        self.sent.append((service, method, params, route))
        return self.answer


async def test_a_typed_call_validates_its_result() -> None:
    info = {"context_length": 4096, "details": {}, "capabilities": ["completion"], "model": "m"}
    client = _Answering(info)
    answer = await client.call(MODEL_MANAGER.model_info, ModelInfoParams(model="m"))
    assert isinstance(answer, ModelInfo) and answer.context_length == 4096
    assert client.sent == [("model-manager", "model_info", {"model": "m"}, "model-manager")]

    listing = _Answering({"sessions": [], "total": 0, "limit": 20, "offset": 0})
    await listing.call(SESSION_STORE.list, SESSION_STORE.list.params())
    assert listing.sent == [("session-store", "list", {}, "session-store.reads")]

    off_contract = _Answering({"context_length": "lots"})
    with pytest.raises(CorralError) as wrong:
        await off_contract.call(MODEL_MANAGER.model_info, ModelInfoParams(model="m"))
    assert wrong.value.error_type is ErrorType.INTERNAL_ERROR
    assert wrong.value.message == "the model-manager service answered model_info off its contract"
