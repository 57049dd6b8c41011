"""Bodies are judged exactly as Ollama's Go decoder judges them."""

from __future__ import annotations

import pytest

from corral_gateway.validation import OllamaRequestError, decode_body


def rejects(raw: bytes, kind: str = "chat") -> OllamaRequestError:
    with pytest.raises(OllamaRequestError) as info:
        decode_body(raw, kind)  # type: ignore[arg-type]
    return info.value


@pytest.mark.parametrize("raw", [b"", b"   \n"])
def test_missing_body(raw: bytes) -> None:
    error = rejects(raw)
    assert (error.status, error.message) == (400, "missing request body")


def test_malformed_json() -> None:
    error = rejects(b"xyz")
    assert error.status == 400
    assert error.message == "invalid character 'x' looking for beginning of value"
    assert rejects(b'{"model": "m"').message == "unexpected EOF"


@pytest.mark.parametrize(
    ("raw", "kind", "message"),
    [
        (
            b'{"model":"m","stream":"yes"}',
            "chat",
            "json: cannot unmarshal string into Go struct field ChatRequest.stream of type bool",
        ),
        (
            b'{"model":3}',
            "generate",
            "json: cannot unmarshal number into Go struct field GenerateRequest.model "
            "of type string",
        ),
        (
            b'{"model":"m","messages":{}}',
            "chat",
            "json: cannot unmarshal object into Go struct field ChatRequest.messages "
            "of type []api.Message",
        ),
        (
            b'{"model":"m","messages":[{"role":"user","content":5}]}',
            "chat",
            "json: cannot unmarshal number into Go struct field ChatRequest.messages.content "
            "of type string",
        ),
        (
            b'{"model":"m","options":[]}',
            "chat",
            "json: cannot unmarshal array into Go struct field ChatRequest.options "
            "of type map[string]interface {}",
        ),
        (
            b'{"model":"m","context":[1.5]}',
            "generate",
            "json: cannot unmarshal number into Go struct field GenerateRequest.context "
            "of type int",
        ),
        (b"[1]", "chat", "json: cannot unmarshal array into Go value of type api.ChatRequest"),
    ],
)
def test_wrong_types(raw: bytes, kind: str, message: str) -> None:
    error = rejects(raw, kind)
    assert (error.status, error.message) == (400, message)


def test_nulls_are_zero_values() -> None:
    body = decode_body(b'{"model":"m","stream":null,"options":null}', "chat")
    assert body["stream"] is None


def test_lone_surrogate_is_rejected() -> None:
    error = rejects(b'{"model":"m","messages":[{"role":"user","content":"\\ud800"}]}')
    assert error.status == 400
    assert "surrogate" in error.message


def test_invalid_utf8_is_rejected() -> None:
    assert rejects(b'{"model":"\xff"}').status == 400


@pytest.mark.parametrize(
    ("field", "message"),
    [
        ('"keep_alive":"300"', 'time: missing unit in duration "300"'),
        ('"keep_alive":"soon"', 'time: invalid duration "soon"'),
        ('"think":"very"', "invalid think value: 'very'"),
        ('"top_logprobs":21', "top_logprobs must be between 0 and 20"),
    ],
)
def test_value_rules(field: str, message: str) -> None:
    error = rejects(('{"model":"m",' + field + "}").encode())
    assert (error.status, error.message) == (400, message)


@pytest.mark.parametrize("keep_alive", ['"5m"', '"1h30m"', '"0"', "0", "-1", '"-1s"', "2.5"])
def test_keep_alive_accepts_what_ollama_accepts(keep_alive: str) -> None:
    decode_body(('{"model":"m","keep_alive":' + keep_alive + "}").encode(), "generate")


def test_raw_mode_conflicts() -> None:
    error = rejects(b'{"model":"m","raw":true,"system":"s"}', "generate")
    assert error.message == "raw mode does not support template, system, or context"


def test_unknown_fields_are_ignored() -> None:
    assert decode_body(b'{"model":"m","whatever":[1,2]}', "chat")["whatever"] == [1, 2]
