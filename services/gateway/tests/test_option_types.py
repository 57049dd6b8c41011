"""`options` values are judged as Ollama's `Options.FromMap` judges them (api/types.go): the
wrong JSON kind for a known option is a 500 with Ollama's text; numbers, unknown keys, null and
the unload idiom pass."""

from __future__ import annotations

from typing import Any

import orjson
import pytest

from corral_common.errors import ErrorType
from corral_gateway.option_types import OPTION_KINDS
from corral_gateway.surfaces import as_corral_error
from corral_gateway.validation import OllamaRequestError, OptionTypeError, decode_body

CHAT = {"model": "llama3.2", "messages": [{"role": "user", "content": "hi"}]}
BODIES: dict[str, dict[str, Any]] = {
    "chat": CHAT,
    "generate": {"model": "llama3.2", "prompt": "hi"},
    "embed": {"model": "llama3.2", "input": "hi"},
    "embeddings": {"model": "llama3.2", "prompt": "hi"},
}


def decode(options: Any, kind: str = "chat", **fields: Any) -> dict[str, Any]:
    return decode_body(orjson.dumps({**BODIES[kind], **fields, "options": options}), kind)


def refusal(options: Any, kind: str = "chat", **fields: Any) -> OllamaRequestError:
    with pytest.raises(OptionTypeError) as info:
        decode(options, kind, **fields)
    return info.value


@pytest.mark.parametrize("kind", sorted(BODIES))
@pytest.mark.parametrize("wrong", ["8192", True, False, [8192], {"n": 8192}])
def test_a_num_ctx_that_is_no_number_is_ollamas_500(kind: str, wrong: Any) -> None:
    """The audit: `num_ctx: "8192"` and `num_ctx: true` were accepted (and then replaced by
    the load guard); Ollama answers 500 `option "num_ctx" must be of type integer`. A bool is
    an int to Python, not a number to Go."""
    error = refusal({"num_ctx": wrong}, kind)
    assert (error.status, error.message) == (500, 'option "num_ctx" must be of type integer')


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"seed": "1"}, 'option "seed" must be of type integer'),
        ({"main_gpu": False}, 'option "main_gpu" must be of type integer'),
        ({"temperature": "0.5"}, 'option "temperature" must be of type float32'),
        ({"top_p": True}, 'option "top_p" must be of type float32'),
        ({"use_mmap": 1}, 'option "use_mmap" must be of type boolean'),
        ({"use_mmap": "true"}, 'option "use_mmap" must be of type boolean'),
        ({"stop": "\n"}, 'option "stop" must be of type array'),
        ({"stop": ["a", 1]}, 'option "stop" must be of an array of strings'),
        # The first wrong one as sent (Go's map order would name any).
        ({"num_predict": "9", "num_ctx": "1"}, 'option "num_predict" must be of type integer'),
    ],
)
def test_every_known_option_is_typed_as_ollama_types_it(
    options: dict[str, Any], message: str
) -> None:
    assert refusal(options).message == message


@pytest.mark.parametrize(
    "options",
    [
        # Any JSON number for an int option: Ollama cuts the fraction off (int64(t)).
        {"num_ctx": 8192.5, "num_predict": 1e3, "seed": -1, "num_ctx_huge": "x"},
        {"num_ctx": 10**12, "temperature": 1, "top_p": 0.9, "use_mmap": False, "stop": []},
        # null leaves an option unset; unknown keys (Corral's own among them) are ignored.
        {"num_ctx": None, "stop": None, "session_id": "s", "priority": "high", "numa": "x"},
        {},
        None,
    ],
)
def test_what_ollama_takes_passes(options: Any) -> None:
    assert decode(options)["options"] == options


def test_the_unload_idiom_never_reads_options() -> None:
    """ChatHandler and GenerateHandler answer it before scheduleRunner reads the options."""
    bad = {"num_ctx": "8192"}
    for keep_alive in (0, "0", "0s", 0.0):
        decode_body(orjson.dumps({"model": "m", "keep_alive": keep_alive, "options": bad}), "chat")
        decode_body(
            orjson.dumps({"model": "m", "prompt": "", "keep_alive": keep_alive}), "generate"
        )
    # A load (no keep_alive: 0) does schedule the model, and so reads them.
    with pytest.raises(OptionTypeError):
        decode_body(orjson.dumps({"model": "m", "options": bad}), "chat")
    with pytest.raises(OptionTypeError):
        decode_body(orjson.dumps({"model": "m", "keep_alive": "5m", "options": bad}), "chat")
    # Embeddings have no unload idiom.
    with pytest.raises(OptionTypeError):
        decode_body(orjson.dumps({"model": "m", "keep_alive": 0, "options": bad}), "embed")


def test_other_requests_do_not_judge_options() -> None:
    # /api/show takes `options` and never reads them into api.Options.
    decode_body(orjson.dumps({"model": "m", "options": {"num_ctx": "8192"}}), "show")


def test_the_table_is_ollamas_options_struct() -> None:
    """api.Options and api.Runner (api/types.go), by JSON tag."""
    assert set(OPTION_KINDS) == {
        *("num_keep", "seed", "num_predict", "top_k", "top_p", "min_p", "typical_p"),
        *("repeat_last_n", "temperature", "repeat_penalty", "presence_penalty"),
        *("frequency_penalty", "stop", "num_ctx", "num_batch", "num_gpu", "main_gpu"),
        *("use_mmap", "num_thread", "draft_num_predict"),
    }


def test_corrals_own_surfaces_call_a_wrong_option_type_an_invalid_request() -> None:
    """Ollama answers it 500 (its own wording of a client's mistake); Corral's shape says what
    it is: 400 `invalid_request`, the same text."""
    error = as_corral_error(OptionTypeError('option "num_ctx" must be of type integer'))
    assert (error.status, error.error_type) == (400, ErrorType.INVALID_REQUEST)
    assert error.message == 'option "num_ctx" must be of type integer'
    # Any other 500 from Ollama's decoder is still an internal error.
    assert as_corral_error(OllamaRequestError(500, "x")).error_type is ErrorType.INTERNAL_ERROR
