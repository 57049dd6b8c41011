"""Context-window assembly: which stored turns go to the backend with the new messages.

Pure functions, no I/O. The rules (ARCHITECTURE.md section 5):

- The conversation's system prompt is always kept, first: the first system message of the new
  messages if they have one (it replaces the stored prompt), else the first system message of
  the stored history. Stored repeats of the kept prompt (clients that resend it each time) are
  not sent twice.
- Stored turns are kept newest first while they fit; the first one that does not fit and every
  older one are dropped, whole: a turn (the user's messages and the answer) is never split.
- The total never exceeds the budget; if the system prompt and the new messages alone do not
  fit, the request fails with `context_limit_exceeded` (413) rather than being cut.
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


@dataclass(frozen=True)
class ContextInfo:
    truncated: bool
    messages_used: int
    tokens_used: int
    turns_dropped: int

    def as_dict(self) -> dict[str, Any]:
        return {
            "truncated": self.truncated,
            "messages_used": self.messages_used,
            "tokens_used": self.tokens_used,
            "turns_dropped": self.turns_dropped,
        }


@dataclass(frozen=True)
class Assembled:
    messages: list[Message]
    info: ContextInfo


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


def assemble(
    history: Sequence[Sequence[Message]],
    new_messages: Sequence[Message],
    budget: Budget,
    estimator: TokenEstimator,
    *,
    stored_system: Message | _FromHistory | None = FROM_HISTORY,
    older_turns: int = 0,
) -> Assembled:
    """`history` is stored turns of one (session, model), oldest first, each the turn's
    messages in order (the client's, then the answer). It may be only the newest part of the
    history: then `older_turns` says how many older turns were left unread (they count as
    dropped), and `stored_system` is the conversation's first system message (by default it
    is looked up in `history`)."""
    limit = budget.prompt_tokens
    if stored_system is FROM_HISTORY:
        stored_system = first_system_message(history)
    new = list(new_messages)
    new_system_at = _first_system(new)
    # The new messages' system prompt replaces the stored one; otherwise the stored one stays.
    system = new.pop(new_system_at) if new_system_at is not None else stored_system
    repeats = {str(m.get("content")) for m in (system, stored_system) if m is not None}
    turns = [
        [m for m in turn if not (_is_system(m) and str(m.get("content")) in repeats)]
        for turn in history
    ]

    pinned = [system] if system is not None else []
    needed = estimator.prompt_overhead + estimator.messages(pinned) + estimator.messages(new)
    if needed > limit:
        raise CorralError(
            ErrorType.CONTEXT_LIMIT_EXCEEDED,
            f"the new messages need about {needed} tokens, but the {budget.context_length}-token "
            f"context window leaves {limit} for the prompt ({budget.answer_reserve} are kept "
            "for the answer); send a shorter message or a larger num_ctx",
            details={
                "tokens_needed": needed,
                "prompt_budget": limit,
                "context_length": budget.context_length,
                "answer_reserve": budget.answer_reserve,
            },
        )

    used = needed
    kept_turns: list[list[Message]] = []
    dropped = older_turns
    for index in range(len(turns) - 1, -1, -1):
        turn = turns[index]
        cost = estimator.messages(turn)
        if used + cost > limit:
            # This turn and every older one go: history is never cut in the middle.
            dropped += sum(1 for older in turns[: index + 1] if older)
            break
        used += cost
        kept_turns.append(turn)
    kept_turns.reverse()

    messages: list[Message] = [*pinned]
    for turn in kept_turns:
        messages.extend(turn)
    messages.extend(new)
    info = ContextInfo(
        truncated=dropped > 0,
        messages_used=len(messages),
        tokens_used=used,
        turns_dropped=dropped,
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
