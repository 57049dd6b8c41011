"""Context-window assembly: which stored turns go to the backend with the new messages.

Pure functions, no I/O. The rules (ARCHITECTURE.md section 5):

- The conversation's system prompt is always kept, first: the first system message of the new
  messages if they have one (it replaces the stored prompt), else the first system message of
  the stored history. Stored repeats of the kept prompt (clients that resend it each time) are
  not sent twice.
- Stored turns are kept newest first while they fit; the first one that does not fit and every
  older one are dropped, whole: a turn (the user's messages and the answer) is never split.
- At most `max_history_length` messages of stored history go (whole turns, oldest dropped
  first), whichever of the two limits is tighter; system prompts and the new messages do not
  count against it.
- The total never exceeds the budget. When the new messages alone do not fit, their oldest
  messages go too (system messages and the last message are kept, as Ollama's own chat
  truncation keeps them); when the system prompt and the last message alone do not fit, the
  request fails with `context_limit_exceeded` (413) rather than being cut.
- A conversation with no system prompt of its own (none in the new messages, none stored) gets
  the fallback one, when there is one: the session's own (set when it was created), else the
  server's default for the model, else the server's default.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from enum import Enum
from typing import Any, Literal

from corral_common.errors import CorralError, ErrorType
from corral_session_store.tokens import TokenEstimator

Message = Mapping[str, Any]
BudgetSource = Literal["num_ctx", "model", "default"]


@dataclass(frozen=True)
class Budget:
    """The context window and the part of it the prompt may use."""

    context_length: int
    answer_reserve: int
    source: BudgetSource

    @property
    def prompt_tokens(self) -> int:
        return max(self.context_length - self.answer_reserve, 0)


def _positive_int(value: Any) -> int | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    number = int(value)
    return number if number > 0 else None


def compute_budget(
    options: Mapping[str, Any] | None,
    model_context_length: int | None,
    *,
    default_num_ctx: int,
    answer_reserve: int,
    answer_reserve_fraction: float,
) -> Budget:
    """The window is the client's `num_ctx` when set, else the model's context length capped
    at `default_num_ctx` (the backend runs with that window unless asked for more), else
    `default_num_ctx`. The answer's room is the client's `num_predict` when positive (capped
    at half the window, so a large `num_predict` cannot leave no room at all), else
    `answer_reserve` capped at `answer_reserve_fraction` of the window."""
    options = options or {}
    num_ctx = _positive_int(options.get("num_ctx"))
    source: BudgetSource
    if num_ctx is not None:
        context_length, source = num_ctx, "num_ctx"
    elif model_context_length is not None and model_context_length > 0:
        context_length, source = min(model_context_length, default_num_ctx), "model"
    else:
        context_length, source = default_num_ctx, "default"
    num_predict = _positive_int(options.get("num_predict"))
    if num_predict is not None:
        reserve = min(num_predict, context_length // 2)
    else:
        reserve = min(answer_reserve, int(context_length * answer_reserve_fraction))
    return Budget(context_length, reserve, source)


LimitedBy = Literal["tokens", "max_history_length"]
SystemSource = Literal["session", "model_default", "default"]


@dataclass(frozen=True)
class ContextInfo:
    """What was sent, as the client is told. The first four fields are always there; the
    others only when they say something (a cut, a prompt the client did not send)."""

    truncated: bool
    messages_used: int
    tokens_used: int
    turns_dropped: int
    messages_dropped: int = 0
    limited_by: LimitedBy | None = None
    max_history_length: int | None = None
    system_prompt: SystemSource | None = None
    """Where the system prompt came from when the client sent none and had none stored."""

    def as_dict(self) -> dict[str, Any]:
        info: dict[str, Any] = {
            "truncated": self.truncated,
            "messages_used": self.messages_used,
            "tokens_used": self.tokens_used,
            "turns_dropped": self.turns_dropped,
        }
        if self.truncated:
            info["messages_dropped"] = self.messages_dropped
            info["limited_by"] = self.limited_by
            if self.max_history_length is not None:
                info["max_history_length"] = self.max_history_length
        if self.system_prompt is not None:
            info["system_prompt"] = self.system_prompt
        return info


@dataclass(frozen=True)
class Assembled:
    messages: list[Message]
    info: ContextInfo


@dataclass(frozen=True)
class Fallback:
    """The system prompt a conversation gets when it has none of its own, and whose it is."""

    message: Message
    source: SystemSource


def _is_system(message: Message) -> bool:
    return message.get("role") == "system"


def _first_system(messages: Sequence[Message]) -> int | None:
    for index, message in enumerate(messages):
        if _is_system(message):
            return index
    return None


def first_system_message(history: Sequence[Sequence[Message]]) -> Message | None:
    """The conversation's first stored system message."""
    for turn in history:
        for message in turn:
            if _is_system(message):
                return message
    return None


class _FromHistory(Enum):
    FROM_HISTORY = "from history"


FROM_HISTORY = _FromHistory.FROM_HISTORY


def conversation_messages(turn: Sequence[Message]) -> int:
    """What `max_history_length` counts of a turn: its messages but system prompts."""
    return sum(1 for message in turn if not _is_system(message))


