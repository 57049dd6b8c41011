"""Llama-chat's conversations over the session store's own collections (see store.py).

A conversation is a session: conversation N is the session document `{_id: "N"}`, and its
messages are that session's turns. Creating one inserts the session document up front (title,
model, owner, times; no turns yet) under a number taken from the `sequences` collection:

    sequences: {_id: "conversation_id", value: <the last number handed out>}

The number comes from an atomic `$inc` (so two gateways never hand out the same one), and the
session is created with `insert_one` of that `_id`: if a session already has it (a client
chose the id "7" through the Ollama API), the insert fails on the unique `_id`, the counter
is moved past the ids in use just above it (`$max`, never backwards), and the next number is
tried. Nothing is read-then-written, so no race can give two conversations one session.

Messages are numbered by their place in the conversation (1 = the first), which is stable
because turns are only ever appended in `seq` order. Token counts: an answer's is the backend's
own `eval_count`; every other message's is estimated from its text with the model's calibrated
factor (`chars / 4 * factor`), as llama-chat estimates them.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from pymongo import ASCENDING, DESCENDING, ReturnDocument
from pymongo.asynchronous.collection import AsyncCollection
from pymongo.errors import DuplicateKeyError

from corral_common.contracts.conversations import conversation_id_of
from corral_common.errors import CorralError, ErrorType
from corral_session_store.sessions import SessionService
from corral_session_store.store import (
    ACTIVE,
    ARCHIVED,
    Document,
    average,
    empty_session,
    is_archived,
    iso,
    utcnow,
)
from corral_session_store.tokens import CHARS_PER_TOKEN

SEQUENCES = "sequences"
CONVERSATION_SEQUENCE = "conversation_id"
# After a number some session already has, this many numbers above it are looked at in one
# query, and the counter moved past those in use.
ID_PROBE = 64
CREATE_ATTEMPTS = 16
# The roles `by_role` lists first, in this order (llama-chat's); any others follow by name.
ROLE_ORDER = ("user", "assistant")


def estimate_tokens(text: str, factor: float = 1.0) -> int:
    """llama-chat's estimate of a text's tokens (`chars / 4`), scaled by the model's factor."""
    return math.ceil(len(text) / CHARS_PER_TOKEN * factor) if text else 0


def response_ms(stats: Mapping[str, Any]) -> int | None:
    """A turn's response time in milliseconds: the backend's `total_duration` (load, prompt
    and generation; the wait in Corral's queue is not in it)."""
    total = stats.get("total_duration")
    if isinstance(total, int) and not isinstance(total, bool):
        return round(total / 1e6)
    return None


