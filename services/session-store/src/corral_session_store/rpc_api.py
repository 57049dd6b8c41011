"""The session RPC methods served on `rpc.session-store` and its `reads` lane (see
corral_common.rpc): the handlers of the methods `corral_common.contracts.session_store`
declares, with their params and results (the identity methods are in `identity_rpc`).
Params arrive parsed (bad ones are refused with `invalid_request` naming the field, as every
RPC server refuses them); a database that is down is a 503 the caller can retry."""

from __future__ import annotations

import functools
from typing import Any

import structlog
from pymongo.errors import PyMongoError

from corral_common.contracts import SESSION_STORE_SERVICE
from corral_common.contracts.session_store import (
    SESSION_STORE,
    AssembleParams,
    AssembleResult,
    Cleared,
    ClearParams,
    CreateParams,
    Deleted,
    ExportResult,
    HistoryParams,
    HistoryResult,
    ImportParams,
    ImportResult,
    ListParams,
    RenameParams,
    SearchParams,
    SearchResult,
    SessionList,
    SessionParams,
    SessionSummary,
    StatsResult,
)
from corral_common.errors import CorralError, ErrorType
from corral_common.rpc import Handler, MethodTable
from corral_session_store.search_gate import BoundedSearches
from corral_session_store.sessions import SessionService

log = structlog.get_logger(__name__)

SERVICE = SESSION_STORE_SERVICE


def database_errors(handler: Handler) -> Handler:
    """A database that is down is a 503 the caller can retry, not a bug."""

    @functools.wraps(handler)
    async def wrapped(params: dict[str, Any]) -> Any:
        bind = {
            key: params[key]
            for key in ("session_id", "request_id")
            if isinstance(params.get(key), str)
        }
        with structlog.contextvars.bound_contextvars(**bind):
            try:
                return await handler(params)
            except PyMongoError as exc:
                log.warning("database error in RPC", error=str(exc))
                raise CorralError(
                    ErrorType.INTERNAL_ERROR,
                    "the session database is not available; try again shortly",
                    status=503,
                ) from exc

    return wrapped


def methods(service: SessionService, searches: BoundedSearches) -> dict[str, Handler]:
    store = service.store
    table = MethodTable(SERVICE)

    @table.serves(SESSION_STORE.assemble)
    async def assemble(p: AssembleParams) -> AssembleResult:
        assembled = await service.assemble(
            session_id=p.session_id,
            model=p.model,
            kind=p.kind,
            # The client's messages go on as sent (validated, every field kept).
            messages=[m.model_dump(exclude_unset=True) for m in p.messages],
            options=p.options,
            owner=p.owner,
            request_id=p.request_id,
            max_history_length=p.max_history_length,
        )
        return AssembleResult.model_validate(assembled)

    @table.serves(SESSION_STORE.history)
    async def history(p: HistoryParams) -> HistoryResult:
        return HistoryResult.model_validate(await store.history(p.session_id, p.model, p.owner))

    @table.serves(SESSION_STORE.list)
    async def list_(p: ListParams) -> SessionList:
        return SessionList.model_validate(
            await store.list_sessions(p.limit, p.offset, p.owner, archived=p.archived)
        )

    @table.serves(SESSION_STORE.rename)
    async def rename(p: RenameParams) -> SessionSummary:
        return SessionSummary.model_validate(await store.rename(p.session_id, p.title, p.owner))

    @table.serves(SESSION_STORE.delete)
    async def delete(p: SessionParams) -> Deleted:
        return Deleted.model_validate(await service.delete(p.session_id, p.owner))

    @table.serves(SESSION_STORE.search)
    async def search(p: SearchParams) -> SearchResult:
        return SearchResult.model_validate(await searches.run(p, store.search))

    @table.serves(SESSION_STORE.stats)
    async def stats(p: SessionParams) -> StatsResult:
        return StatsResult.model_validate(await store.stats(p.session_id, p.owner))

    @table.serves(SESSION_STORE.create)
    async def create(p: CreateParams) -> SessionSummary:
        created = await store.create_session(p.owner, title=p.title, system_prompt=p.system_prompt)
        return SessionSummary.model_validate(created)

    @table.serves(SESSION_STORE.export)
    async def export(p: SessionParams) -> ExportResult:
        return ExportResult.model_validate(await store.export(p.session_id, p.owner))

    @table.serves(SESSION_STORE.import_)
    async def import_(p: ImportParams) -> ImportResult:
        return ImportResult.model_validate(await store.import_session(p, p.owner))

    @table.serves(SESSION_STORE.clear)
    async def clear(p: ClearParams) -> Cleared:
        cleared = await store.clear_all()
        log.warning("every session deleted", **cleared)
        return Cleared.model_validate(cleared)

    return {name: database_errors(handler) for name, handler in table.handlers.items()}
