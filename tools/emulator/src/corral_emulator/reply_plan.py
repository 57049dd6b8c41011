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

from corral_emulator.api_types import ChatRequest, GenerateRequest, GenerationRequest, Options
from corral_emulator.models import ModelSpec
from corral_emulator.structured import formatted_reply, tool_call, tool_call_token_count
from corral_emulator.tokens import (
    count_message_tokens,
    count_prompt_tokens,
    last_user_content,
    reply_text,
    thinking_text,
    token_ids,
    tokenize,
)
from corral_emulator.wire import ApiError

CONTEXT_EXCEEDED = "the input length exceeds the context length"


@dataclass(frozen=True, slots=True)
class Piece:
    """One streamed token: `thinking` text or `content` (chat) / `response` (generate) text."""

    text: str
    thinking: bool = False


@dataclass(frozen=True, slots=True)
class ReplyPlan:
    tokens: tuple[str, ...]
    done_reason: str
    prompt_eval_count: int
    context_length: int
    context: tuple[int, ...] | None = None
    """generate's returned `context`; None for chat and raw generate."""
    thinking: tuple[str, ...] = ()
    """Streamed before the content, when the model thinks."""
    tool_calls: tuple[dict[str, Any], ...] = ()
    """Sent in one chunk after the content, as Ollama's tool parser does."""

    @property
    def pieces(self) -> tuple[Piece, ...]:
        return (
            *(Piece(text, thinking=True) for text in self.thinking),
            *(Piece(text) for text in self.tokens),
        )

    @property
    def tool_call_tokens(self) -> int:
        return tool_call_token_count(self.tool_calls)


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
    calls = _tool_calls(request, text)
    # A model that calls a tool says nothing else (the call is its whole answer).
    reply = "" if calls else _reply(text, request.format)
    tokens, done_reason = _cut(reply, options, prompt_count, context_length, request.shift)
    thinking = _thinking(request, spec, text)
    return ReplyPlan(
        tuple(tokens),
        done_reason,
        prompt_count,
        context_length,
        thinking=thinking,
        tool_calls=calls,
    )


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
    reply = _reply(request.prompt, request.format)
    tokens, done_reason = _cut(reply, options, prompt_count, context_length, request.shift)
    context = None
    if not request.raw:
        context = (*request.context, *token_ids(tokenize(request.prompt)), *token_ids(tokens))
    thinking = _thinking(request, spec, request.prompt)
    return ReplyPlan(
        tuple(tokens), done_reason, prompt_count, context_length, context, thinking=thinking
    )


def thinks(request: GenerationRequest, spec: ModelSpec) -> bool:
    """Ollama turns thinking on for a thinking model unless the request says `think: false`."""
    return spec.supports("thinking") and (request.think is None or request.wants_thinking)


def _thinking(request: GenerationRequest, spec: ModelSpec, text: str) -> tuple[str, ...]:
    return tuple(tokenize(thinking_text(text))) if thinks(request, spec) else ()


def _reply(text: str, format_value: object) -> str:
    formatted = formatted_reply(text, format_value)
    return reply_text(text) if formatted is None else formatted


def _tool_calls(request: ChatRequest, text: str) -> tuple[dict[str, Any], ...]:
    """A call of the first tool, unless the conversation just got a tool's result: then the
    model answers in words, so a client's tool loop ends after one round."""
    if not request.tools:
        return ()
    last_role = request.messages[-1].get("role") if request.messages else None
    if last_role == "tool":
        return ()
    return (tool_call(request.tools[0], text),)


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
    reply: str, options: Options, prompt_count: int, context_length: int, shift: bool
) -> tuple[list[str], str]:
    # Ollama's runner stops as soon as `num_predict` tokens are out, before it could see an
    # end-of-sequence token, so a reply of exactly `num_predict` tokens is still "length".
    tokens = tokenize(reply)
    done_reason = "stop"
    limit = options.num_predict
    if limit is not None and limit > 0 and len(tokens) >= limit:
        tokens, done_reason = tokens[:limit], "length"
    if not shift:
        room = max(context_length - prompt_count, 0)
        if len(tokens) >= room:
            tokens = tokens[:room]
            done_reason = "length"
    return tokens, done_reason
