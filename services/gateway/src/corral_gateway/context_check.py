"""`context_info` for requests without a session: what the backend will do with a prompt larger
than the model's window, said before it silently does it.

A request without a session goes to the backend exactly as the client sent it. Ollama fits a
chat that is too long by dropping its oldest messages (system messages and the last message
are always kept) and cuts a prompt that is still too long, without telling the client. So the
gateway estimates the prompt (corral_common.token_estimate, `chars / 4` plus the template's
overhead; uncalibrated, as the gateway does not have the session store's per-model factors)
against the window the backend will use, the same window the session store assembles for:
`options.num_ctx`, else the model's context length (from the model manager, cached) capped
at CORRAL_DEFAULT_NUM_CTX, else CORRAL_DEFAULT_NUM_CTX. Then:

- it fits: nothing changes (`context_info` is `{truncated: false, messages_used, tokens_used}`
  as before);
- only older messages cannot fit: the request still goes as sent and the backend drops them,
  but the answer says so: `truncated: true`, `messages_used` (what the backend keeps, as
  estimated), `messages_dropped`, `limited_by: "tokens"`, `context_length` and `estimated:
  true`;
- the message being answered cannot fit (a generate prompt, or a chat's system messages and
  last message): 413 `context_limit_exceeded` ("Message too large for context window"), as the
  session store answers the same case; nothing is queued.

CORRAL_STATELESS_CONTEXT_CHECK=false turns it off (requests then go as sent, whatever their
size, as to Ollama itself).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import structlog

from corral_common.context_lengths import CachedContextLengths
from corral_common.contracts.model_manager import MODEL_MANAGER, ModelInfoParams
from corral_common.errors import CorralError, ErrorType
from corral_common.messages import JobKind
from corral_common.rpc import RpcClient
from corral_common.token_estimate import (
    IMAGE_TOKENS,
    MESSAGE_OVERHEAD,
    PROMPT_OVERHEAD,
    raw_message_tokens,
)

log = structlog.get_logger(__name__)

# The model manager's answer is remembered this long (its absence for the shorter time).
LENGTH_TTL_S = 300.0
LENGTH_FAILURE_TTL_S = 30.0
LENGTH_TIMEOUT_S = 0.5

Message = Mapping[str, Any]


def context_windows(rpc: RpcClient) -> CachedContextLengths:
    """Models' context lengths from the model manager, cached (unknown when it does not
    answer: the default window then applies)."""

    async def fetch(model: str) -> int | None:
        try:
            info = await rpc.call(MODEL_MANAGER.model_info, ModelInfoParams(model=model))
        except CorralError:
            raise  # no model manager, or it failed: unknown, remembered for a while
        except Exception:
            # Never a reason to fail the request itself: the default window applies.
            log.warning("model context length lookup failed", model=model, exc_info=True)
            return None
        return info.context_length

    return CachedContextLengths(
        fetch,
        timeout_s=LENGTH_TIMEOUT_S,
        ttl_s=LENGTH_TTL_S,
        failure_ttl_s=LENGTH_FAILURE_TTL_S,
    )


def asked_num_ctx(options: Mapping[str, Any] | None) -> int | None:
    """The window the request asks for (`options.num_ctx`), when it is a usable one."""
    num_ctx = (options or {}).get("num_ctx")
    if isinstance(num_ctx, int | float) and not isinstance(num_ctx, bool) and num_ctx >= 1:
        return int(num_ctx)
    return None


def window_of(
    options: Mapping[str, Any] | None, model_length: int | None, default_num_ctx: int
) -> int:
    """The window the backend runs this request with (the session store's rule)."""
    asked = asked_num_ctx(options)
    if asked is not None:
        return asked
    if model_length is not None and model_length > 0:
        return min(model_length, default_num_ctx)
    return default_num_ctx


@dataclass(frozen=True)
class Fit:
    """What the backend will keep of a prompt that does not fit its window."""

    messages_used: int
    messages_dropped: int
    tokens_needed: int
    context_length: int

    def context_info(self) -> dict[str, Any]:
        return {
            "truncated": True,
            "messages_used": self.messages_used,
            "messages_dropped": self.messages_dropped,
            "limited_by": "tokens",
            "context_length": self.context_length,
            "estimated": True,
        }


def _tokens(messages: Sequence[Message]) -> int:
    return math.ceil(PROMPT_OVERHEAD + sum(raw_message_tokens(m) for m in messages))


def _with_earlier_system(messages: Sequence[Message], index: int) -> list[Message]:
    return [*(m for m in messages[:index] if m.get("role") == "system"), *messages[index:]]


def fit_chat(messages: Sequence[Message], window: int) -> Fit | None:
    """None when the chat fits `window`; else what Ollama's chat keeps (the longest tail that
    fits, with the system messages before it; the last message always). A 413 when the system
    messages and the last message alone do not fit."""
    if not messages or _tokens(messages) <= window:
        return None
    last = len(messages) - 1
    minimum = _tokens(_with_earlier_system(messages, last))
    if minimum > window:
        raise too_large(minimum, window)
    keep_from = last
    for index in range(last - 1, -1, -1):
        if _tokens(_with_earlier_system(messages, index)) > window:
            break
        keep_from = index
    kept = len(_with_earlier_system(messages, keep_from))
    return Fit(kept, len(messages) - kept, _tokens(messages), window)


def generate_tokens(body: Mapping[str, Any]) -> int:
    """A generate request's prompt: its prompt and system text, its images, and the tokens of
    a `context` carried over from an earlier answer."""
    parts = [body.get("system"), body.get("prompt")]
    text = sum(len(str(part)) for part in parts if part)
    images = body.get("images")
    context = body.get("context")
    return math.ceil(
        PROMPT_OVERHEAD
        + MESSAGE_OVERHEAD * sum(1 for part in parts if part)
        + text / 4
        + (IMAGE_TOKENS * len(images) if isinstance(images, list) else 0)
        + (len(context) if isinstance(context, list) else 0)
    )


def prompt_tokens(kind: JobKind, body: Mapping[str, Any]) -> int:
    """The prompt of a chat or generate request, estimated as the check above estimates it:
    what `context_info.tokens_used` says when the backend does not count it."""
    if kind == "generate":
        return generate_tokens(body)
    return _tokens(_chat_messages(body))


def _chat_messages(body: Mapping[str, Any]) -> list[Message]:
    raw = body.get("messages")
    return [m for m in raw if isinstance(m, dict)] if isinstance(raw, list) else []


def check_stateless(kind: JobKind, body: Mapping[str, Any], window: int) -> dict[str, Any] | None:
    """The `context_info` to answer a stateless chat or generate with when its prompt does
    not fit (None when it fits); a 413 when what must be answered cannot fit."""
    if kind == "chat":
        fit = fit_chat(_chat_messages(body), window)
        return None if fit is None else fit.context_info()
    if kind == "generate":
        needed = generate_tokens(body)
        if needed > window:
            raise too_large(needed, window)
    return None


def too_large(needed: int, window: int) -> CorralError:
    return CorralError(
        ErrorType.CONTEXT_LIMIT_EXCEEDED,
        f"the message needs about {needed} tokens, but the model's context window is {window} "
        "tokens; send a shorter message or a larger num_ctx",
        details={"tokens_needed": needed, "context_length": window},
    )
