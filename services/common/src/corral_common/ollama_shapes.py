"""Ollama's answers, as types: what `/api/tags`, `/api/ps`, `/api/show`, `/api/chat`,
`/api/generate`, `/api/embed` and `/api/embeddings` send back (Ollama's `api/types.go`); one
definition for each shape, shared by whatever produces or reads them (the scheduler's backends,
`corral_common.openai_models` for an OpenAI-compatible server).

They are `TypedDict`s, so a plain dict at runtime: typing a backend's answer costs nothing, and
the answer is relayed exactly as the server wrote it (every field kept, in its order). Nothing
checks an answer against its type as it arrives: it is what Ollama documents, and a reader that
acts on a value still checks it (`.get`, `isinstance`). A field Ollama always writes is
required; one it leaves out when empty (Go's `omitempty`), or that only some versions or
backends send, is not.
"""

# No `from __future__ import annotations`: `Required`/`NotRequired` are then seen at runtime too
# (`__required_keys__`), as a reader of the classes would expect.
from typing import Any, NotRequired, Required, TypeAlias, TypedDict, final


class ModelDetails(TypedDict):
    """`api.ModelDetails`: a model's `details` in `/api/tags`, `/api/ps` and `/api/show`."""

    parent_model: str
    format: str
    family: str
    families: list[str] | None
    parameter_size: str
    quantization_level: str


class TagEntry(TypedDict):
    """One model of `/api/tags` (`api.ListModelResponse`)."""

    name: str
    model: str
    modified_at: str
    size: int
    digest: str
    details: ModelDetails


class RunningModel(TypedDict):
    """One model of `/api/ps` (`api.ProcessModelResponse`)."""

    name: str
    model: str
    size: int
    digest: str
    details: ModelDetails
    expires_at: str
    size_vram: int
    # The context it was loaded with; recent Ollama versions only.
    context_length: NotRequired[int]


class FunctionCall(TypedDict, total=False):
    """A tool call's `function`: `arguments` is an object on Ollama's API; a server that sent
    arguments that do not parse as one has them passed on as the text they were."""

    index: int
    name: Required[str]
    arguments: Required[dict[str, Any] | str]


class ToolCall(TypedDict, total=False):
    """`api.ToolCall`."""

    id: str
    function: Required[FunctionCall]


class Message(TypedDict, total=False):
    """`api.Message` as an answer carries it: a chat chunk's `message`, `/api/show`'s
    `messages`."""

    role: Required[str]
    content: Required[str]
    thinking: str
    tool_calls: list[ToolCall]


class Metrics(TypedDict, total=False):
    """How a generation ended and what it took (`api.Metrics`, durations in ns): the fields of
    a final chunk the lane learns from. Every one is left out when zero or empty; `{}` is what
    a stream that ended without its final chunk leaves."""

    done_reason: str
    total_duration: int
    load_duration: int
    prompt_eval_count: int
    prompt_eval_duration: int
    eval_count: int
    eval_duration: int


class Chunk(Metrics, total=False):
    """One chunk of `/api/chat` (`message`) or `/api/generate` (`response`, and on its final
    chunk `context`); the last one is `done`, with `done_reason` and the `Metrics`. Relayed per
    token as it is."""

    model: Required[str]
    created_at: Required[str]
    message: Message
    response: str
    thinking: str
    tool_calls: list[ToolCall]
    done: Required[bool]
    context: list[int]


# Ollama's answer to a load or unload (an empty generate, `keep_alive: 0` to unload): a bare
# final generate chunk, `done` with `done_reason` `load` or `unload`.
DoneAnswer: TypeAlias = Chunk


# The two embedding answers are final (no shape extends them), so `"embeddings" in answer` tells
# them apart to the type checker as it does at runtime.
@final
class EmbedAnswer(TypedDict):
    """`/api/embed` (`api.EmbedResponse`)."""

    model: str
    embeddings: list[list[float]]
    total_duration: NotRequired[int]
    load_duration: NotRequired[int]
    prompt_eval_count: NotRequired[int]


@final
class EmbeddingsAnswer(TypedDict):
    """The legacy `/api/embeddings` (`api.EmbeddingResponse`)."""

    embedding: list[float]


class ShowAnswer(TypedDict, total=False):
    """`/api/show` (`api.ShowResponse`): every field is left out when empty. `model_info`'s keys
    are the model's own (`general.architecture`, `<architecture>.context_length`, ...)."""

    license: str
    modelfile: str
    parameters: str
    template: str
    system: str
    details: ModelDetails
    messages: list[Message]
    model_info: dict[str, Any]
    capabilities: list[str]
    modified_at: str
