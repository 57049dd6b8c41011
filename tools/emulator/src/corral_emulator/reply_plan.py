"""What a chat/generate request will produce, decided before any time passes.

Pure functions of the request and the model, covering Ollama's context-window rules: chat
history that does not fit is dropped oldest-first (system messages and the last message are
kept), a prompt still too long is truncated by the runner, and `shift: false` stops the
reply with "length" when the window is full.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from corral_emulator.api_types import ChatRequest, GenerateRequest, Options
from corral_emulator.models import ModelSpec
from corral_emulator.tokens import (
    count_message_tokens,
    count_prompt_tokens,
    expected_done_reason,
    last_user_content,
    reply_tokens,
    token_ids,
    tokenize,
)
from corral_emulator.wire import ApiError

CONTEXT_EXCEEDED = "the input length exceeds the context length"


@dataclass(frozen=True, slots=True)
class ReplyPlan:
    tokens: tuple[str, ...]
    done_reason: str
    prompt_eval_count: int
    context_length: int
    context: tuple[int, ...] | None = None
    """generate's returned `context`; None for chat and raw generate."""


def context_length_for(spec: ModelSpec, options: Options) -> int:
    """The runner's window: `num_ctx` when given, capped at what the model was trained on."""
    if options.num_ctx is not None and options.num_ctx > 0:
        return min(options.num_ctx, spec.context_length)
    return spec.context_length


def model_options(spec: ModelSpec, request_options: Mapping[str, Any]) -> Options:
    """Request options over the model's Modelfile parameters, as Ollama's modelOptions."""
    return Options.from_map({**spec.parameters, **request_options})


def fit_messages(messages: Sequence[dict[str, Any]], context_length: int) -> list[dict[str, Any]]:
    """Ollama's `chatPrompt` truncation: keep the longest tail of the history that fits,
    plus the system messages from the dropped part; the last message is always kept."""
    if not messages:
        return []
    keep_from = len(messages) - 1
    for index in range(len(messages) - 1, -1, -1):
        candidate = _with_earlier_system(messages, index)
        if count_message_tokens(candidate) > context_length:
            break
        keep_from = index
    return _with_earlier_system(messages, keep_from)


def with_model_messages(
    spec: ModelSpec, messages: Sequence[dict[str, Any]]
) -> list[dict[str, Any]]:
    """The prompt Ollama's chat builds: the model's MESSAGEs first, and its SYSTEM in front
    unless the request starts with a system message of its own."""
    combined = [dict(message) for message in spec.messages] + list(messages)
    if spec.system and (not messages or messages[0].get("role") != "system"):
        combined.insert(0, {"role": "system", "content": spec.system})
    return combined


def plan_chat_reply(request: ChatRequest, spec: ModelSpec, options: Options) -> ReplyPlan:
    context_length = context_length_for(spec, options)
    messages = with_model_messages(spec, request.messages)
    if request.truncate:
        messages = fit_messages(messages, context_length)
    prompt_count = _fit_prompt(count_message_tokens(messages), context_length, request.truncate)
    text = last_user_content(request.messages)
    tokens, done_reason = _cut(text, options, prompt_count, context_length, request.shift)
    return ReplyPlan(tuple(tokens), done_reason, prompt_count, context_length)


def plan_generate_reply(request: GenerateRequest, spec: ModelSpec, options: Options) -> ReplyPlan:
    context_length = context_length_for(spec, options)
    parts = [request.prompt]
    if not request.raw:
        # Raw prompts skip the template, and with it the model's SYSTEM and MESSAGEs; those
        # MESSAGEs also stay out of a prompt that continues a context.
        system = request.system or spec.system
        history = [] if request.context else [str(m.get("content", "")) for m in spec.messages]
        parts = [*([system] if system else []), *history, request.prompt]
    prompt_count = _fit_prompt(
        count_prompt_tokens(parts) + len(request.context), context_length, request.truncate
    )
    tokens, done_reason = _cut(request.prompt, options, prompt_count, context_length, request.shift)
    context = None
    if not request.raw:
        context = (*request.context, *token_ids(tokenize(request.prompt)), *token_ids(tokens))
    return ReplyPlan(tuple(tokens), done_reason, prompt_count, context_length, context)


def _with_earlier_system(messages: Sequence[dict[str, Any]], index: int) -> list[dict[str, Any]]:
    system = [m for m in messages[:index] if m.get("role") == "system"]
    return [*system, *messages[index:]]


def _fit_prompt(prompt_count: int, context_length: int, truncate: bool) -> int:
    if prompt_count <= context_length:
        return prompt_count
    if not truncate:
        raise ApiError(400, CONTEXT_EXCEEDED)
    return context_length


def _cut(
    text: str, options: Options, prompt_count: int, context_length: int, shift: bool
) -> tuple[list[str], str]:
    tokens = reply_tokens(text, options.num_predict)
    done_reason = expected_done_reason(text, options.num_predict)
    if not shift:
        room = max(context_length - prompt_count, 0)
        if len(tokens) >= room:
            tokens = tokens[:room]
            done_reason = "length"
    return tokens, done_reason
