"""The conversation RPC methods (corral_common.contracts.conversations): llama-chat's
conversation API over the session store's sessions, served beside the session methods
(`rpc_api`), on the main queue and the `reads` lane as declared. Searches run within the
session searches' bounds (`CORRAL_SEARCH_*`: results, time, and the same concurrency gate)."""

from __future__ import annotations

from corral_common.contracts.conversations import (
    CONVERSATIONS,
    Conversation,
    ConversationDetail,
    ConversationList,
    ConversationParams,
    ConversationSearch,
    ConversationStats,
    Created,
    CreateParams,
    ListParams,
    NoSettingsParams,
    StoreSettings,
)
from corral_common.contracts.session_store import SearchParams
from corral_common.rpc import Handler, MethodTable
from corral_session_store.conversations import ConversationStore
from corral_session_store.rpc_api import SERVICE, database_errors
from corral_session_store.search_gate import BoundedSearches
from corral_session_store.sessions import SessionService


def conversation_methods(service: SessionService, searches: BoundedSearches) -> dict[str, Handler]:
    conversations = ConversationStore(service)
    settings = service.settings
    table = MethodTable(SERVICE)

    @table.serves(CONVERSATIONS.create)
    async def create(p: CreateParams) -> Created:
        number = await conversations.create(p.title, p.model, p.owner)
        return Created(conversation_id=number, session_id=str(number))

    @table.serves(CONVERSATIONS.describe)
    async def describe(p: ConversationParams) -> Conversation:
        return Conversation.model_validate(await conversations.describe(p.session_id, p.owner))

    @table.serves(CONVERSATIONS.detail)
    async def detail(p: ConversationParams) -> ConversationDetail:
        found = await conversations.detail(p.session_id, p.owner)
        return ConversationDetail.model_validate(found)

    @table.serves(CONVERSATIONS.list)
    async def list_(p: ListParams) -> ConversationList:
        found = await conversations.list(p.limit, p.offset, p.owner, archived=p.archived)
        return ConversationList.model_validate(found)

    @table.serves(CONVERSATIONS.stats)
    async def stats(p: ConversationParams) -> ConversationStats:
        found = await conversations.stats(p.session_id, p.owner)
        return ConversationStats.model_validate(found)

    @table.serves(CONVERSATIONS.search)
    async def search(p: SearchParams) -> ConversationSearch:
        return ConversationSearch.model_validate(await searches.run(p, conversations.search))

    @table.serves(CONVERSATIONS.settings)
    async def settings_(p: NoSettingsParams) -> StoreSettings:
        return StoreSettings(
            context={
                "default_num_ctx": settings.default_num_ctx,
                "answer_reserve": settings.answer_reserve,
                "answer_reserve_fraction": settings.answer_reserve_fraction,
            },
            search={
                "max_results": settings.search_max_results,
                "timeout_ms": settings.search_timeout_ms,
                "concurrency": settings.search_concurrency,
                "concurrency_per_caller": settings.search_concurrency_per_caller,
            },
        )

    return {name: database_errors(handler) for name, handler in table.handlers.items()}