def _int(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def conversation_model(session: Mapping[str, Any]) -> str | None:
    """The model a conversation was created with; for a session the Ollama API started (no
    `model` of its own), the last model it used."""
    model = session.get("model")
    if isinstance(model, str) and model:
        return model
    models = session.get("models") or []
    return str(models[-1]) if models else None


def conversation(session: Document) -> Document:
    """Llama-chat's conversation object; an archived one (the sessions' lifecycle) also says so,
    `archived` and `archived_at`, as the session lists do (an active one: llama-chat's fields)."""
    found: Document = {
        "id": conversation_id_of(str(session["_id"])),
        "title": session.get("title"),
        "model": conversation_model(session),
        "created_at": iso(session.get("created_at")),
        "updated_at": iso(session.get("last_activity")),
    }
    if is_archived(session):
        found |= {"archived": True, "archived_at": iso(session.get("archived_at"))}
    return found


@dataclass
class RoleTotals:
    count: int = 0
    length: int = 0
    tokens: int = 0
    response_ms: list[int] | None = None


def summarise(messages: list[Document]) -> tuple[Document, list[Document]]:
    """Llama-chat's `summary` (also a conversation's `stats`) and `by_role`, from its messages."""
    roles: dict[str, RoleTotals] = {}
    for message in messages:
        totals = roles.setdefault(str(message["role"]), RoleTotals())
        totals.count += 1
        totals.length += len(message["content"])
        totals.tokens += message["estimated_tokens"]
        if message["response_time_ms"] is not None:
            totals.response_ms = [*(totals.response_ms or []), message["response_time_ms"]]
    answers = [m["response_time_ms"] for m in messages if m["response_time_ms"] is not None]
    summary = {
        "total_messages": len(messages),
        "assistant_messages": roles["assistant"].count if "assistant" in roles else 0,
        "avg_response_time": average(answers),
        "total_tokens": sum(t.tokens for t in roles.values()),
    }
    order = [r for r in ROLE_ORDER if r in roles] + sorted(set(roles) - set(ROLE_ORDER))
    by_role = [
        {
            "role": role,
            "count": roles[role].count,
            "avg_length": round(roles[role].length / roles[role].count, 1),
            "total_tokens": roles[role].tokens,
            "avg_response_time": average(roles[role].response_ms or []),
        }
        for role in order
    ]
    return summary, by_role


class ConversationStore:
    """The conversation methods' storage, over the session store's collections."""

    def __init__(self, service: SessionService) -> None:
        self.service = service
        self.store = service.store
        self.sequences: AsyncCollection[Document] = service.store.db[SEQUENCES]

    def factor(self, model: str | None) -> float:
        return self.service.estimator(model).factor if model else 1.0

    # -- creating ----------------------------------------------------------------------------

    async def create(self, title: str, model: str, owner: str | None) -> int:
        """A new, empty conversation under the next free number; that number."""
        for _ in range(CREATE_ATTEMPTS):
            number = await self._next_number()
            # The model it was created with (`conversation_model`), which a session started
            # through the Ollama API does not have.
            doc = empty_session(str(number), owner, title, utcnow()) | {"model": model}
            try:
                await self.store.sessions.insert_one(doc)
            except DuplicateKeyError:
                await self._skip_used(number)
                continue
            return number
        raise CorralError(
            ErrorType.INTERNAL_ERROR,
            "could not find a free conversation id; try again",
            status=503,
            headers={"Retry-After": "1"},
        )

    async def _next_number(self) -> int:
        for _ in range(CREATE_ATTEMPTS):
            try:
                counter = await self.sequences.find_one_and_update(
                    {"_id": CONVERSATION_SEQUENCE},
                    {"$inc": {"value": 1}},
                    upsert=True,
                    return_document=ReturnDocument.AFTER,
                )
            except DuplicateKeyError:
                continue  # two first upserts raced (a server that does not retry them itself)
            if counter is not None:
                return int(counter["value"])
        raise CorralError(ErrorType.INTERNAL_ERROR, "conversation counter unavailable", status=503)

    async def _skip_used(self, taken: int) -> None:
        """Move the counter past the session ids in use just above `taken`, so the next `$inc`
        lands on a free one (or on one taken since, which the insert finds out)."""
        candidates = [str(n) for n in range(taken + 1, taken + 1 + ID_PROBE)]
        used = set(await self.store.sessions.distinct("_id", {"_id": {"$in": candidates}}))
        free = next((int(c) for c in candidates if c not in used), taken + ID_PROBE + 1)
        await self.sequences.update_one(
            {"_id": CONVERSATION_SEQUENCE}, {"$max": {"value": free - 1}}, upsert=True
        )

    # -- reading -----------------------------------------------------------------------------

    async def describe(self, session_id: str, owner: str | None) -> Document:
        return conversation(await self.store.require_session(session_id, owner))

    async def messages(self, session_id: str) -> list[Document]:
        """Every message of a conversation in order, in llama-chat's shape."""
        shown_id = conversation_id_of(session_id)
        found: list[Document] = []
        async for turn in self.store.turns.find(
            {"session_id": session_id}, sort=[("seq", ASCENDING)]
        ):
            stored = turn.get("messages") or []
            stats = turn.get("stats") or {}
            model = turn.get("model")
            for index, message in enumerate(stored):
                content = str(message.get("content") or "")
                is_answer = index == len(stored) - 1 and message.get("role") == "assistant"
                tokens = _int(stats.get("eval_count")) if is_answer else None
                found.append(
                    {
                        "id": len(found) + 1,
                        "conversation_id": shown_id,
                        "role": message.get("role"),
                        "content": content,
                        "model": model if message.get("role") == "assistant" else None,
                        "timestamp": iso(turn.get("answered_at" if is_answer else "asked_at")),
                        "response_time_ms": response_ms(stats) if is_answer else None,
                        "estimated_tokens": tokens
                        if tokens is not None
                        else estimate_tokens(content, self.factor(model)),
                    }
                )
        return found

    async def detail(self, session_id: str, owner: str | None) -> Document:
        session = await self.store.require_session(session_id, owner)
        messages = await self.messages(session_id)
        summary, _ = summarise(messages)
        return {"conversation": conversation(session), "messages": messages, "stats": summary}

    async def stats(self, session_id: str, owner: str | None) -> Document:
        await self.store.require_session(session_id, owner)
        summary, by_role = summarise(await self.messages(session_id))
        return {"summary": summary, "by_role": by_role}

    async def list(
        self, limit: int, offset: int, owner: str | None, *, archived: bool = False
    ) -> Document:
        """The active conversations (or, `archived`, the archived ones), as the session lists
        are: newest first."""
        selector = {
            **({} if owner is None else {"owner": owner}),
            **(ARCHIVED if archived else ACTIVE),
        }
        page = await self.store.sessions.find(
            selector,
            {
                "title": 1,
                "model": 1,
                "models": 1,
                "created_at": 1,
                "last_activity": 1,
                "archived_at": 1,
            },
            sort=[("last_activity", DESCENDING), ("_id", ASCENDING)],
            skip=offset,
            limit=limit,
        ).to_list()
        return {"conversations": [conversation(session) for session in page]}

    async def search(
        self, query: str, limit: int, owner: str | None, *, time_limit_ms: int | None
    ) -> Document:
        """The session store's search (`SessionStore.search`: same matching, order, bounds and
        ownership), each result with llama-chat's fields added."""
        found = await self.store.search(query, limit, owner, time_limit_ms=time_limit_ms)
        results: list[Document] = found["results"]
        ids = list({result["request_id"] for result in results})
        turns = {
            turn["_id"]: turn
            async for turn in self.store.turns.find(
                {"_id": {"$in": ids}}, {"stats": 1, "answered_at": 1}
            )
        }
        for result in results:
            turn = turns.get(result["request_id"]) or {}
            stats = turn.get("stats") or {}
            # The answer is the one assistant message timed at the turn's answer (the store
            # times every other message of a turn when it was asked).
            is_answer = result.get("role") == "assistant" and result.get("timestamp") == iso(
                turn.get("answered_at")
            )
            tokens = _int(stats.get("eval_count")) if is_answer else None
            content = str(result.get("content") or "")
            result["id"] = conversation_id_of(str(result["session_id"]))
            result["updated_at"] = result.get("last_activity")
            result["response_time_ms"] = response_ms(stats) if is_answer else None
            result["estimated_tokens"] = (
                tokens
                if tokens is not None
                else estimate_tokens(content, self.factor(result.get("model")))
            )
        return {
            "results": results,
            "query": found["query"],
            "count": len(results),
            "partial": bool(found.get("partial")),
        }