def too_large(needed: int, budget: Budget) -> CorralError:
    limit = budget.prompt_tokens
    return CorralError(
        ErrorType.CONTEXT_LIMIT_EXCEEDED,
        f"the message needs about {needed} tokens, but the {budget.context_length}-token "
        f"context window leaves {limit} for the prompt ({budget.answer_reserve} are kept "
        "for the answer); send a shorter message or a larger num_ctx",
        details={
            "tokens_needed": needed,
            "prompt_budget": limit,
            "context_length": budget.context_length,
            "answer_reserve": budget.answer_reserve,
        },
    )


def fit_new_messages(
    new: Sequence[Message], room: int, estimator: TokenEstimator
) -> tuple[list[Message], int]:
    """The new messages that fit in `room` tokens, and how many were dropped: the oldest go
    first, system messages and the last message always stay (Ollama's chat truncation). The
    caller has made sure that what always stays fits."""
    kept = list(new)
    cost = estimator.messages(kept)
    dropped = 0
    index = 0
    while cost > room and index < len(kept) - 1:
        if _is_system(kept[index]):
            index += 1
            continue
        cost -= estimator.message(kept.pop(index))
        dropped += 1
    return kept, dropped


def assemble(
    history: Sequence[Sequence[Message]],
    new_messages: Sequence[Message],
    budget: Budget,
    estimator: TokenEstimator,
    *,
    stored_system: Message | _FromHistory | None = FROM_HISTORY,
    older_turns: int = 0,
    older_messages: int = 0,
    older_limited_by: LimitedBy = "tokens",
    max_history_length: int | None = None,
    fallback: Fallback | None = None,
) -> Assembled:
    """`history` is stored turns of one (session, model), oldest first, each the turn's
    messages in order (the client's, then the answer). It may be only the newest part of the
    history: then `older_turns` says how many older turns were left unread (they count as
    dropped: `older_messages` messages, left for the `older_limited_by` limit), and
    `stored_system` is the conversation's first system message (by default it is looked up
    in `history`). `max_history_length` caps the history messages sent (None: only the budget
    does); `fallback` is the system prompt used when neither the new messages nor the stored
    history have one."""
    limit = budget.prompt_tokens
    if stored_system is FROM_HISTORY:
        stored_system = first_system_message(history)
    new = list(new_messages)
    new_system_at = _first_system(new)
    # The new messages' system prompt replaces the stored one; otherwise the stored one stays,
    # and a conversation with neither gets the fallback.
    source: SystemSource | None = None
    system: Message | None
    if new_system_at is not None:
        system = new.pop(new_system_at)
    elif stored_system is not None:
        system = stored_system
    elif fallback is not None:
        system, source = fallback.message, fallback.source
    else:
        system = None
    repeats = {str(m.get("content")) for m in (system, stored_system) if m is not None}
    turns = [
        [m for m in turn if not (_is_system(m) and str(m.get("content")) in repeats)]
        for turn in history
    ]

    pinned = [system] if system is not None else []
    fixed = estimator.prompt_overhead + estimator.messages(pinned)
    # What always goes: the system prompt, the new messages' own system messages, the last.
    always = [m for m in new[:-1] if _is_system(m)] + new[-1:]
    minimum = fixed + estimator.messages(always)
    if minimum > limit:
        raise too_large(minimum, budget)
    new, new_dropped = fit_new_messages(new, limit - fixed, estimator)
    used = fixed + estimator.messages(new)

    kept_turns: list[list[Message]] = []
    dropped = older_turns
    history_dropped = older_messages
    history_sent = 0
    limited_by: LimitedBy | None = "tokens" if new_dropped else None
    for index in range(len(turns) - 1, -1, -1):
        turn = turns[index]
        cost = estimator.messages(turn)
        over_tokens = used + cost > limit
        count = conversation_messages(turn)
        over_count = max_history_length is not None and history_sent + count > max_history_length
        if over_tokens or over_count:
            # This turn and every older one go: history is never cut in the middle.
            gone = turns[: index + 1]
            dropped += sum(1 for older in gone if older)
            history_dropped += sum(len(older) for older in gone)
            if limited_by is None:
                limited_by = "tokens" if over_tokens else "max_history_length"
            break
        used += cost
        history_sent += count
        kept_turns.append(turn)
    kept_turns.reverse()
    if limited_by is None and dropped:
        limited_by = older_limited_by

    messages: list[Message] = [*pinned]
    for turn in kept_turns:
        messages.extend(turn)
    messages.extend(new)
    info = ContextInfo(
        truncated=dropped > 0 or new_dropped > 0,
        messages_used=len(messages),
        tokens_used=used,
        turns_dropped=dropped,
        messages_dropped=history_dropped + new_dropped,
        limited_by=limited_by,
        max_history_length=max_history_length,
        system_prompt=source,
    )
    return Assembled(messages, info)


def passthrough(messages: Sequence[Message], estimator: TokenEstimator) -> Assembled:
    """For `generate`: the prompt goes as the client sent it (no chat history applies), with
    the estimate reported."""
    used = estimator.prompt_overhead + estimator.messages(messages)
    info = ContextInfo(
        truncated=False, messages_used=len(messages), tokens_used=used, turns_dropped=0
    )
    return Assembled(list(messages), info)
